//! Prometheus metrics, served at `GET /metrics`: the engine's own
//! `wasmhook_*` families (no tenant or webhook ids in their labels;
//! per-webhook numbers live in the stats API) and seed 001's `webhook_*`
//! families ([`webhook`]), whose tenant and event labels are bounded.
//!
//! Owns: the registry and every family in it. The schedule gauges are set
//! when `/metrics` is scraped (see [`Metrics::set_schedule`]).

pub mod webhook;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use webhook::{LabelBound, WebhookMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabel {
    pub event_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// What the plugin runtime counts (it is built before, and without, the rest).
#[derive(Clone, Default)]
pub struct PluginMetrics {
    /// Plugin calls by outcome: deliver, skip, error, trap, timeout (one
    /// per delivery attempt shaped, whether alone or with others).
    pub calls: Family<OutcomeLabel, Counter>,
    /// Calls of `handle-many`: one shaped several deliveries of one event.
    pub shared_calls: Counter,
    /// Components made ready by source: compiled, disk (cache), memory (shared).
    pub loads: Family<SourceLabel, Counter>,
    /// Plugin versions loaded now.
    pub loaded: Gauge,
    /// Warm instances kept for reuse now.
    pub idle_instances: Gauge,
}

/// What the embedded store's writer counts (it is opened before, and
/// without, the rest). The Redis backend has none of these.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Group commits, each with its disk sync.
    pub commits: Counter,
    /// Group commits that failed (their writes were answered with an error).
    pub failed_commits: Counter,
    /// Writes (a trigger or batch, an attempt's result, a claim, an API
    /// change) in the groups committed.
    pub writes: Counter,
    /// Time to commit one group, its disk sync included.
    pub commit_seconds: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            commits: Counter::default(),
            failed_commits: Counter::default(),
            writes: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.000_125, 2.0, 16)),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub plugins: PluginMetrics,
    pub events_accepted: Counter,
    pub events_replayed: Counter,
    pub deliveries_created: Counter,
    pub deliveries_filtered: Counter,
    pub attempts: Family<OutcomeLabel, Counter>,
    pub deliveries_finished: Family<OutcomeLabel, Counter>,
    pub attempt_seconds: Histogram,
    pub in_flight: Gauge,
    pub origin_waits: Counter,
    pub waiting_for_origin: Gauge,
    /// Seed 001's families.
    pub webhooks: WebhookMetrics,
    /// Schedule entries due now, set at each scrape.
    pub schedule_due: Gauge,
    /// Schedule entries due later (leases of attempts in flight included).
    pub schedule_later: Gauge,
    /// Deliveries waiting for their webhook to be enabled.
    pub schedule_paused: Gauge,
    /// Age of the oldest entry due now (0 when none is).
    pub schedule_oldest_due_seconds: Gauge<f64, AtomicU64>,
    /// Circuit breakers that opened (see `delivery::breaker`).
    pub breakers_opened: Counter,
    /// Circuit breakers open now, set at each scrape.
    pub breakers_open: Gauge,
    /// Webhooks the engine disabled, by reason (`failure_rate`, `gone`).
    pub webhooks_disabled: Family<ReasonLabel, Counter>,
    /// Operational events emitted, by type.
    pub operational_events: Family<EventTypeLabel, Counter>,
    /// Job runs by job and outcome (`ok`, `failed`, `skipped`).
    pub job_runs: Family<JobLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None, LabelBound::default())
    }
}

impl Metrics {
    /// The engine's metrics, with the embedded store's when it has one,
    /// and seed 001's families bounded by `bound`.
    pub fn new(store: Option<&StoreMetrics>, bound: LabelBound) -> Self {
        let mut root = Registry::default();
        let webhooks = WebhookMetrics::new(&mut root, bound);
        let registry = root.sub_registry_with_prefix("wasmhook");
        let events_accepted = Counter::default();
        let events_replayed = Counter::default();
        let deliveries_created = Counter::default();
        let deliveries_filtered = Counter::default();
        let attempts = Family::<OutcomeLabel, Counter>::default();
        let deliveries_finished = Family::<OutcomeLabel, Counter>::default();
        let attempt_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let in_flight = Gauge::default();
        let origin_waits = Counter::default();
        let waiting_for_origin = Gauge::default();
        let plugins = PluginMetrics::default();
        registry.register(
            "plugin_calls",
            "Plugin calls by outcome (deliver, skip, error, trap, timeout, invalid)",
            plugins.calls.clone(),
        );
        registry.register(
            "plugin_shared_calls",
            "Plugin calls that shaped the first attempts of several deliveries of one event at once (handle-many)",
            plugins.shared_calls.clone(),
        );
        registry.register(
            "plugin_loads",
            "Plugin components made ready, by source (compiled, disk cache)",
            plugins.loads.clone(),
        );
        registry.register(
            "plugins_loaded",
            "Plugin versions loaded in memory",
            plugins.loaded.clone(),
        );
        registry.register(
            "plugin_idle_instances",
            "Warm plugin instances kept for reuse",
            plugins.idle_instances.clone(),
        );
        registry.register(
            "events_accepted",
            "Events accepted by the trigger API",
            events_accepted.clone(),
        );
        registry.register(
            "events_replayed",
            "Triggers answered from an earlier identical trigger (idempotency)",
            events_replayed.clone(),
        );
        registry.register(
            "deliveries_created",
            "Deliveries created by fan-out",
            deliveries_created.clone(),
        );
        registry.register(
            "deliveries_filtered",
            "Subscribed webhooks an event skipped because their payload filter did not match",
            deliveries_filtered.clone(),
        );
        registry.register("attempts", "Delivery attempts by outcome", attempts.clone());
        registry.register(
            "deliveries_finished",
            "Deliveries that reached a final status, by status",
            deliveries_finished.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "Time from sending a delivery to its answer",
            attempt_seconds.clone(),
        );
        registry.register(
            "deliveries_in_flight",
            "Deliveries being attempted now",
            in_flight.clone(),
        );
        registry.register(
            "origin_waits",
            "Attempts that waited for a slot to their origin (origin_concurrency)",
            origin_waits.clone(),
        );
        registry.register(
            "deliveries_waiting_for_origin",
            "Deliveries waiting for admission to their origin (at most twice origin_concurrency attempts per origin at once)",
            waiting_for_origin.clone(),
        );
        let schedule_due = Gauge::default();
        let schedule_later = Gauge::default();
        let schedule_paused = Gauge::default();
        let schedule_oldest_due_seconds = Gauge::<f64, AtomicU64>::default();
        let webhooks_disabled = Family::<ReasonLabel, Counter>::default();
        let breakers_opened = Counter::default();
        let breakers_open = Gauge::default();
        registry.register(
            "breakers_opened",
            "Webhook circuit breakers that opened after a run of failures",
            breakers_opened.clone(),
        );
        registry.register(
            "breakers_open",
            "Webhook circuit breakers open now (this engine's view)",
            breakers_open.clone(),
        );
        let operational_events = Family::<EventTypeLabel, Counter>::default();
        let job_runs = Family::<JobLabel, Counter>::default();
        registry.register(
            "schedule_due",
            "Deliveries due now and not yet claimed (on the embedded store, a trigger's fresh deliveries share one entry)",
            schedule_due.clone(),
        );
        registry.register(
            "schedule_later",
            "Deliveries scheduled later: retries, and leases of attempts in flight",
            schedule_later.clone(),
        );
        registry.register(
            "schedule_paused",
            "Deliveries waiting for their webhook to be enabled (they use no attempts)",
            schedule_paused.clone(),
        );
        registry.register(
            "schedule_oldest_due_age_seconds",
            "How long the oldest delivery due now has been due (0 when none is)",
            schedule_oldest_due_seconds.clone(),
        );
        registry.register(
            "webhooks_disabled",
            "Webhooks the engine disabled, by reason (failure_rate: the health job; gone: the receiver answered 410)",
            webhooks_disabled.clone(),
        );
        registry.register(
            "operational_events",
            "Operational events the engine emitted to tenants, by type",
            operational_events.clone(),
        );
        registry.register(
            "job_runs",
            "Runs of the engine's jobs, by job and outcome (ok, failed, skipped: another engine holds its lease)",
            job_runs.clone(),
        );
        if let Some(store) = store {
            registry.register(
                "store_commits",
                "Group commits of the embedded store, each with a disk sync",
                store.commits.clone(),
            );
            registry.register(
                "store_commit_failures",
                "Group commits of the embedded store that failed (their writes were refused)",
                store.failed_commits.clone(),
            );
            registry.register(
                "store_writes",
                "Writes (triggers, attempt results, claims, API changes) in the embedded store's committed groups",
                store.writes.clone(),
            );
            registry.register(
                "store_commit_duration_seconds",
                "Time to commit one group of the embedded store, disk sync included",
                store.commit_seconds.clone(),
            );
        }
        Metrics {
            registry: root,
            webhooks,
            schedule_due,
            schedule_later,
            schedule_paused,
            schedule_oldest_due_seconds,
            webhooks_disabled,
            breakers_opened,
            breakers_open,
            operational_events,
            job_runs,
            plugins,
            events_accepted,
            events_replayed,
            deliveries_created,
            deliveries_filtered,
            attempts,
            deliveries_finished,
            attempt_seconds,
            in_flight,
            origin_waits,
            waiting_for_origin,
        }
    }

    /// Sets the schedule gauges from a census taken at `now_ms`.
    pub fn set_schedule(&self, census: &crate::schedule::Census, now_ms: u64) {
        self.schedule_due.set(census.due as i64);
        self.schedule_later.set(census.later as i64);
        self.schedule_paused.set(census.paused as i64);
        let age = census
            .oldest_due_ms
            .map_or(0.0, |due| now_ms.saturating_sub(due) as f64 / 1000.0);
        self.schedule_oldest_due_seconds.set(age);
    }

    /// The Prometheus text exposition (format 0.0.4), for scrapers that do
    /// not ask for OpenMetrics (curl, `promtool check metrics`): the same
    /// samples, with each counter family named as its samples are
    /// (`…_total`), and no `# UNIT` or `# EOF` lines.
    pub fn render_text(&self) -> String {
        to_text_format(&self.render())
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// OpenMetrics text → Prometheus text format 0.0.4 (see
/// [`Metrics::render_text`]).
fn to_text_format(open_metrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open_metrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(kind);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_named_as_their_samples_in_the_text_format() {
        let open = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\n# UNIT g seconds\ng 3\n# EOF\n";
        assert_eq!(
            super::to_text_format(open),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 3\n"
        );
    }
}
