//! Operational events: what the engine tells a tenant about its own
//! webhooks, as events of its own that the tenant's webhooks receive.
//!
//! - `wasmhook.webhook.disabled`: the engine disabled a webhook (the health
//!   job, or its receiver answered 410 Gone); names it and says why.
//! - `wasmhook.delivery.exhausted`: a delivery used up its attempts.
//!
//! Owns: their types and data, and emitting them. Invariants: a webhook
//! receives them only by subscribing to their type (or `wasmhook.*`)
//! explicitly; `*` and other wildcards never match them (see
//! [`crate::model::event_type_matches`]); tenants cannot trigger them (the
//! trigger API refuses the `wasmhook.` prefix). They are written, signed,
//! delivered and retried like any event; an operational event never causes
//! another one (a delivery of one that is exhausted, or a webhook disabled
//! while delivering one, emits nothing). What may happen twice: nothing
//! is emitted twice by one engine, but the event is emitted after the
//! change it reports is written, so a crash between the two loses it.

use crate::clock::now_ms;
use crate::delivery::Deliverer;
use crate::ids::{EventId, TenantId};
use crate::metrics::EventTypeLabel;
use crate::store::{Ingested, NewEvent, StoreError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Event types starting with this are the engine's own.
pub const PREFIX: &str = "wasmhook.";
pub const WEBHOOK_DISABLED: &str = "wasmhook.webhook.disabled";
pub const DELIVERY_EXHAUSTED: &str = "wasmhook.delivery.exhausted";

/// Whether an event of this type is one of the engine's own.
pub fn is_operational(event_type: &str) -> bool {
    event_type.starts_with(PREFIX)
}

/// Writes an operational event of `event_type` with `data` for `tenant`,
/// fanned out to its webhooks subscribed to it, durable before this
/// returns, and hands its deliveries to `deliverer`. Answers how many
/// deliveries it made.
pub async fn emit(
    deliverer: &Deliverer,
    tenant: &TenantId,
    event_type: &'static str,
    data: Value,
) -> Result<usize, StoreError> {
    let data = serde_json::value::to_raw_value(&data)?;
    let now = now_ms();
    let id = EventId::generate();
    let fingerprint = hex::encode(Sha256::digest(data.get().as_bytes()));
    let new = NewEvent {
        id,
        tenant: tenant.clone(),
        event_type: event_type.to_owned(),
        data,
        occurred_at_ms: now,
        idempotency_key: None,
        fingerprint,
        only_webhook: None,
        due_at_ms: now + deliverer.lease().as_millis() as u64,
    };
    let Ingested::Created {
        event,
        deliveries,
        webhooks,
        ..
    } = deliverer.store().insert_event(new).await?
    else {
        // A fresh id cannot have been used before.
        return Ok(0);
    };
    deliverer
        .metrics()
        .operational_events
        .get_or_create(&EventTypeLabel { event_type })
        .inc();
    let made = deliveries.len();
    deliverer.submit(Arc::new(event), deliveries, webhooks);
    Ok(made)
}

/// The data of `wasmhook.delivery.exhausted` for a delivery that used up
/// its attempts at `now_ms`.
pub fn exhausted(delivery: &crate::model::Delivery, now_ms: u64) -> Value {
    serde_json::json!({
        "delivery_id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "attempts": delivery.attempts,
        "reason": delivery.reason,
        "last_status_code": delivery.last_status_code,
        "failed_at": crate::clock::rfc3339_ms(now_ms),
    })
}

/// Emits one, logging (not returning) a failure: the change it reports is
/// already written.
pub async fn emit_or_log(
    deliverer: &Deliverer,
    tenant: &TenantId,
    event_type: &'static str,
    data: Value,
) {
    if let Err(e) = emit(deliverer, tenant, event_type, data).await {
        tracing::warn!(tenant = %tenant, event_type, error = %e, "cannot emit an operational event");
    }
}

/// Why the engine disabled a webhook, as `wasmhook_webhooks_disabled_total`
/// labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisableCause {
    /// The health job: its failure rate passed the threshold.
    FailureRate,
    /// Its receiver answered 410 Gone.
    Gone,
}

impl DisableCause {
    pub fn as_str(self) -> &'static str {
        match self {
            DisableCause::FailureRate => "failure_rate",
            DisableCause::Gone => "gone",
        }
    }
}

/// Disables the webhook as stored now (a caller may hold an older copy, so
/// a change made meanwhile is kept), recording why and when, counts it and
/// tells the tenant with `wasmhook.webhook.disabled` unless `quiet` (the
/// cause was itself an operational event's delivery). False if it was gone
/// or already disabled.
pub async fn disable_webhook(
    deliverer: &Deliverer,
    tenant: &TenantId,
    id: &crate::ids::WebhookId,
    cause: DisableCause,
    reason: String,
    quiet: bool,
) -> Result<bool, StoreError> {
    let store = deliverer.store();
    let Some(mut webhook) = store.get_webhook(tenant, id).await? else {
        return Ok(false);
    };
    if !webhook.active {
        return Ok(false);
    }
    tracing::warn!(tenant = %tenant, webhook = %id, reason = %reason, "disabling webhook");
    let now = now_ms();
    webhook.active = false;
    webhook.disabled_reason = Some(reason.clone());
    webhook.disabled_at_ms = Some(now);
    webhook.updated_at_ms = now;
    let description = webhook.description.clone();
    store.put_webhook(webhook).await?;
    deliverer
        .metrics()
        .webhooks_disabled
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: cause.as_str(),
        })
        .inc();
    if !quiet {
        let data = serde_json::json!({
            "webhook_id": id,
            "description": description,
            "cause": cause.as_str(),
            "reason": reason,
            "disabled_at": crate::clock::rfc3339_ms(now),
        });
        emit_or_log(deliverer, tenant, WEBHOOK_DISABLED, data).await;
    }
    Ok(true)
}
