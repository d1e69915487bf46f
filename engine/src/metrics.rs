//! Prometheus metrics, served at `GET /metrics`. Labels stay low-cardinality
//! (no tenant or webhook ids); per-webhook numbers live in the stats API.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None)
    }
}

impl Metrics {
    /// The engine's metrics, with the embedded store's when it has one.
    pub fn new(store: Option<&StoreMetrics>) -> Self {
        let mut registry = Registry::with_prefix("wasmhook");
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
            registry,
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

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
