//! How records look to API callers: times as RFC 3339, secrets left out.

use crate::clock::rfc3339_ms;
use crate::delivery::pause::PAUSED_DUE_MS;
use crate::model::{Attempt, Delivery, DeliveryStats, PluginVersion, Webhook};
use serde_json::{Value, json};

/// A webhook as shown: its retry policy and timeout are what it uses, its
/// own or the engine's defaults (then `*_is_default` is true).
pub fn webhook(w: &Webhook, deliverer: &crate::delivery::Deliverer) -> Value {
    let defaults = deliverer.defaults();
    json!({
        "breaker": deliverer.breakers().view(&w.id, crate::clock::now_ms()),
        "id": w.id,
        "url": w.url,
        "events": w.events,
        "active": w.active,
        "disabled_reason": w.disabled_reason,
        "disabled_at": w.disabled_at_ms.map(rfc3339_ms),
        "description": w.description,
        "headers": w.headers,
        "metadata": w.metadata,
        "plugin": w.plugin,
        "plugin_config": w.plugin_config,
        "filter": w.filter,
        "rate_limit": w.rate_limit,
        "retry_policy": defaults.retry_policy(w),
        "retry_policy_is_default": w.retry_policy.is_none(),
        "timeout_ms": defaults.timeout_ms(w),
        "timeout_ms_is_default": w.timeout_ms.is_none(),
        "created_at": rfc3339_ms(w.created_at_ms),
        "updated_at": rfc3339_ms(w.updated_at_ms),
    })
}

pub fn delivery(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "webhook_id": d.webhook_id,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at_ms.filter(|&t| t != PAUSED_DUE_MS).map(rfc3339_ms),
        "waiting_for_webhook": d.next_attempt_at_ms == Some(PAUSED_DUE_MS),
        "reason": d.reason,
        "last_status_code": d.last_status_code,
        "replay_of": d.replay_of,
        "created_at": rfc3339_ms(d.created_at_ms),
        "updated_at": rfc3339_ms(d.updated_at_ms),
    })
}

/// An attempt with the request as sent and the answer; `event` rebuilds
/// the default format's body, which is not stored.
pub fn attempt(a: &Attempt, event: Option<&crate::model::Event>) -> Value {
    let request = a.request.as_ref().map(|r| {
        let body = match &r.body {
            Some(body) => Some(body.clone()),
            None => event.map(|e| {
                String::from_utf8_lossy(&crate::delivery::shape::envelope(e)).into_owned()
            }),
        };
        let headers = match &r.headers {
            Some(lines) => header_map(lines),
            None => crate::delivery::outgoing::default_headers(a.delivery_id.as_str(), r.timestamp),
        };
        json!({
            "url": r.url,
            "method": "POST",
            "headers": headers,
            "body": body,
            "body_bytes": r.body_bytes,
            "body_truncated": body.as_ref().is_some_and(|b| (b.len() as u64) < r.body_bytes),
        })
    });
    let response = a.status_code.map(|status| {
        json!({
            "status": status,
            "headers": a.response_headers.as_deref().map(header_map),
            "body": a.response_body,
        })
    });
    json!({
        "request": request,
        "response": response,
        "attempt": a.attempt,
        "outcome": a.outcome,
        "started_at": rfc3339_ms(a.started_at_ms),
        "duration_ms": a.duration_ms,
        "status_code": a.status_code,
        "response_body": a.response_body,
        "error": a.error,
        "plugin": a.plugin,
    })
}

pub fn stats(s: &DeliveryStats) -> Value {
    let finished = s.succeeded + s.failed;
    json!({
        "total": s.total,
        "pending": s.pending,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "skipped": s.skipped,
        "attempts": s.attempts,
        "average_attempt_ms": s.attempt_duration_ms_total.checked_div(s.attempts).unwrap_or(0),
        "success_rate": if finished == 0 { Value::Null } else { json!(s.succeeded as f64 / finished as f64) },
        "last_delivery_at": s.last_attempt_at_ms.map(rfc3339_ms),
        "last_success_at": s.last_success_at_ms.map(rfc3339_ms),
        "last_failure_at": s.last_failure_at_ms.map(rfc3339_ms),
        "last_error": s.last_error,
    })
}

pub fn plugin(p: &PluginVersion) -> Value {
    json!({
        "name": p.name,
        "version": p.version,
        "sha256": p.sha256,
        "size": p.size,
        "uploaded_at": rfc3339_ms(p.uploaded_at_ms),
        "uploaded_by": p.uploaded_by,
        "restored_from": p.restored_from,
    })
}

/// `name: value` lines as an object (a repeated name keeps its last value).
fn header_map(lines: &str) -> Value {
    let map: serde_json::Map<String, Value> = lines
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    Value::Object(map)
}
