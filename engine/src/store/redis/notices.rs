//! What engines sharing one Redis tell each other over pub/sub: a delivery
//! is due now (a manual retry), or a plugin version became current. Lost
//! messages cost latency only: every engine looks at the schedule at least
//! once a second, and triggers never depend on them (see the module above).

use super::*;

/// Something another engine sharing the Redis wants this one to know.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Deliveries became due now (e.g. a manual retry).
    Wake,
    /// A webhook's circuit breaker opened (until then) or closed.
    Breaker {
        webhook: WebhookId,
        open_until: Option<u64>,
    },
    /// A tenant's plugin has a new current version.
    Plugin {
        tenant: TenantId,
        name: String,
        version: u32,
    },
}

impl RedisStore {
    pub(super) fn channel(&self) -> String {
        format!("{}:notices", self.prefix)
    }

    pub(super) async fn publish(&self, message: String) -> Result<(), StoreError> {
        let _: i64 = self.conn().publish(self.channel(), message).await?;
        Ok(())
    }

    /// Notices from every engine sharing this Redis (this one included),
    /// until the connection drops; the caller resubscribes.
    pub async fn notices(
        &self,
    ) -> Result<impl futures_util::Stream<Item = Notice> + use<>, StoreError> {
        use futures_util::StreamExt;
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.channel()).await?;
        // The sink must live as long as the stream, or the connection closes.
        let (sink, stream) = pubsub.split();
        Ok(stream
            .map(move |msg| {
                let _keep_open = &sink;
                msg
            })
            .filter_map(|msg| async move {
                let text: String = msg.get_payload().ok()?;
                let mut parts = text.split('\u{1f}');
                match parts.next()? {
                    "wake" => Some(Notice::Wake),
                    "breaker" => Some(Notice::Breaker {
                        webhook: WebhookId::from_trusted(parts.next()?),
                        open_until: parts.next()?.parse().ok(),
                    }),
                    "plugin" => Some(Notice::Plugin {
                        tenant: TenantId::from_trusted(parts.next()?),
                        name: parts.next()?.to_owned(),
                        version: parts.next()?.parse().ok()?,
                    }),
                    _ => None,
                }
            }))
    }
}
