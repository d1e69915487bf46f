//! The health job: disables webhooks that keep failing.
//!
//! A webhook is disabled when, among its deliveries created in the last
//! `health_window_hours` that have finished (succeeded or failed; pending
//! and skipped ones do not count), at least `health_min_deliveries` exist
//! and the share that failed is at least `health_failure_threshold` percent
//! (seed 000: 80 %, at least 10). The reason and time are recorded on the
//! webhook, counted in `wasmhook_webhooks_disabled_total{reason="failure_rate"}`
//! and told to the tenant as `wasmhook.webhook.disabled`.
//!
//! Owns: judging webhooks. Invariants: only active webhooks are judged; at
//! most [`SCAN_LIMIT`] of a webhook's newest deliveries are read per run.
//! What may happen twice: nothing; a webhook disabled once is not active
//! the next time.

use crate::App;
use crate::config::HealthRule;
use crate::model::{DeliveryStatus, Webhook};
use crate::operational::{DisableCause, disable_webhook};
use crate::store::{StoreError, walk_deliveries};
use std::fmt;
use std::ops::ControlFlow;

/// Deliveries of one webhook read per run, at most (newest first).
pub const SCAN_LIMIT: usize = 10_000;

/// What one run found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub checked: usize,
    pub disabled: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.checked == 1 { "" } else { "s" };
        write!(
            f,
            "checked {} active webhook{s}, disabled {}",
            self.checked, self.disabled
        )
    }
}

/// A webhook's finished deliveries in the window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub succeeded: u32,
    pub failed: u32,
}

impl Tally {
    pub fn finished(self) -> u32 {
        self.succeeded + self.failed
    }

    /// Whether `rule` disables a webhook with this tally.
    pub fn fails(self, rule: &HealthRule) -> bool {
        let finished = self.finished();
        finished >= rule.min_deliveries
            && f64::from(self.failed) >= rule.threshold * f64::from(finished)
    }
}

pub async fn run(app: &App, now_ms: u64) -> Result<Report, StoreError> {
    let rule = app.settings.health;
    let since = now_ms.saturating_sub(rule.window.as_millis() as u64);
    let mut report = Report::default();
    for tenant in app.store.list_tenants().await? {
        for webhook in app.store.list_webhooks(&tenant.id).await? {
            if !webhook.active {
                continue;
            }
            report.checked += 1;
            let tally = tally(app, &webhook, since).await?;
            if !tally.fails(&rule) {
                continue;
            }
            let hours = rule.window.as_secs() / 3600;
            let reason = format!(
                "failure rate {:.0}% ({} of {} finished deliveries in the last {hours} h) reached the health threshold of {:.0}%",
                100.0 * f64::from(tally.failed) / f64::from(tally.finished()),
                tally.failed,
                tally.finished(),
                rule.threshold * 100.0,
            );
            if disable_webhook(
                &app.deliverer,
                &tenant.id,
                &webhook.id,
                DisableCause::FailureRate,
                reason,
                false,
            )
            .await?
            {
                report.disabled += 1;
            }
        }
    }
    Ok(report)
}

/// Counts the webhook's finished deliveries created at or after `since_ms`
/// (at most [`SCAN_LIMIT`] of its newest).
async fn tally(app: &App, webhook: &Webhook, since_ms: u64) -> Result<Tally, StoreError> {
    let mut tally = Tally::default();
    let mut read = 0;
    walk_deliveries(
        app.store.as_ref(),
        &webhook.tenant,
        &webhook.id,
        None,
        None,
        |d| {
            read += 1;
            if d.created_at_ms < since_ms || read > SCAN_LIMIT {
                return ControlFlow::Break(());
            }
            match d.status {
                DeliveryStatus::Succeeded => tally.succeeded += 1,
                DeliveryStatus::Failed => tally.failed += 1,
                DeliveryStatus::Pending | DeliveryStatus::Skipped => {}
            }
            ControlFlow::Continue(())
        },
    )
    .await?;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn seed_000() -> HealthRule {
        HealthRule {
            threshold: 0.8,
            min_deliveries: 10,
            window: Duration::from_secs(6 * 3600),
        }
    }

    #[test]
    fn seed_000s_rule() {
        let rule = seed_000();
        let t = |succeeded, failed| Tally { succeeded, failed };
        assert!(t(2, 8).fails(&rule), "80 % of 10");
        assert!(!t(3, 7).fails(&rule), "70 %");
        assert!(!t(0, 9).fails(&rule), "only 9 finished");
        assert!(t(0, 10).fails(&rule));
        assert!(t(19, 81).fails(&rule));
        assert!(!t(21, 79).fails(&rule));
    }
}
