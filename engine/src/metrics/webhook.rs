//! The `webhook_*` families, named, labelled and bucketed as seed 001's
//! application exports them, so its PromQL queries and alert rules work
//! unchanged against the engine:
//!
//! - `webhook_deliveries_total{event, tenant_id, status}`: one per delivery
//!   outcome; `status` is `delivered`, `failed` or `skipped` (plugin skips).
//! - `webhook_delivery_duration_seconds{event, tenant_id}`: every attempt
//!   that got an answer or timed out; buckets 0.1, 0.5, 1, 2, 5, 10 s.
//! - `webhook_retries_total{event, tenant_id, reason}`: one per retry
//!   scheduled; `reason` is one of [`RetryReason`].
//! - `webhook_delivery_http_status_total{event, status_code}`: one per
//!   answered attempt (the family is `webhook_delivery_http_status`, a
//!   counter, so its samples end in `_total` as the seed's client exports it).
//!
//! Owns: the label sets and their bound. Invariants: at most
//! `metrics_label_sets` distinct (tenant, event) pairs get series of their
//! own; an event seen after that is counted under `event="other"` for its
//! tenant (tenants are created by the operator, event types by tenants, so
//! only the event dimension needs the cap). With `metrics_tenant_labels`
//! off, no series carries `tenant_id` or `event`. Nothing here may happen
//! twice: each call counts once.

use crate::ids::TenantId;
use foldhash::HashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// A label set: (name, value) pairs, so a dropped label is simply absent.
type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Seed 001's buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 6] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0];
/// The event label of events counted past the cap.
pub const OTHER: &str = "other";

/// How a delivery ended, as `webhook_deliveries_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed,
    Skipped,
}

/// Why a retry was scheduled, as `webhook_retries_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    Timeout,
    ConnectionError,
    /// The receiver answered 5xx (or the engine failed during the attempt).
    ServerError,
    /// The receiver answered another non-2xx status.
    ClientError,
    /// The receiver answered 429.
    RateLimited,
    PluginError,
}

impl RetryReason {
    const ALL: [RetryReason; 6] = [
        RetryReason::Timeout,
        RetryReason::ConnectionError,
        RetryReason::ServerError,
        RetryReason::ClientError,
        RetryReason::RateLimited,
        RetryReason::PluginError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Timeout => "timeout",
            RetryReason::ConnectionError => "connection_error",
            RetryReason::ServerError => "server_error",
            RetryReason::ClientError => "client_error",
            RetryReason::RateLimited => "rate_limited",
            RetryReason::PluginError => "plugin_error",
        }
    }

    /// The reason for an answer with this status (not 2xx).
    pub fn of_status(status: u16) -> RetryReason {
        match status {
            429 => RetryReason::RateLimited,
            500.. => RetryReason::ServerError,
            _ => RetryReason::ClientError,
        }
    }
}

/// How the label sets are bounded (`metrics_label_sets`,
/// `metrics_tenant_labels`).
#[derive(Clone, Copy, Debug)]
pub struct LabelBound {
    pub max_label_sets: usize,
    pub tenant_labels: bool,
}

impl Default for LabelBound {
    fn default() -> Self {
        LabelBound {
            max_label_sets: 2000,
            tenant_labels: true,
        }
    }
}

/// The series of one (tenant, event) pair, found once per attempt.
pub struct Series {
    families: Families,
    tenant_event: Labels,
    event: Labels,
    outcomes: [OnceLock<Counter>; 3],
    duration: Histogram,
    retries: [OnceLock<Counter>; 6],
    statuses: RwLock<HashMap<u16, Counter>>,
}

impl Series {
    pub fn delivery(&self, outcome: Outcome) {
        let (i, status) = match outcome {
            Outcome::Delivered => (0, "delivered"),
            Outcome::Failed => (1, "failed"),
            Outcome::Skipped => (2, "skipped"),
        };
        self.outcomes[i]
            .get_or_init(|| self.counter(&self.families.deliveries, "status", status))
            .inc();
    }

    pub fn duration(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    pub fn retry(&self, reason: RetryReason) {
        let i = RetryReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.retries[i]
            .get_or_init(|| self.counter(&self.families.retries, "reason", reason.as_str()))
            .inc();
    }

    pub fn http_status(&self, status: u16) {
        if let Some(c) = self.statuses.read().expect("statuses lock").get(&status) {
            c.inc();
            return;
        }
        let mut labels = self.event.clone();
        labels.push(("status_code", status.to_string()));
        let counter = self.families.http_status.get_or_create(&labels).clone();
        counter.inc();
        self.statuses
            .write()
            .expect("statuses lock")
            .insert(status, counter);
    }

    fn counter(
        &self,
        family: &Family<Labels, Counter>,
        name: &'static str,
        value: &str,
    ) -> Counter {
        let mut labels = self.tenant_event.clone();
        labels.push((name, value.to_owned()));
        family.get_or_create(&labels).clone()
    }
}

#[derive(Clone)]
struct Families {
    deliveries: Family<Labels, Counter>,
    duration: Histograms,
    retries: Family<Labels, Counter>,
    http_status: Family<Labels, Counter>,
}

/// The four families and the series made so far.
pub struct WebhookMetrics {
    families: Families,
    bound: LabelBound,
    /// Series by tenant, then event (`OTHER` for events past the cap).
    series: RwLock<HashMap<String, HashMap<String, Arc<Series>>>>,
    /// Distinct (tenant, event) pairs with series of their own.
    pairs: AtomicUsize,
    /// The one series set when tenant labels are off.
    unlabelled: OnceLock<Arc<Series>>,
}

impl WebhookMetrics {
    /// The families, registered on `registry` (which has no prefix).
    pub fn new(registry: &mut Registry, bound: LabelBound) -> WebhookMetrics {
        let families = Families {
            deliveries: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            retries: Family::default(),
            http_status: Family::default(),
        };
        registry.register(
            "webhook_deliveries",
            "Deliveries by event, tenant and outcome (delivered, failed, skipped)",
            families.deliveries.clone(),
        );
        registry.register(
            "webhook_delivery_duration_seconds",
            "Time from sending a delivery attempt to its answer or timeout",
            families.duration.clone(),
        );
        registry.register(
            "webhook_retries",
            "Retries scheduled, by reason (timeout, connection_error, server_error, client_error, rate_limited, plugin_error)",
            families.retries.clone(),
        );
        registry.register(
            "webhook_delivery_http_status",
            "Answered delivery attempts by HTTP status code",
            families.http_status.clone(),
        );
        WebhookMetrics {
            families,
            bound,
            series: RwLock::default(),
            pairs: AtomicUsize::new(0),
            unlabelled: OnceLock::new(),
        }
    }

    /// The series an attempt of an event of `event_type` for `tenant`
    /// counts in.
    pub fn series(&self, tenant: &TenantId, event_type: &str) -> Arc<Series> {
        if !self.bound.tenant_labels {
            return self
                .unlabelled
                .get_or_init(|| Arc::new(self.make(Vec::new(), Vec::new())))
                .clone();
        }
        let tenant = tenant.as_str();
        {
            let series = self.series.read().expect("series lock");
            if let Some(events) = series.get(tenant) {
                if let Some(s) = events.get(event_type) {
                    return s.clone();
                }
                if self.pairs.load(Ordering::Relaxed) >= self.bound.max_label_sets
                    && let Some(s) = events.get(OTHER)
                {
                    return s.clone();
                }
            }
        }
        let mut series = self.series.write().expect("series lock");
        let events = series.entry(tenant.to_owned()).or_default();
        if let Some(s) = events.get(event_type) {
            return s.clone();
        }
        let own = self.pairs.load(Ordering::Relaxed) < self.bound.max_label_sets;
        let event = if own { event_type } else { OTHER };
        if let Some(s) = events.get(event) {
            return s.clone();
        }
        if own {
            self.pairs.fetch_add(1, Ordering::Relaxed);
        }
        let made = Arc::new(self.make(
            vec![
                ("event", event.to_owned()),
                ("tenant_id", tenant.to_owned()),
            ],
            vec![("event", event.to_owned())],
        ));
        events.insert(event.to_owned(), made.clone());
        made
    }

    fn make(&self, tenant_event: Labels, event: Labels) -> Series {
        Series {
            duration: self.families.duration.get_or_create(&tenant_event).clone(),
            families: self.families.clone(),
            tenant_event,
            event,
            outcomes: Default::default(),
            retries: Default::default(),
            statuses: RwLock::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn names_labels_and_buckets_are_the_seeds() {
        let mut registry = Registry::default();
        let m = WebhookMetrics::new(&mut registry, LabelBound::default());
        let t = TenantId::from_trusted("acme");
        let s = m.series(&t, "invoice.created");
        s.delivery(Outcome::Delivered);
        s.delivery(Outcome::Failed);
        s.duration(Duration::from_millis(700));
        s.retry(RetryReason::RateLimited);
        s.http_status(200);
        s.http_status(200);
        let out = render(&registry);
        for line in [
            r#"webhook_deliveries_total{event="invoice.created",tenant_id="acme",status="delivered"} 1"#,
            r#"webhook_deliveries_total{event="invoice.created",tenant_id="acme",status="failed"} 1"#,
            r#"webhook_delivery_duration_seconds_bucket{le="0.5",event="invoice.created",tenant_id="acme"} 0"#,
            r#"webhook_delivery_duration_seconds_bucket{le="1.0",event="invoice.created",tenant_id="acme"} 1"#,
            r#"webhook_delivery_duration_seconds_bucket{le="10.0",event="invoice.created",tenant_id="acme"} 1"#,
            r#"webhook_retries_total{event="invoice.created",tenant_id="acme",reason="rate_limited"} 1"#,
            r#"webhook_delivery_http_status_total{event="invoice.created",status_code="200"} 2"#,
        ] {
            assert!(out.contains(line), "missing {line} in\n{out}");
        }
    }

    #[test]
    fn events_past_the_cap_count_as_other() {
        let mut registry = Registry::default();
        let bound = LabelBound {
            max_label_sets: 2,
            tenant_labels: true,
        };
        let m = WebhookMetrics::new(&mut registry, bound);
        let t = TenantId::from_trusted("acme");
        for event in ["a", "b", "c", "d", "a"] {
            m.series(&t, event).delivery(Outcome::Delivered);
        }
        let out = render(&registry);
        assert!(
            out.contains(r#"{event="a",tenant_id="acme",status="delivered"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"{event="b",tenant_id="acme",status="delivered"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"{event="other",tenant_id="acme",status="delivered"} 2"#),
            "{out}"
        );
        assert!(!out.contains(r#"event="c""#), "{out}");
    }

    #[test]
    fn tenant_labels_can_be_dropped() {
        let mut registry = Registry::default();
        let bound = LabelBound {
            max_label_sets: 2,
            tenant_labels: false,
        };
        let m = WebhookMetrics::new(&mut registry, bound);
        for tenant in ["a", "b"] {
            let s = m.series(&TenantId::from_trusted(tenant), "x");
            s.delivery(Outcome::Delivered);
            s.http_status(503);
        }
        let out = render(&registry);
        assert!(
            out.contains(r#"webhook_deliveries_total{status="delivered"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"webhook_delivery_http_status_total{status_code="503"} 2"#),
            "{out}"
        );
        assert!(!out.contains("tenant_id"), "{out}");
    }
}
