//! Planning a trigger, the same on both backends: which webhooks get it
//! (fan-out, off the async workers when filters run), the event record,
//! its new deliveries, the answer a replay of it gives, and what an
//! earlier trigger under the same key means for it. A backend then writes
//! a plan atomically, or hands it back to be made again when the tenant's
//! webhooks changed since (what may happen twice: the planning, never the
//! write).

use super::{IdempotentAnswer, Ingested, NewEvent, fan_out};
use crate::filter::fan_out::{CachedHook, FanOutGate, without_filters};
use crate::ids::WebhookId;
use crate::model::{Delivery, Event, Webhook};
use std::sync::Arc;

/// A trigger planned against the tenant's webhooks.
pub struct Plan {
    pub event: Event,
    /// `deliveries[i]` goes to `targets[i]`.
    pub deliveries: Vec<Delivery>,
    pub targets: Vec<Arc<Webhook>>,
    /// Subscribed webhooks whose payload filter did not match.
    pub filtered: u32,
    pub idempotency_key: Option<String>,
    pub fingerprint: String,
    pub only_webhook: Option<WebhookId>,
    pub due_at_ms: u64,
}

impl Plan {
    /// Fans `new` out over `hooks`: where it is when no payload filter runs,
    /// in `gate`'s turn on a blocking thread when one does.
    pub async fn make(gate: &FanOutGate, hooks: Arc<Vec<CachedHook>>, new: NewEvent) -> Plan {
        let unfiltered = without_filters(&hooks, &new.event_type, new.only_webhook.as_ref());
        let (new, targets, filtered) = match unfiltered {
            Some(targets) => (new, targets, 0),
            None => {
                let tenant = new.tenant.clone();
                gate.run(&tenant, move || {
                    let (targets, filtered) = fan_out(&hooks, &new.event_type, &new.data);
                    (new, targets, filtered)
                })
                .await
            }
        };
        let event = Event {
            id: new.id,
            tenant: new.tenant,
            event_type: new.event_type,
            data: new.data,
            occurred_at_ms: new.occurred_at_ms,
        };
        let deliveries = targets
            .iter()
            .map(|w| super::new_delivery(&event, w, new.due_at_ms))
            .collect();
        Plan {
            event,
            deliveries,
            targets,
            filtered,
            idempotency_key: new.idempotency_key,
            fingerprint: new.fingerprint,
            only_webhook: new.only_webhook,
            due_at_ms: new.due_at_ms,
        }
    }

    /// What a replay of this trigger answers (without the deliveries it
    /// created, which a backend lists where it keeps them).
    pub fn answer(&self) -> IdempotentAnswer {
        IdempotentAnswer {
            event_id: self.event.id.clone(),
            event_type: self.event.event_type.clone(),
            deliveries: self.deliveries.len() as u32,
            fingerprint: self.fingerprint.clone(),
            at_ms: self.event.occurred_at_ms,
            delivery_ids: Vec::new(),
        }
    }

    /// What a trigger that an earlier one under the same key (or event id)
    /// answered `prev` becomes: a replay of it, or a reused key.
    pub fn after(&self, prev: IdempotentAnswer) -> Ingested {
        if prev.fingerprint == self.fingerprint {
            Ingested::Replayed(prev)
        } else {
            Ingested::KeyReused(prev)
        }
    }

    /// Written: what the trigger created.
    pub fn created(self) -> Ingested {
        Ingested::Created {
            event: self.event,
            deliveries: self.deliveries,
            webhooks: self.targets,
            filtered: self.filtered,
        }
    }

    /// The trigger as it came, to be planned again.
    pub fn into_new(self) -> NewEvent {
        NewEvent {
            id: self.event.id,
            tenant: self.event.tenant,
            event_type: self.event.event_type,
            data: self.event.data,
            occurred_at_ms: self.event.occurred_at_ms,
            idempotency_key: self.idempotency_key,
            fingerprint: self.fingerprint,
            only_webhook: self.only_webhook,
            due_at_ms: self.due_at_ms,
        }
    }
}
