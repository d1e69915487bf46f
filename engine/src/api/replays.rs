//! Bulk replay: `POST /api/webhooks/{id}/replay` sends a webhook's events
//! in a time range again (say, everything that failed during an outage),
//! and `GET /api/webhooks/{id}/replays/{replay_id}` shows how it goes.
//!
//! Owns: choosing the events and making their new deliveries. Invariants:
//! at most [`MAX_EVENTS`] events per replay; each event once (its latest
//! delivery there is the one replayed, `replay_of`); the new deliveries
//! are durable before the `202`, due oldest first; the same request with
//! the same `Idempotency-Key` makes nothing new and answers the first
//! replay. What may happen twice: nothing is sent twice by one replay; an
//! engine that dies between storing the replay and its deliveries leaves
//! a replay whose missing deliveries count as gone.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::Json;
use super::webhooks::{WebhookPath, load};
use crate::App;
use crate::clock::{now_ms, rfc3339_ms};
use crate::ids::ReplayId;
use crate::model::{Delivery, DeliveryStatus, Replay};
use crate::store::walk_deliveries;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::ops::ControlFlow;
use std::sync::Arc;

/// Most events one replay sends.
pub const MAX_EVENTS: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayInput {
    since: String,
    until: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize)]
pub struct ReplayPath {
    webhook_id: String,
    replay_id: String,
}

fn time(field: &str, value: &str) -> Result<u64, ApiError> {
    super::lists::parse_time(field, value).map_err(ApiError::invalid)
}

pub async fn create(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
    headers: HeaderMap,
    Json(input): Json<ReplayInput>,
) -> ApiResult<Response> {
    let webhook = load(&app, &caller, &path.webhook_id).await?;
    let since = time("since", &input.since)?;
    let until = input
        .until
        .as_deref()
        .map(|u| time("until", u))
        .transpose()?;
    if until.is_some_and(|u| u <= since) {
        return Err(ApiError::invalid("until: must be after since"));
    }
    let status = match input.status.as_deref() {
        None => None,
        Some("pending") => {
            return Err(ApiError::invalid(
                "status: pending deliveries go out on their own; replay succeeded, failed or skipped ones",
            ));
        }
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(format!("status: {s:?} is not succeeded, failed or skipped"))
        })?),
    };
    let key = super::events::idempotency_key(&headers)?;
    let chosen = choose(&app, &caller, &webhook.id, since, until, status).await?;
    let now = now_ms();
    let mut fresh = Vec::with_capacity(chosen.len());
    for (i, original) in chosen.iter().enumerate() {
        // An event past retention has nothing to send again.
        let Some(event) = app.store.get_event(caller.id(), &original.event_id).await? else {
            continue;
        };
        fresh.push(crate::store::replay_delivery(
            &event,
            &webhook,
            &original.id,
            now + i as u64,
        ));
    }
    let replay = Replay {
        id: ReplayId::generate(),
        tenant: caller.id().clone(),
        webhook_id: webhook.id.clone(),
        since_ms: since,
        until_ms: until,
        status,
        idempotency_key: key,
        delivery_ids: fresh.iter().map(|d| d.id.clone()).collect(),
        created_at_ms: now,
    };
    if let Some(earlier) = app.store.put_replay(replay.clone()).await? {
        let mut resp = axum::Json(view(&app, &earlier).await?).into_response();
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(resp);
    }
    for chunk in fresh.chunks(64) {
        futures_util::future::try_join_all(chunk.iter().map(|d| {
            app.store
                .add_deliveries(caller.id(), &d.event_id, vec![d.clone()])
        }))
        .await?;
    }
    app.metrics.deliveries_created.inc_by(fresh.len() as u64);
    app.deliverer.wake();
    Ok((StatusCode::ACCEPTED, axum::Json(view(&app, &replay).await?)).into_response())
}

pub async fn get(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<ReplayPath>,
) -> ApiResult<axum::Json<Value>> {
    let webhook = load(&app, &caller, &path.webhook_id).await?;
    let not_found = || ApiError::not_found("replay");
    let id = ReplayId::parse_external(&path.replay_id).map_err(|_| not_found())?;
    let replay = app
        .store
        .get_replay(caller.id(), &id)
        .await?
        .filter(|r| r.webhook_id == webhook.id)
        .ok_or_else(not_found)?;
    Ok(axum::Json(view(&app, &replay).await?))
}

/// The events to send again, oldest first: the latest delivery of each to
/// this webhook created in the range (with `status`, if given; pending
/// ones are left alone), at most [`MAX_EVENTS`].
async fn choose(
    app: &App,
    caller: &Caller,
    webhook: &crate::ids::WebhookId,
    since: u64,
    until: Option<u64>,
    status: Option<DeliveryStatus>,
) -> ApiResult<Vec<Delivery>> {
    let mut seen = std::collections::HashSet::new();
    let mut chosen = Vec::new();
    walk_deliveries(app.store.as_ref(), caller.id(), webhook, None, None, |d| {
        if d.created_at_ms < since || chosen.len() > MAX_EVENTS {
            return ControlFlow::Break(());
        }
        // Newest first: the first delivery seen of an event is its latest.
        if until.is_some_and(|u| d.created_at_ms >= u) || !seen.insert(d.event_id.clone()) {
            return ControlFlow::Continue(());
        }
        let wanted = match status {
            Some(s) => d.status == s,
            None => d.status != DeliveryStatus::Pending,
        };
        if wanted {
            chosen.push(d);
        }
        ControlFlow::Continue(())
    })
    .await?;
    if chosen.len() > MAX_EVENTS {
        return Err(ApiError::invalid(format!(
            "more than {MAX_EVENTS} events match; replay a shorter range"
        )));
    }
    chosen.reverse();
    Ok(chosen)
}

/// A replay and how its deliveries stand now.
async fn view(app: &App, r: &Replay) -> ApiResult<Value> {
    let mut counts = [0u64; 5];
    for id in &r.delivery_ids {
        let i = match app.store.get_delivery(&r.tenant, id).await? {
            Some(d) => match d.status {
                DeliveryStatus::Pending => 0,
                DeliveryStatus::Succeeded => 1,
                DeliveryStatus::Failed => 2,
                DeliveryStatus::Skipped => 3,
            },
            None => 4,
        };
        counts[i] += 1;
    }
    Ok(json!({
        "id": r.id,
        "webhook_id": r.webhook_id,
        "since": rfc3339_ms(r.since_ms),
        "until": r.until_ms.map(rfc3339_ms),
        "status": r.status,
        "events": r.delivery_ids.len(),
        "deliveries": {
            "pending": counts[0],
            "succeeded": counts[1],
            "failed": counts[2],
            "skipped": counts[3],
            "gone": counts[4],
        },
        "done": counts[0] == 0,
        "created_at": rfc3339_ms(r.created_at_ms),
    }))
}
