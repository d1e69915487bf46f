//! Pacing a webhook's deliveries: its `rate_limit` (deliveries per second,
//! bursts of one second's worth; a GCRA whose state the store keeps: in
//! memory on the embedded store, in Redis for every engine), and a
//! receiver's `429` or `503` with `Retry-After`, which holds the webhook's
//! deliveries until then.
//!
//! Owns: when a delivery may be attempted as its webhook's pace allows.
//! Invariants: a delivery beyond the limit is never dropped or failed: it
//! goes back to the schedule at the time reserved for it, using no
//! attempt, and then goes without taking another turn, so waiting
//! deliveries are not re-claimed in a herd. A webhook with a rate limit is
//! held in the shared state (every engine waits); one without is held by
//! the engine that got the answer. What may happen twice: a reserved turn
//! whose delivery's engine died is used by whichever engine attempts it
//! after its lease.

use super::Deliverer;
use crate::limit::Rate;
use crate::model::{Delivery, Webhook};
use crate::store::StoreError;
use std::sync::atomic::Ordering;

/// A turn this close is taken now.
const SLACK_MS: u64 = 5;

/// Why a paced delivery waits.
pub const RATE_LIMITED: &str = "waiting for its turn under the webhook's rate limit";
pub const HELD: &str = "waiting: the receiver asked to be left alone until then (Retry-After)";

/// The webhook's limit as a rate.
pub fn rate_of(webhook: &Webhook) -> Option<Rate> {
    webhook.rate_limit.map(|per_second| Rate {
        per_second,
        burst: (per_second.ceil() as u32).max(1),
    })
}

fn limit_name(webhook: &Webhook) -> String {
    format!("wh:{}", webhook.id)
}

impl Deliverer {
    /// When `delivery` may be attempted, if not now, and why.
    pub(super) async fn pace(
        &self,
        webhook: &Webhook,
        delivery: &mut Delivery,
    ) -> Result<Option<(u64, &'static str)>, StoreError> {
        let now = self.clock.now_ms();
        if let Some(until) = self.held_until(webhook, now) {
            return Ok(Some((until, HELD)));
        }
        let Some(rate) = rate_of(webhook) else {
            delivery.rate_slot_ms = None;
            return Ok(None);
        };
        if let Some(slot) = delivery.rate_slot_ms.take() {
            if slot <= now + SLACK_MS {
                return Ok(None);
            }
            delivery.rate_slot_ms = Some(slot);
            return Ok(Some((slot, RATE_LIMITED)));
        }
        let go = self
            .store
            .reserve_rate(&webhook.tenant, &limit_name(webhook), rate, now)
            .await?;
        if go <= now + SLACK_MS {
            return Ok(None);
        }
        delivery.rate_slot_ms = Some(go);
        Ok(Some((go, RATE_LIMITED)))
    }

    /// Puts `delivery` back in the schedule until `at`, using no attempt.
    pub(super) async fn wait_until(
        &self,
        mut delivery: Delivery,
        at: u64,
        why: &str,
    ) -> Result<(), StoreError> {
        delivery.next_attempt_at_ms = Some(at);
        delivery.reason = Some(why.to_owned());
        delivery.updated_at_ms = self.clock.now_ms();
        self.store.finish_attempt(delivery, None).await?;
        self.wake();
        Ok(())
    }

    /// The receiver asked to be left alone until `until_ms`.
    pub(super) async fn hold(&self, webhook: &Webhook, until_ms: u64) -> Result<(), StoreError> {
        if let Some(rate) = rate_of(webhook) {
            return self
                .store
                .hold_rate(&webhook.tenant, &limit_name(webhook), rate, until_ms)
                .await;
        }
        let mut holds = self.holds.lock().expect("holds lock");
        let until = holds.entry(webhook.id.clone()).or_default();
        *until = (*until).max(until_ms);
        self.holding.store(holds.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Until when this engine holds a webhook without a rate limit.
    fn held_until(&self, webhook: &Webhook, now_ms: u64) -> Option<u64> {
        if webhook.rate_limit.is_some() || self.holding.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut holds = self.holds.lock().expect("holds lock");
        holds.retain(|_, until| *until > now_ms);
        self.holding.store(holds.len(), Ordering::Relaxed);
        holds.get(&webhook.id).copied()
    }
}
