//! The records the engine keeps: tenants, webhooks, events, deliveries,
//! attempts and plugin versions. Both store backends persist exactly these
//! (as JSON); the API maps them to its own views, so a field here is never
//! shown to a caller by accident (secrets in particular).

use crate::ids::{DeliveryId, EventId, TenantId, WebhookId};
use crate::schedule::policy::RetryPolicy;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at_ms: u64,
}

/// A webhook signing secret. Its `Debug` never shows the value, so it cannot
/// reach a log line through `{:?}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A Standard Webhooks secret: `whsec_` + base64 of 24 random bytes.
    pub fn generate() -> Self {
        use base64::Engine;
        let bytes: [u8; 24] = rand::random();
        Secret(format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    pub fn new(s: String) -> Self {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A secret replaced by `regenerate-secret`, still signing until `expires_at_ms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetiredSecret {
    pub secret: Secret,
    pub expires_at_ms: u64,
}

/// A webhook's timeout unless it or the engine's settings set one.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// What a webhook that names no retry policy or timeout uses: the
/// engine-wide `default_retry_policy` and `default_timeout_ms`, read when
/// each attempt is made (so changing them applies to such webhooks at once).
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookDefaults {
    pub retry_policy: RetryPolicy,
    pub timeout_ms: u64,
}

impl Default for WebhookDefaults {
    fn default() -> Self {
        WebhookDefaults {
            retry_policy: RetryPolicy::default(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }
}

impl WebhookDefaults {
    pub fn retry_policy<'a>(&'a self, webhook: &'a Webhook) -> &'a RetryPolicy {
        webhook.retry_policy.as_ref().unwrap_or(&self.retry_policy)
    }

    pub fn timeout_ms(&self, webhook: &Webhook) -> u64 {
        webhook.timeout_ms.unwrap_or(self.timeout_ms)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Webhook {
    pub id: WebhookId,
    pub tenant: TenantId,
    pub url: String,
    /// Event types: exact (`invoice.paid`), prefix wildcards (`invoice.*`) or `*`.
    pub events: Vec<String>,
    pub active: bool,
    /// Why the engine disabled it (the health job, or the receiver
    /// answered 410 Gone), and when.
    pub disabled_reason: Option<String>,
    pub disabled_at_ms: Option<u64>,
    pub description: String,
    pub headers: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub plugin: Option<String>,
    pub plugin_config: serde_json::Value,
    /// A declarative payload filter (see [`crate::filter`]).
    #[serde(default)]
    pub filter: Option<serde_json::Value>,
    /// Deliveries per second at most (bursts of one second's worth); those
    /// beyond it wait their turn (see `delivery::pace`).
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// None: the engine's `default_retry_policy`.
    pub retry_policy: Option<RetryPolicy>,
    /// None: the engine's `default_timeout_ms`.
    pub timeout_ms: Option<u64>,
    pub secret: Secret,
    pub retired_secrets: Vec<RetiredSecret>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl Webhook {
    /// A new active webhook with the defaults: no plugin or filter, the
    /// engine's retry policy and timeout, and a generated `whsec_` secret.
    pub fn new(
        tenant: TenantId,
        url: impl Into<String>,
        events: Vec<String>,
        now_ms: u64,
    ) -> Webhook {
        Webhook {
            id: WebhookId::generate(),
            tenant,
            url: url.into(),
            events,
            active: true,
            disabled_reason: None,
            disabled_at_ms: None,
            description: String::new(),
            headers: BTreeMap::new(),
            metadata: BTreeMap::new(),
            plugin: None,
            plugin_config: serde_json::Value::Null,
            filter: None,
            rate_limit: None,
            retry_policy: None,
            timeout_ms: None,
            secret: Secret::generate(),
            retired_secrets: Vec::new(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// Whether an event of this type goes to this webhook.
    pub fn subscribes_to(&self, event_type: &str) -> bool {
        self.events
            .iter()
            .any(|pattern| event_type_matches(pattern, event_type))
    }

    /// The current secret first, then retired ones still in their grace period.
    pub fn live_secrets(&self, now_ms: u64) -> Vec<&Secret> {
        std::iter::once(&self.secret)
            .chain(
                self.retired_secrets
                    .iter()
                    .filter(|r| r.expires_at_ms > now_ms)
                    .map(|r| &r.secret),
            )
            .collect()
    }
}

/// `*` matches everything; `invoice.*` matches `invoice.paid` and
/// `invoice.line.added`; anything else matches itself only.
///
/// The engine's own event types (`wasmhook.…`, see [`crate::operational`])
/// match only patterns that name them: `wasmhook.webhook.disabled` or
/// `wasmhook.*`, never `*`.
pub fn event_type_matches(pattern: &str, event_type: &str) -> bool {
    if crate::operational::is_operational(event_type)
        && !pattern.starts_with(crate::operational::PREFIX)
    {
        return false;
    }
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    pub tenant: TenantId,
    pub event_type: String,
    /// The `data` member exactly as the application sent it.
    pub data: Box<RawValue>,
    pub occurred_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// A receiver answered 2xx.
    Succeeded,
    /// Attempts used up, the webhook was disabled or deleted, or the receiver said 410.
    Failed,
    /// A plugin decided not to send it.
    Skipped,
}

impl DeliveryStatus {
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub tenant: TenantId,
    pub event_id: EventId,
    pub webhook_id: WebhookId,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at_ms: Option<u64>,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    pub last_status_code: Option<u16>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The delivery this one sends again (a resend or replay of its event).
    pub replay_of: Option<DeliveryId>,
    /// The time its webhook's rate limit reserved for its next attempt:
    /// then it goes without taking another turn.
    pub rate_slot_ms: Option<u64>,
}

impl Delivery {
    /// Pending again and due at `now_ms` (a manual retry); both backends use this.
    pub fn reopen(&mut self, now_ms: u64) {
        self.status = DeliveryStatus::Pending;
        self.next_attempt_at_ms = Some(now_ms);
        self.reason = None;
        self.updated_at_ms = now_ms;
    }
}

/// A bulk replay: a webhook's events in a time range sent again, each as a
/// new delivery linked to the latest one there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Replay {
    pub id: crate::ids::ReplayId,
    pub tenant: TenantId,
    pub webhook_id: WebhookId,
    pub since_ms: u64,
    pub until_ms: Option<u64>,
    /// Only events whose delivery there had this status.
    pub status: Option<DeliveryStatus>,
    pub idempotency_key: Option<String>,
    /// The deliveries it made, in the order the events were accepted.
    pub delivery_ids: Vec<DeliveryId>,
    pub created_at_ms: u64,
}

/// One try of a delivery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    pub delivery_id: DeliveryId,
    pub attempt: u32,
    pub started_at_ms: u64,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    /// The first bytes of the response body (lossy UTF-8).
    pub response_body: Option<String>,
    pub error: Option<String>,
    /// `name@version` of the plugin that shaped the request, if any.
    pub plugin: Option<String>,
    pub outcome: AttemptOutcome,
    /// The request as sent, if one was.
    pub request: Option<SentRequest>,
    /// The answer's headers, `name: value` lines (the first bytes).
    pub response_headers: Option<String>,
}

/// A request as an attempt sent it. Signature and authorization header
/// values are redacted; the body is kept up to `log_request_body_bytes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SentRequest {
    pub url: String,
    /// `name: value` lines; none for the default format with no custom
    /// headers, whose headers follow from the delivery id and `timestamp`
    /// (rebuilt when shown), so such attempts store no copy.
    pub headers: Option<String>,
    /// The signed timestamp (`webhook-timestamp`, seconds).
    pub timestamp: u64,
    /// None: the event's default-format body (rebuilt from the event when
    /// shown, byte for byte), so the default format stores no copy.
    pub body: Option<String>,
    /// The body's whole length; over the stored part's, it was cut.
    pub body_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    /// The receiver answered, but not 2xx.
    HttpError,
    /// Connection refused, DNS, TLS, a refused private address, …
    NetworkError,
    Timeout,
    /// The plugin trapped, ran out of time or memory, returned an error or invalid output.
    PluginError,
    /// The plugin skipped the delivery.
    Skipped,
    /// The engine failed during the attempt (a bug; the reason is recorded).
    EngineError,
}

/// Delivery counters of one webhook.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStats {
    pub total: u64,
    pub pending: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub attempts: u64,
    /// Sum of attempt durations, for the average.
    pub attempt_duration_ms_total: u64,
    /// When the last attempt ended.
    #[serde(default)]
    pub last_attempt_at_ms: Option<u64>,
    /// When the last attempt that succeeded ended.
    #[serde(default)]
    pub last_success_at_ms: Option<u64>,
    /// When the last attempt that failed ended, and its error.
    #[serde(default)]
    pub last_failure_at_ms: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// What an attempt changes in the "last" fields of its webhook's stats:
/// when it ended, and whether it succeeded or failed (with its error); a
/// skip is neither.
#[derive(Clone, Debug, PartialEq)]
pub enum LastAttempt {
    Succeeded { at_ms: u64 },
    Failed { at_ms: u64, error: String },
    Skipped { at_ms: u64 },
}

impl LastAttempt {
    pub fn of(a: &Attempt) -> LastAttempt {
        let at_ms = a.started_at_ms + a.duration_ms;
        match a.outcome {
            AttemptOutcome::Succeeded => LastAttempt::Succeeded { at_ms },
            AttemptOutcome::Skipped => LastAttempt::Skipped { at_ms },
            _ => LastAttempt::Failed {
                at_ms,
                error: match (&a.error, a.status_code) {
                    (Some(e), _) => e.clone(),
                    (None, Some(code)) => format!("receiver answered {code}"),
                    (None, None) => "failed".into(),
                },
            },
        }
    }

    pub fn at_ms(&self) -> u64 {
        match self {
            LastAttempt::Succeeded { at_ms }
            | LastAttempt::Failed { at_ms, .. }
            | LastAttempt::Skipped { at_ms } => *at_ms,
        }
    }
}

impl DeliveryStats {
    pub fn count(&mut self, status: DeliveryStatus, delta: i64) {
        let slot = match status {
            DeliveryStatus::Pending => &mut self.pending,
            DeliveryStatus::Succeeded => &mut self.succeeded,
            DeliveryStatus::Failed => &mut self.failed,
            DeliveryStatus::Skipped => &mut self.skipped,
        };
        *slot = slot.saturating_add_signed(delta);
    }

    /// Notes an attempt in the "last" fields.
    pub fn note(&mut self, last: &LastAttempt) {
        self.last_attempt_at_ms = self.last_attempt_at_ms.max(Some(last.at_ms()));
        match last {
            LastAttempt::Succeeded { at_ms } => {
                self.last_success_at_ms = self.last_success_at_ms.max(Some(*at_ms))
            }
            LastAttempt::Failed { at_ms, error } => {
                if self.last_failure_at_ms <= Some(*at_ms) {
                    self.last_failure_at_ms = Some(*at_ms);
                    self.last_error = Some(error.clone());
                }
            }
            LastAttempt::Skipped { .. } => {}
        }
    }

    pub fn add(&mut self, other: &DeliveryStats) {
        self.last_attempt_at_ms = self.last_attempt_at_ms.max(other.last_attempt_at_ms);
        self.last_success_at_ms = self.last_success_at_ms.max(other.last_success_at_ms);
        if other.last_failure_at_ms > self.last_failure_at_ms {
            self.last_failure_at_ms = other.last_failure_at_ms;
            self.last_error = other.last_error.clone();
        }
        self.total += other.total;
        self.pending += other.pending;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.attempts += other.attempts;
        self.attempt_duration_ms_total += other.attempt_duration_ms_total;
    }
}

/// An event type a tenant has triggered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventTypeSeen {
    pub event_type: String,
    pub count: u64,
    pub last_seen_ms: u64,
}

/// One uploaded version of a tenant's plugin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginVersion {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    pub size: u64,
    pub uploaded_at_ms: u64,
    /// `admin`, `tenant` or `plugins_dir`.
    pub uploaded_by: String,
    /// Set when this version was made by rolling back: the version whose
    /// component it brought back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u32>,
}

impl PluginVersion {
    /// The record of a component that is not stored (the developer kit, dry
    /// runs, tests, benchmarks): version `version` of `name`, uploaded by `by`.
    pub fn unstored(name: impl Into<String>, version: u32, by: &str) -> PluginVersion {
        PluginVersion {
            name: name.into(),
            version,
            sha256: String::new(),
            size: 0,
            uploaded_at_ms: 0,
            uploaded_by: by.to_owned(),
            restored_from: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(event_type_matches("*", "invoice.paid"));
        assert!(event_type_matches("invoice.*", "invoice.paid"));
        assert!(!event_type_matches("invoice.*", "payment.received"));
        assert!(event_type_matches("low-stock-alert", "low-stock-alert"));
        assert!(!event_type_matches("invoice.paid", "invoice.paid.late"));
    }

    #[test]
    fn operational_types_match_only_when_named() {
        let disabled = "wasmhook.webhook.disabled";
        assert!(!event_type_matches("*", disabled));
        assert!(!event_type_matches("wasm*", disabled));
        assert!(event_type_matches("wasmhook.*", disabled));
        assert!(event_type_matches(disabled, disabled));
        assert!(!event_type_matches("wasmhook.delivery.exhausted", disabled));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("my-webhook-secret-12345678".into());
        assert!(!format!("{s:?}").contains("secret-1234"));
        assert!(Secret::generate().expose().starts_with("whsec_"));
    }
}
