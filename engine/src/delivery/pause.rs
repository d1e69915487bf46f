//! Pausing without loss: a disabled webhook's pending deliveries wait,
//! using no attempts, until it is enabled again; deleting a webhook fails
//! them with that reason.
//!
//! Owns: parking, resuming and failing a webhook's pending deliveries.
//! Invariants: a parked delivery is pending with its schedule entry at
//! [`PAUSED_DUE_MS`], so no claim ever takes it and a restart keeps it (it
//! is not leased); it is parked only after its webhook, read as stored
//! now, is still disabled. Enabling a webhook makes its parked deliveries
//! due now, oldest first (a millisecond apart). What may happen twice:
//! resuming is idempotent (enabling an active webhook resumes whatever is
//! still parked, so an engine that died while resuming loses nothing:
//! enable it again).

use super::Deliverer;
use crate::ids::{DeliveryId, TenantId, WebhookId};
use crate::model::{Delivery, DeliveryStatus};
use crate::store::{StoreError, walk_deliveries};

/// Where a parked delivery's schedule entry waits: far past any real due
/// time (about the year 144,000), and exact as a Redis score.
pub const PAUSED_DUE_MS: u64 = 1 << 52;
/// The reason a parked delivery shows.
pub const WAITING: &str = "waiting for its webhook to be enabled";

impl Deliverer {
    /// Parks `delivery`, whose webhook was seen disabled, unless the
    /// webhook as stored now is active again (then it is due now) or gone
    /// (then it fails).
    pub(super) async fn park(&self, delivery: Delivery) -> Result<(), StoreError> {
        let webhook = self
            .store
            .get_webhook(&delivery.tenant, &delivery.webhook_id)
            .await?;
        match webhook {
            None => self.give_up(delivery, "webhook was deleted").await,
            Some(w) if w.active => {
                let now = self.clock.now_ms();
                self.wait_until(delivery, now, "its webhook was enabled again")
                    .await
            }
            Some(_) => self.wait_until(delivery, PAUSED_DUE_MS, WAITING).await,
        }
    }

    /// Makes the webhook's parked deliveries due now, oldest first; how
    /// many there were.
    pub async fn resume(
        &self,
        tenant: &TenantId,
        webhook: &WebhookId,
    ) -> Result<usize, StoreError> {
        let mut parked: Vec<DeliveryId> = self
            .pending(tenant, webhook)
            .await?
            .into_iter()
            .filter(|d| d.next_attempt_at_ms == Some(PAUSED_DUE_MS))
            .map(|d| d.id)
            .collect();
        // Listed newest first.
        parked.reverse();
        let now = self.clock.now_ms();
        for (n, chunk) in parked.chunks(256).enumerate() {
            let due = |i: usize| now + (n * 256 + i) as u64;
            futures_util::future::try_join_all(
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, id)| self.store.retry_delivery(tenant, id, due(i))),
            )
            .await?;
        }
        if !parked.is_empty() {
            tracing::info!(tenant = %tenant, webhook = %webhook, resumed = parked.len(), "webhook enabled; its waiting deliveries go out");
            self.wake();
        }
        Ok(parked.len())
    }

    /// Fails the webhook's pending deliveries now with `reason` (it is
    /// being deleted); how many.
    pub async fn fail_pending(
        &self,
        tenant: &TenantId,
        webhook: &WebhookId,
        reason: &str,
    ) -> Result<usize, StoreError> {
        let pending = self.pending(tenant, webhook).await?;
        let n = pending.len();
        for d in pending {
            self.give_up(d, reason).await?;
        }
        Ok(n)
    }

    /// Every pending delivery of the webhook, newest first.
    async fn pending(
        &self,
        tenant: &TenantId,
        webhook: &WebhookId,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut all = Vec::new();
        let status = Some(DeliveryStatus::Pending);
        walk_deliveries(self.store(), tenant, webhook, None, status, |d| {
            all.push(d);
            std::ops::ControlFlow::Continue(())
        })
        .await?;
        Ok(all)
    }
}
