//! The circuit breaker of each webhook: after `breaker_failures`
//! consecutive failed attempts (no answer, a timeout, `408`, `429` or a
//! `5xx`) it opens, and the webhook's deliveries wait for
//! `breaker_cooldown_secs` instead of each burning its own retries; then
//! one probe attempt closes it (success) or opens it again (failure).
//!
//! Owns: each webhook's breaker state, in this engine's memory. With
//! Redis, an engine whose breaker opens or closes tells the others over
//! pub/sub, so they all hold (see `store::redis::notices`). Invariants: a
//! healthy webhook costs one atomic load per attempt; a waiting delivery
//! uses no attempt. What may happen twice: after a restart every breaker
//! starts closed; an engine that missed a notice learns by its own
//! failures.

use crate::ids::WebhookId;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a delivery waits for its webhook's breaker.
pub const WAITING: &str = "waiting: the webhook's circuit breaker is open";

/// When breakers open, and for how long (`breaker_failures`, 0 for
/// never; `breaker_cooldown_secs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerRule {
    pub failures: u32,
    pub cooldown_ms: u64,
}

impl Default for BreakerRule {
    fn default() -> Self {
        BreakerRule {
            failures: 10,
            cooldown_ms: 30_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<u64>,
    /// A probe is out (half-open).
    probing: bool,
}

/// Whether an attempt may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// The one attempt that decides whether the breaker closes.
    Probe,
    /// Wait until then.
    WaitUntil(u64),
}

/// What an attempt's end changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Opened(u64),
    Closed,
}

#[derive(Default)]
pub struct Breakers {
    rule: BreakerRule,
    states: Mutex<HashMap<WebhookId, Breaker>>,
    /// How many webhooks have state (failures or open): none, no lock.
    tracked: AtomicUsize,
}

impl Breakers {
    pub fn new(rule: BreakerRule) -> Breakers {
        Breakers {
            rule,
            ..Breakers::default()
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<WebhookId, Breaker>) -> R) -> R {
        let mut states = self.states.lock().expect("breakers lock");
        let r = f(&mut states);
        self.tracked.store(states.len(), Ordering::Relaxed);
        r
    }

    /// Whether an attempt to `webhook` may go at `now_ms`.
    pub fn gate(&self, webhook: &WebhookId, now_ms: u64) -> Gate {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Gate::Go;
        }
        self.with(|states| {
            let Some(b) = states.get_mut(webhook) else {
                return Gate::Go;
            };
            match b.open_until {
                None => Gate::Go,
                Some(until) if now_ms < until => Gate::WaitUntil(until),
                Some(_) if b.probing => {
                    // Ask again a little later (the probe's answer decides).
                    Gate::WaitUntil(now_ms + (self.rule.cooldown_ms / 10).clamp(200, 5_000))
                }
                Some(_) => {
                    b.probing = true;
                    Gate::Probe
                }
            }
        })
    }

    /// Notes an attempt's end (`failed`: a failure that counts); what it
    /// changed, to tell the other engines.
    pub fn record(&self, webhook: &WebhookId, failed: bool, now_ms: u64) -> Option<Change> {
        if self.rule.failures == 0 || (!failed && self.tracked.load(Ordering::Relaxed) == 0) {
            return None;
        }
        self.with(|states| {
            if !failed {
                let was_open = states.remove(webhook)?.open_until.is_some();
                return was_open.then_some(Change::Closed);
            }
            let b = states.entry(webhook.clone()).or_default();
            b.failures += 1;
            let reopen = b.probing || (b.open_until.is_none() && b.failures >= self.rule.failures);
            if !reopen {
                return None;
            }
            let until = now_ms + self.rule.cooldown_ms;
            b.open_until = Some(until);
            b.probing = false;
            Some(Change::Opened(until))
        })
    }

    /// A probe ended without saying anything of the receiver (a skip, a
    /// plugin error): another attempt may probe.
    pub fn release_probe(&self, webhook: &WebhookId) {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.with(|states| {
            if let Some(b) = states.get_mut(webhook) {
                b.probing = false;
            }
        })
    }

    /// What another engine said: open until then, or closed.
    pub fn apply(&self, webhook: &WebhookId, open_until: Option<u64>) {
        self.with(|states| match open_until {
            Some(until) => {
                let b = states.entry(webhook.clone()).or_default();
                b.open_until = Some(b.open_until.map_or(until, |u| u.max(until)));
                b.probing = false;
            }
            None => {
                states.remove(webhook);
            }
        })
    }

    /// How many breakers are open now.
    pub fn open_count(&self) -> usize {
        self.with(|states| states.values().filter(|b| b.open_until.is_some()).count())
    }

    /// The breaker as the webhook's API view shows it.
    pub fn view(&self, webhook: &WebhookId, now_ms: u64) -> Value {
        let b = self.with(|states| states.get(webhook).copied().unwrap_or_default());
        let state = match b.open_until {
            None => "closed",
            Some(until) if now_ms < until => "open",
            Some(_) => "half_open",
        };
        json!({
            "state": state,
            "consecutive_failures": b.failures,
            "open_until": b.open_until.map(crate::clock::rfc3339_ms),
        })
    }
}

impl super::Deliverer {
    /// Counts a breaker that opened or closed and tells the other engines.
    pub(super) async fn breaker_changed(&self, webhook: &crate::model::Webhook, change: Change) {
        let open_until = match change {
            Change::Opened(until) => {
                tracing::warn!(tenant = %webhook.tenant, webhook = %webhook.id, "circuit breaker opened");
                self.metrics.breakers_opened.inc();
                Some(until)
            }
            Change::Closed => {
                tracing::info!(tenant = %webhook.tenant, webhook = %webhook.id, "circuit breaker closed");
                None
            }
        };
        if let Err(e) = self.store.announce_breaker(&webhook.id, open_until).await {
            tracing::warn!(error = %e, "cannot tell other engines of a circuit breaker");
        }
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_run_and_one_probe_decides() {
        let breakers = Breakers::new(BreakerRule {
            failures: 3,
            cooldown_ms: 1000,
        });
        let w = WebhookId::from_trusted("wh_1");
        assert_eq!(breakers.gate(&w, 0), Gate::Go);
        assert_eq!(breakers.record(&w, true, 0), None);
        assert_eq!(
            breakers.record(&w, false, 0),
            None,
            "a success resets the run"
        );
        assert_eq!(breakers.record(&w, true, 0), None);
        assert_eq!(breakers.record(&w, true, 0), None);
        assert_eq!(breakers.record(&w, true, 10), Some(Change::Opened(1010)));
        assert_eq!(breakers.gate(&w, 500), Gate::WaitUntil(1010));
        assert_eq!(breakers.view(&w, 500)["state"], "open");
        assert_eq!(breakers.gate(&w, 1010), Gate::Probe);
        assert_eq!(
            breakers.gate(&w, 1011),
            Gate::WaitUntil(1211),
            "one probe at a time"
        );
        assert_eq!(
            breakers.record(&w, true, 1100),
            Some(Change::Opened(2100)),
            "probe failed"
        );
        assert_eq!(breakers.gate(&w, 2100), Gate::Probe);
        assert_eq!(breakers.record(&w, false, 2200), Some(Change::Closed));
        assert_eq!(breakers.gate(&w, 2200), Gate::Go);
        assert_eq!(breakers.open_count(), 0);
    }
}
