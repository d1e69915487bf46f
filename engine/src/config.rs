//! Configuration: defaults, then an optional TOML file, then `WASMHOOK_*`
//! environment variables (the `config` crate layers them), checked once into
//! [`Settings`]. Unknown keys and invalid values stop start-up with a message
//! naming the key.

use crate::metrics::webhook::LabelBound;
use crate::model::WebhookDefaults;
use crate::plugin::PluginConfig;
use crate::schedule::policy::RetryPolicy;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file / environment form. Every field has a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    /// Memory the embedded store keeps of its file's pages (MiB). Recently
    /// written pages are what triggers and attempts read again; the rest
    /// comes from the operating system's page cache.
    pub store_cache_mb: usize,
    /// Operator token for `/api/tenants…`; without one the admin API is refused.
    pub admin_token: Option<String>,
    /// CIDRs that may be delivered to although they are private (e.g. `127.0.0.0/8`).
    pub allow_private_targets: Vec<String>,
    /// Largest request body accepted on `POST /api/events` and webhook routes.
    pub max_body_bytes: usize,
    /// Largest plugin component accepted.
    pub max_plugin_bytes: usize,
    /// Deliveries in flight at once.
    pub delivery_concurrency: usize,
    /// Attempts in flight at once to one origin (scheme, host and port);
    /// the others wait their turn (see `delivery::origins`).
    pub origin_concurrency: usize,
    /// How long a claimed delivery stays leased before another claim may take
    /// it. Attempts are cut off a second before their lease ends, so a webhook
    /// timeout longer than this is shortened.
    pub lease_ms: u64,
    /// CPU time one plugin call may take.
    pub plugin_timeout_ms: u64,
    /// Linear memory one plugin instance may grow to.
    pub plugin_memory_bytes: usize,
    /// Warm plugin instances kept for reuse across all tenants (0: a fresh
    /// instance for every call).
    pub plugin_idle_instances: usize,
    /// Plugin versions kept loaded at most; the least recently used unload.
    pub plugins_loaded_max: usize,
    /// Seconds a loaded plugin version may go unused before it unloads.
    pub plugin_unload_after_secs: u64,
    /// A directory of `<tenant>/<name>.wasm` files: a new or changed file is
    /// uploaded as a new version of that tenant's plugin.
    pub plugins_dir: Option<PathBuf>,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Redis URL (`redis://host:6379/0`); when set, all state lives in Redis.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub redis_prefix: String,
    /// How many sorted sets the Redis schedule is split into.
    pub schedule_partitions: u32,
    /// Days events, deliveries and attempts are kept (both backends).
    pub retention_days: u32,
    /// Webhooks one tenant may have.
    pub max_webhooks_per_tenant: usize,
    /// API connections open at once; one more is closed when accepted.
    pub max_connections: usize,
    /// Time a connection may take to send a request's headers, from when it
    /// opens or its previous answer was sent (so also the keep-alive idle
    /// limit).
    pub http_header_timeout_ms: u64,
    /// Time a request's body may take to arrive, from its headers.
    pub http_body_timeout_ms: u64,
    /// Bytes of a plugin-shaped request body each attempt's log keeps (the
    /// default format's body is rebuilt from the event, whole).
    pub log_request_body_bytes: usize,
    /// Bytes of an answer's body each attempt's log keeps.
    pub log_response_body_bytes: usize,
    /// Consecutive failed attempts of a webhook that open its circuit
    /// breaker (0: never).
    pub breaker_failures: u32,
    /// How long an open breaker holds the webhook's deliveries before one
    /// probe attempt.
    pub breaker_cooldown_secs: u64,
    /// Events one tenant may trigger per second on average (0: no limit);
    /// past it `POST /api/events` answers 429 with `Retry-After`.
    pub tenant_events_per_second: f64,
    /// Events one tenant may trigger at once above that rate (0: as many
    /// as one second's worth).
    pub tenant_events_burst: u32,
    /// The retry policy of webhooks that name none: JSON (in the
    /// environment) or a table (in the file), as a webhook's `retry_policy`.
    pub default_retry_policy: Option<PolicyInput>,
    /// The timeout of webhooks that name none.
    pub default_timeout_ms: u64,
    /// Distinct (tenant, event) label sets of the `webhook_*` metrics; past
    /// it an event is counted as `event="other"`.
    pub metrics_label_sets: usize,
    /// Whether the `webhook_*` metrics carry `tenant_id` and `event` labels
    /// (off for very large deployments).
    pub metrics_tenant_labels: bool,
    /// The health job disables a webhook whose failure rate (percent of its
    /// finished deliveries in the window that failed) is at least this.
    pub health_failure_threshold: u32,
    /// … once it has at least this many finished deliveries in the window.
    pub health_min_deliveries: u32,
    /// The window the health job looks back over, in hours.
    pub health_window_hours: u32,
    /// When each job runs: cron expressions (5 fields, or 6 with seconds
    /// first), in UTC.
    pub job_cleanup_cron: String,
    pub job_health_cron: String,
    pub job_plugin_unload_cron: String,
    pub job_plugin_cache_prune_cron: String,
}

/// A retry policy as configured: a JSON string (environment variables) or
/// a table (TOML).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PolicyInput {
    Json(String),
    Table(RetryPolicy),
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("wasmhook-data"),
            store_cache_mb: 64,
            admin_token: None,
            allow_private_targets: Vec::new(),
            max_body_bytes: 1 << 20,
            max_plugin_bytes: 32 << 20,
            delivery_concurrency: 512,
            origin_concurrency: 64,
            lease_ms: 120_000,
            plugin_timeout_ms: 50,
            plugin_memory_bytes: 64 << 20,
            plugin_idle_instances: 256,
            plugins_loaded_max: 2000,
            plugin_unload_after_secs: 600,
            plugins_dir: None,
            log_format: "text".into(),
            redis_url: None,
            redis_prefix: "wasmhook".into(),
            schedule_partitions: 16,
            retention_days: 30,
            max_webhooks_per_tenant: 1000,
            max_connections: 4096,
            http_header_timeout_ms: 30_000,
            http_body_timeout_ms: 60_000,
            log_request_body_bytes: 16 << 10,
            log_response_body_bytes: 4 << 10,
            breaker_failures: 10,
            breaker_cooldown_secs: 30,
            tenant_events_per_second: 0.0,
            tenant_events_burst: 0,
            default_retry_policy: None,
            default_timeout_ms: crate::model::DEFAULT_TIMEOUT_MS,
            metrics_label_sets: 2000,
            metrics_tenant_labels: true,
            health_failure_threshold: 80,
            health_min_deliveries: 10,
            health_window_hours: 6,
            job_cleanup_cron: "0 2 * * *".into(),
            job_health_cron: "0 */6 * * *".into(),
            job_plugin_unload_cron: "* * * * *".into(),
            job_plugin_cache_prune_cron: "30 3 * * *".into(),
        }
    }
}

/// Checked settings the engine runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store_cache_bytes: usize,
    pub admin_token: Option<String>,
    pub allow_private_targets: Vec<IpNet>,
    pub max_body_bytes: usize,
    pub max_plugin_bytes: usize,
    pub delivery_concurrency: usize,
    pub origin_concurrency: usize,
    pub lease: Duration,
    pub plugins: PluginConfig,
    pub plugins_dir: Option<PathBuf>,
    pub log_json: bool,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub schedule_partitions: u32,
    pub retention: Duration,
    pub max_webhooks_per_tenant: usize,
    pub max_connections: usize,
    pub http_header_timeout: Duration,
    pub http_body_timeout: Duration,
    pub webhook_defaults: WebhookDefaults,
    pub breakers: crate::delivery::breaker::BreakerRule,
    pub log_request_body_bytes: usize,
    pub log_response_body_bytes: usize,
    /// The per-tenant ingest limit, if any.
    pub tenant_events: Option<crate::limit::Rate>,
    pub metrics_bound: LabelBound,
    pub health: HealthRule,
    pub jobs: JobSchedules,
}

/// When the health job disables a webhook.
#[derive(Clone, Copy, Debug)]
pub struct HealthRule {
    /// Failure rate (0 to 1) at or above which it is disabled.
    pub threshold: f64,
    pub min_deliveries: u32,
    pub window: Duration,
}

/// Each job's schedule (see [`crate::jobs`]).
#[derive(Clone, Debug)]
pub struct JobSchedules {
    pub cleanup: croner::Cron,
    pub health: croner::Cron,
    pub plugin_unload: croner::Cron,
    pub plugin_cache_prune: croner::Cron,
}

/// Parses a cron expression: 5 fields (minute first) or 6 (seconds first).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("'{expr}' is not a cron expression ({e})"))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Settings {
    /// Loads defaults → `file` (if given) → the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, None)
    }

    /// As [`Settings::load`], with the environment given (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let environment = config::Environment::with_prefix("WASMHOOK")
            .prefix_separator("_")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("allow_private_targets")
            .source(env);
        let raw: RawConfig = builder.add_source(environment).build()?.try_deserialize()?;
        raw.validate()
    }
}

impl RawConfig {
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("'{}' is not a host:port address", self.listen),
            )
        })?;
        let allow_private_targets = self
            .allow_private_targets
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| invalid("allow_private_targets", format!("'{s}' is not a CIDR")))
            })
            .collect::<Result<_, _>>()?;
        if let Some(token) = &self.admin_token
            && token.len() < 16
        {
            return Err(invalid("admin_token", "must be at least 16 characters"));
        }
        if !(1..=65_536).contains(&self.store_cache_mb) {
            return Err(invalid("store_cache_mb", "must be 1 to 65536"));
        }
        if self.delivery_concurrency == 0 {
            return Err(invalid("delivery_concurrency", "must be at least 1"));
        }
        if self.origin_concurrency == 0 {
            return Err(invalid("origin_concurrency", "must be at least 1"));
        }
        if self.lease_ms < 2_000 {
            return Err(invalid("lease_ms", "must be at least 2000"));
        }
        if !(1..=10_000).contains(&self.plugin_timeout_ms) {
            return Err(invalid("plugin_timeout_ms", "must be 1 to 10000"));
        }
        if self.plugin_memory_bytes < (1 << 20) {
            return Err(invalid("plugin_memory_bytes", "must be at least 1 MiB"));
        }
        if self.plugin_idle_instances > 100_000 {
            return Err(invalid("plugin_idle_instances", "must be at most 100000"));
        }
        if self.plugins_loaded_max == 0 {
            return Err(invalid("plugins_loaded_max", "must be at least 1"));
        }
        let log_json = match self.log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("'{other}' is not text or json"),
                ));
            }
        };
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(invalid(
                "redis_url",
                "must start with redis:// or rediss://",
            ));
        }
        if self.redis_prefix.is_empty()
            || !self
                .redis_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(invalid(
                "redis_prefix",
                "must be letters, digits, '-', '_' or '.'",
            ));
        }
        if !(1..=1024).contains(&self.schedule_partitions) {
            return Err(invalid("schedule_partitions", "must be 1 to 1024"));
        }
        if !(1..=3650).contains(&self.retention_days) {
            return Err(invalid("retention_days", "must be 1 to 3650"));
        }
        if !(1..=1_000_000).contains(&self.max_webhooks_per_tenant) {
            return Err(invalid("max_webhooks_per_tenant", "must be 1 to 1000000"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if !(100..=600_000).contains(&self.http_header_timeout_ms) {
            return Err(invalid("http_header_timeout_ms", "must be 100 to 600000"));
        }
        if !(100..=3_600_000).contains(&self.http_body_timeout_ms) {
            return Err(invalid("http_body_timeout_ms", "must be 100 to 3600000"));
        }
        let default_retry_policy = match self.default_retry_policy {
            None => RetryPolicy::default(),
            Some(PolicyInput::Table(p)) => p,
            Some(PolicyInput::Json(text)) => serde_json::from_str(&text)
                .map_err(|e| invalid("default_retry_policy", format!("not a retry policy: {e}")))?,
        };
        default_retry_policy
            .validate()
            .map_err(|e| invalid("default_retry_policy", e.to_string()))?;
        if !(1_000..=300_000).contains(&self.default_timeout_ms) {
            return Err(invalid("default_timeout_ms", "must be 1000 to 300000"));
        }
        if !(1..=1_000_000).contains(&self.metrics_label_sets) {
            return Err(invalid("metrics_label_sets", "must be 1 to 1000000"));
        }
        if !(1..=100).contains(&self.health_failure_threshold) {
            return Err(invalid(
                "health_failure_threshold",
                "must be 1 to 100 (percent)",
            ));
        }
        if self.health_min_deliveries == 0 {
            return Err(invalid("health_min_deliveries", "must be at least 1"));
        }
        if !(1..=24 * 90).contains(&self.health_window_hours) {
            return Err(invalid("health_window_hours", "must be 1 to 2160"));
        }
        if !(0.0..=1_000_000.0).contains(&self.tenant_events_per_second) {
            return Err(invalid("tenant_events_per_second", "must be 0 to 1000000"));
        }
        let tenant_events = (self.tenant_events_per_second > 0.0).then(|| crate::limit::Rate {
            per_second: self.tenant_events_per_second,
            burst: match self.tenant_events_burst {
                0 => (self.tenant_events_per_second.ceil() as u32).max(1),
                burst => burst,
            },
        });
        let cron = |key: &'static str, expr: &str| parse_cron(expr).map_err(|m| invalid(key, m));
        let jobs = JobSchedules {
            cleanup: cron("job_cleanup_cron", &self.job_cleanup_cron)?,
            health: cron("job_health_cron", &self.job_health_cron)?,
            plugin_unload: cron("job_plugin_unload_cron", &self.job_plugin_unload_cron)?,
            plugin_cache_prune: cron(
                "job_plugin_cache_prune_cron",
                &self.job_plugin_cache_prune_cron,
            )?,
        };
        if !(1..=86_400).contains(&self.breaker_cooldown_secs) {
            return Err(invalid("breaker_cooldown_secs", "must be 1 to 86400"));
        }
        if self.log_request_body_bytes > 1 << 20 || self.log_response_body_bytes > 1 << 20 {
            return Err(invalid(
                "log_request_body_bytes",
                "log_request_body_bytes and log_response_body_bytes must be at most 1 MiB",
            ));
        }
        Ok(Settings {
            log_request_body_bytes: self.log_request_body_bytes,
            log_response_body_bytes: self.log_response_body_bytes,
            breakers: crate::delivery::breaker::BreakerRule {
                failures: self.breaker_failures,
                cooldown_ms: self.breaker_cooldown_secs * 1000,
            },
            tenant_events,
            webhook_defaults: WebhookDefaults {
                retry_policy: default_retry_policy,
                timeout_ms: self.default_timeout_ms,
            },
            metrics_bound: LabelBound {
                max_label_sets: self.metrics_label_sets,
                tenant_labels: self.metrics_tenant_labels,
            },
            health: HealthRule {
                threshold: f64::from(self.health_failure_threshold) / 100.0,
                min_deliveries: self.health_min_deliveries,
                window: Duration::from_secs(u64::from(self.health_window_hours) * 3600),
            },
            jobs,
            listen,
            data_dir: self.data_dir.clone(),
            store_cache_bytes: self.store_cache_mb << 20,
            admin_token: self.admin_token,
            allow_private_targets,
            max_body_bytes: self.max_body_bytes,
            max_plugin_bytes: self.max_plugin_bytes,
            delivery_concurrency: self.delivery_concurrency,
            origin_concurrency: self.origin_concurrency,
            lease: Duration::from_millis(self.lease_ms),
            plugins: PluginConfig {
                timeout: Duration::from_millis(self.plugin_timeout_ms),
                memory_bytes: self.plugin_memory_bytes,
                // Every delivery in flight may hold one, plus the idle ones,
                // plus room for dry runs.
                instances: (self.delivery_concurrency + self.plugin_idle_instances + 64) as u32,
                idle_instances: self.plugin_idle_instances,
                max_loaded: self.plugins_loaded_max,
                unload_after: Duration::from_secs(self.plugin_unload_after_secs),
                cache_dir: Some(self.data_dir.join("compiled")),
            },
            plugins_dir: self.plugins_dir,
            log_json,
            redis_url: self.redis_url,
            redis_prefix: self.redis_prefix,
            schedule_partitions: self.schedule_partitions,
            retention: Duration::from_secs(u64::from(self.retention_days) * 86_400),
            max_webhooks_per_tenant: self.max_webhooks_per_tenant,
            max_connections: self.max_connections,
            http_header_timeout: Duration::from_millis(self.http_header_timeout_ms),
            http_body_timeout: Duration::from_millis(self.http_body_timeout_ms),
        })
    }
}

impl Settings {
    /// Settings for a test engine: everything default but the data directory,
    /// with loopback allowed as a target and a plugin deadline of 500 ms (the
    /// deadline is wall-clock time, and test machines are busy).
    pub fn for_tests(data_dir: PathBuf, admin_token: &str) -> Settings {
        let mut raw = RawConfig {
            data_dir,
            admin_token: Some(admin_token.into()),
            plugin_timeout_ms: 500,
            ..RawConfig::default()
        };
        raw.allow_private_targets = vec!["127.0.0.0/8".into(), "::1/128".into()];
        raw.validate().expect("test settings are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(s.admin_token.is_none());
        assert!(s.allow_private_targets.is_empty());
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wasmhook.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:9000\"\ndata_dir = \"/tmp/x\"\n").unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("WASMHOOK_LISTEN", "127.0.0.1:9001"),
                ("WASMHOOK_ADMIN_TOKEN", "0123456789abcdef"),
                ("WASMHOOK_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8, 10.1.2.3"),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.admin_token.as_deref(), Some("0123456789abcdef"));
        assert_eq!(s.allow_private_targets.len(), 2);
    }

    #[test]
    fn unknown_keys_fail() {
        let err = Settings::load_from(None, env(&[("WASMHOOK_LISTEN_PORT", "1")])).unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        assert!(
            Settings::load_from(Some(&file), env(&[]))
                .unwrap_err()
                .to_string()
                .contains("lisen")
        );
    }

    #[test]
    fn invalid_values_fail_with_the_key() {
        let err = Settings::load_from(None, env(&[("WASMHOOK_LISTEN", "nowhere")])).unwrap_err();
        assert!(err.to_string().starts_with("listen:"), "{err}");
        let err = Settings::load_from(
            None,
            env(&[("WASMHOOK_ALLOW_PRIVATE_TARGETS", "10.0.0.0/99")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("allow_private_targets"), "{err}");
        let err = Settings::load_from(None, env(&[("WASMHOOK_ADMIN_TOKEN", "short")])).unwrap_err();
        assert!(err.to_string().contains("admin_token"), "{err}");
        let err = Settings::load_from(None, env(&[("WASMHOOK_STORE_CACHE_MB", "0")])).unwrap_err();
        assert!(err.to_string().starts_with("store_cache_mb:"), "{err}");
        let s = Settings::load_from(None, env(&[("WASMHOOK_STORE_CACHE_MB", "16")])).unwrap();
        assert_eq!(s.store_cache_bytes, 16 << 20);
    }
}
