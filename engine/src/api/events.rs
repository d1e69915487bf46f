//! `POST /api/events` (trigger), `POST /api/events/batch` (up to
//! [`MAX_BATCH`] triggers in one request) and `GET /api/events/{id}`.
//!
//! A trigger is answered 202 only after the event and its deliveries are
//! durable. The event id (given or minted) and the `Idempotency-Key` header
//! each make a repeated trigger a no-op answered with the first answer; the
//! same key with a different request is a 409. In a batch, the header's key
//! stands for one key per event, `<key>#<index>`, and each event's outcome
//! (accepted, replayed or conflict) is answered in its place.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Json, RawBody};
use super::views;
use crate::App;
use crate::clock::{now_ms, rfc3339_ms};
use crate::ids::{EventId, WebhookId};
use crate::model::Delivery;
use crate::store::{IdempotentAnswer, Ingested, NewEvent};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    id: Option<String>,
}

pub fn check_event_type(t: &str) -> Result<(), ApiError> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "type: {t:?} must be 1 to 128 letters, digits, '.', '_', '-', ':' or '/'"
        )))
    }
}

/// Event data as the engine accepts it (see [`crate::payload`]), or a 422
/// saying what is wrong.
pub fn check_data(data: &RawValue) -> Result<(), ApiError> {
    crate::payload::check(data.get()).map_err(|e| ApiError::invalid(format!("data: {e}")))
}

/// Most events one batch trigger takes.
pub const MAX_BATCH: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    events: Vec<Trigger>,
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

pub async fn trigger(
    caller: Caller,
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(input): Json<Trigger>,
) -> ApiResult<Response> {
    let new = new_event(&app, caller.id(), input, idempotency_key(&headers)?)?;
    within_limit(&app, caller.id(), 1).await?;
    ingest(&app, new).await
}

/// The tenant's ingest limit (`tenant_events_per_second`): `n` more events
/// now, or a `429` saying when to come back. Checked once the request is
/// known to be valid, so a bad request costs nothing.
async fn within_limit(app: &App, tenant: &crate::ids::TenantId, n: u32) -> Result<(), ApiError> {
    let Some(rate) = app.settings.tenant_events else {
        return Ok(());
    };
    match app
        .store
        .take_rate(tenant, "events", rate, n, now_ms())
        .await?
    {
        Ok(()) => Ok(()),
        Err(Some(wait)) => Err(ApiError::too_many(
            "rate_limited",
            format!(
                "this tenant may trigger {} events per second (bursts of {}); try again in {} ms",
                rate.per_second,
                rate.burst,
                wait.as_millis().max(1)
            ),
            wait.as_secs_f64().ceil().max(1.0) as u64,
        )),
        Err(None) => Err(ApiError::too_many(
            "rate_limited",
            format!(
                "{n} events at once is more than this tenant's burst of {}; send smaller batches",
                rate.burst
            ),
            1,
        )),
    }
}

/// Writes one event, hands its deliveries to the worker and answers; shared
/// with the webhook `test` route.
pub async fn ingest(app: &App, new: NewEvent) -> ApiResult<Response> {
    match settle(app, app.store.insert_event(new).await?) {
        Outcome::Accepted(body) => Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response()),
        Outcome::Replayed(body) => {
            let mut resp = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(resp)
        }
        Outcome::Conflict(e) => Err(e),
    }
}

/// `POST /api/events/batch`: every event is checked before any is written;
/// the embedded store then writes them all in one transaction.
pub async fn trigger_batch(
    caller: Caller,
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(input): Json<Batch>,
) -> ApiResult<Response> {
    let n = input.events.len();
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "events: must hold 1 to {MAX_BATCH} events, not {n}"
        )));
    }
    let key = idempotency_key(&headers)?;
    let mut news = Vec::with_capacity(n);
    for (i, item) in input.events.into_iter().enumerate() {
        let key = key.as_ref().map(|k| format!("{k}#{i}"));
        let new = new_event(&app, caller.id(), item, key).map_err(|mut e| {
            e.message = format!("events[{i}].{}", e.message);
            e
        })?;
        news.push(new);
    }
    within_limit(&app, caller.id(), n as u32).await?;
    let (mut accepted, mut replayed, mut conflicts) = (0u32, 0u32, 0u32);
    let results: Vec<Value> = app
        .store
        .insert_events(news)
        .await?
        .into_iter()
        .map(|ingested| match settle(&app, ingested) {
            Outcome::Accepted(mut body) => {
                accepted += 1;
                body["status"] = json!("accepted");
                body
            }
            Outcome::Replayed(mut body) => {
                replayed += 1;
                body["status"] = json!("replayed");
                body
            }
            Outcome::Conflict(e) => {
                conflicts += 1;
                json!({"status": "conflict", "error": {"code": e.code, "message": e.message}})
            }
        })
        .collect();
    let body = json!({
        "accepted": accepted,
        "replayed": replayed,
        "conflicts": conflicts,
        "events": results,
    });
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// A checked trigger, ready for the store.
fn new_event(
    app: &App,
    tenant: &crate::ids::TenantId,
    input: Trigger,
    idempotency_key: Option<String>,
) -> Result<NewEvent, ApiError> {
    check_event_type(&input.event_type)?;
    if crate::operational::is_operational(&input.event_type) {
        return Err(ApiError::invalid(format!(
            "type: {:?} is reserved: types starting with {:?} are the engine's own operational events",
            input.event_type,
            crate::operational::PREFIX
        )));
    }
    check_data(&input.data)?;
    let id = match &input.id {
        Some(id) => {
            EventId::parse_external(id).map_err(|e| ApiError::invalid(format!("id: {e}")))?
        }
        None => EventId::generate(),
    };
    let now = now_ms();
    Ok(NewEvent {
        id,
        tenant: tenant.clone(),
        fingerprint: fingerprint(&input.event_type, input.data.get(), input.id.as_deref()),
        event_type: input.event_type,
        data: input.data,
        occurred_at_ms: now,
        idempotency_key,
        only_webhook: None,
        due_at_ms: now + app.deliverer.lease().as_millis() as u64,
    })
}

/// What became of one trigger, as its answer.
enum Outcome {
    Accepted(Value),
    Replayed(Value),
    Conflict(ApiError),
}

/// Counts a written trigger and hands its deliveries to the worker.
fn settle(app: &App, ingested: Ingested) -> Outcome {
    match ingested {
        Ingested::Created {
            event,
            deliveries,
            webhooks,
            filtered,
        } => {
            app.metrics.events_accepted.inc();
            let created = deliveries.len() as u64;
            app.metrics.deliveries_created.inc_by(created);
            app.metrics.deliveries_filtered.inc_by(u64::from(filtered));
            let mut body = answer(
                event.id.as_str(),
                &event.event_type,
                deliveries.len() as u32,
                &deliveries,
            );
            body["filtered"] = json!(filtered);
            app.deliverer
                .submit(std::sync::Arc::new(event), deliveries, webhooks);
            Outcome::Accepted(body)
        }
        Ingested::Replayed(prev) => {
            app.metrics.events_replayed.inc();
            Outcome::Replayed(replayed(&prev))
        }
        Ingested::KeyReused(prev) => Outcome::Conflict(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            format!(
                "this idempotency key or event id was already used for event {} with a different type or data",
                prev.event_id
            ),
        )),
    }
}

fn answer(id: &str, event_type: &str, count: u32, deliveries: &[Delivery]) -> Value {
    json!({
        "id": id,
        "type": event_type,
        "deliveries": count,
        "delivery_ids": deliveries.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
    })
}

fn replayed(prev: &IdempotentAnswer) -> Value {
    json!({"id": prev.event_id, "type": prev.event_type, "deliveries": prev.deliveries})
}

fn fingerprint(event_type: &str, data: &str, id: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(event_type.as_bytes());
    h.update([0]);
    h.update(data.as_bytes());
    h.update([0]);
    h.update(id.unwrap_or("").as_bytes());
    hex::encode(h.finalize())
}

#[derive(Deserialize)]
pub struct EventPath {
    event_id: String,
}

pub async fn get(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<EventPath>,
) -> ApiResult<axum::Json<Value>> {
    let id = EventId::parse_external(&path.event_id).map_err(|_| ApiError::not_found("event"))?;
    let event = app
        .store
        .get_event(caller.id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let deliveries = app.store.event_deliveries(caller.id(), &id).await?;
    Ok(axum::Json(json!({
        "id": event.id,
        "type": event.event_type,
        "data": event.data,
        "occurred_at": rfc3339_ms(event.occurred_at_ms),
        "deliveries": deliveries.iter().map(views::delivery).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Resend {
    /// Only to this webhook (one the event went to).
    webhook_id: Option<String>,
}

/// `POST /api/events/{id}/resend`: sends the event again, whatever its
/// deliveries' status, to every webhook it went to that still exists (or
/// to the one named): one new delivery each, linked to the latest one
/// there by `replay_of`. `202` with the new deliveries.
pub async fn resend(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<EventPath>,
    RawBody(body): RawBody,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let input: Resend = if body.iter().all(u8::is_ascii_whitespace) {
        Resend::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("the body is not a resend: {e}"))
        })?
    };
    let id = EventId::parse_external(&path.event_id).map_err(|_| ApiError::not_found("event"))?;
    let event = app
        .store
        .get_event(caller.id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let only = match &input.webhook_id {
        Some(w) => Some(WebhookId::parse_external(w).map_err(|_| ApiError::not_found("webhook"))?),
        None => None,
    };
    // The latest delivery to each webhook, in the order the event first went.
    let mut latest: Vec<Delivery> = Vec::new();
    for d in app.store.event_deliveries(caller.id(), &id).await? {
        if only.as_ref().is_some_and(|w| *w != d.webhook_id) {
            continue;
        }
        match latest.iter_mut().find(|l| l.webhook_id == d.webhook_id) {
            Some(l) if d.id > l.id => *l = d,
            Some(_) => {}
            None => latest.push(d),
        }
    }
    if let Some(w) = &only
        && latest.is_empty()
    {
        return Err(ApiError::not_found(&format!(
            "a delivery of this event to webhook {w}"
        )));
    }
    let now = now_ms();
    let mut fresh = Vec::new();
    for original in &latest {
        let Some(webhook) = app
            .store
            .get_webhook(caller.id(), &original.webhook_id)
            .await?
        else {
            continue;
        };
        fresh.push(crate::store::replay_delivery(
            &event,
            &webhook,
            &original.id,
            now,
        ));
    }
    if !fresh.is_empty() {
        app.store
            .add_deliveries(caller.id(), &id, fresh.clone())
            .await?;
        app.metrics.deliveries_created.inc_by(fresh.len() as u64);
        app.deliverer.wake();
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "id": event.id,
            "type": event.event_type,
            "deliveries": fresh.len(),
            "delivery_ids": fresh.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        })),
    ))
}

/// A test event for one webhook (the `test` route).
pub fn test_event(
    app: &App,
    tenant: &crate::ids::TenantId,
    webhook: &WebhookId,
    data: Box<RawValue>,
) -> NewEvent {
    let id = EventId::generate();
    NewEvent {
        fingerprint: fingerprint("webhook.test", data.get(), Some(id.as_str())),
        id,
        tenant: tenant.clone(),
        event_type: "webhook.test".into(),
        data,
        occurred_at_ms: now_ms(),
        idempotency_key: None,
        only_webhook: Some(webhook.clone()),
        due_at_ms: now_ms() + app.deliverer.lease().as_millis() as u64,
    }
}
