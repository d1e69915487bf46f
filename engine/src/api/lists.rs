//! Tenant-wide lists: `GET /api/events` and `GET /api/deliveries`, filtered
//! by status, event type, webhook and time range (`since`, `until`, RFC
//! 3339), newest first, with a cursor (`before`, from `next_before`).
//!
//! Owns: the filters and cursors. Invariants: a page reads at most
//! `store::EVENT_SCAN` events, so a narrow filter answers a short page with
//! a cursor rather than reading everything.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::views;
use crate::App;
use crate::clock::rfc3339_ms;
use crate::ids::WebhookId;
use crate::model::{Delivery, DeliveryStatus};
use crate::store::{EventList, EventQuery};
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub webhook_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
    pub before: Option<String>,
}

/// The checked filters of a list.
pub struct Filters {
    pub status: Option<DeliveryStatus>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub limit: usize,
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

/// An RFC 3339 time in Unix milliseconds, or what is wrong with it.
pub fn parse_time(field: &str, value: &str) -> Result<u64, String> {
    chrono::DateTime::parse_from_rfc3339(value)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .ok_or_else(|| {
            format!("{field}: {value:?} is not an RFC 3339 time such as 2026-12-04T10:00:00Z")
        })
}

fn time(field: &str, value: &str) -> Result<u64, ApiError> {
    parse_time(field, value).map_err(bad)
}

impl ListQuery {
    pub fn filters(&self) -> Result<Filters, ApiError> {
        let status = match &self.status {
            None => None,
            Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
                bad(format!(
                    "status: {s:?} is not pending, succeeded, failed or skipped"
                ))
            })?),
        };
        let limit = self.limit.unwrap_or(50);
        if !(1..=250).contains(&limit) {
            return Err(bad("limit: must be 1 to 250".into()));
        }
        Ok(Filters {
            status,
            since_ms: self
                .since
                .as_deref()
                .map(|s| time("since", s))
                .transpose()?,
            until_ms: self
                .until
                .as_deref()
                .map(|s| time("until", s))
                .transpose()?,
            limit,
        })
    }

    /// Whether a delivery passes the type and time filters.
    pub fn keeps(&self, f: &Filters, d: &Delivery) -> bool {
        self.event_type.as_ref().is_none_or(|t| *t == d.event_type)
            && f.since_ms.is_none_or(|s| d.created_at_ms >= s)
            && f.until_ms.is_none_or(|u| d.created_at_ms < u)
            && f.status.is_none_or(|s| s == d.status)
    }
}

/// An event cursor `ms:id`.
fn cursor(before: &Option<String>) -> Result<Option<(u64, &str)>, ApiError> {
    let Some(b) = before else { return Ok(None) };
    b.split_once(':')
        .and_then(|(ms, id)| Some((ms.parse().ok()?, id)))
        .map(Some)
        .ok_or_else(|| bad("before: not a cursor this list answered (next_before)".into()))
}

async fn events_page(
    app: &App,
    caller: &Caller,
    q: &ListQuery,
    f: &Filters,
) -> ApiResult<EventList> {
    Ok(app
        .store
        .list_events(
            caller.id(),
            EventQuery {
                limit: f.limit,
                before: cursor(&q.before)?,
                since_ms: f.since_ms,
                until_ms: f.until_ms,
                event_type: q.event_type.as_deref(),
            },
        )
        .await?)
}

/// `GET /api/events?type=&since=&until=&limit=&before=`.
pub async fn events(
    caller: Caller,
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<Value>> {
    if q.status.is_some() || q.webhook_id.is_some() {
        return Err(bad(
            "status and webhook_id filter deliveries: use /api/deliveries".into(),
        ));
    }
    let f = q.filters()?;
    let page = events_page(&app, &caller, &q, &f).await?;
    Ok(axum::Json(json!({
        "data": page.events.iter().map(|e| json!({
            "id": e.id,
            "type": e.event_type,
            "data": e.data,
            "occurred_at": rfc3339_ms(e.occurred_at_ms),
        })).collect::<Vec<_>>(),
        "next_before": page.next.map(|(ms, id)| format!("{ms}:{id}")),
    })))
}

/// `GET /api/deliveries?status=&type=&webhook_id=&since=&until=&limit=&before=`:
/// with `webhook_id`, that webhook's list (cursor: a delivery id); without,
/// the deliveries of the tenant's events newest first (cursor: an event's).
pub async fn deliveries(
    caller: Caller,
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<Value>> {
    let f = q.filters()?;
    if let Some(w) = &q.webhook_id {
        let id = WebhookId::parse_external(w).map_err(|_| ApiError::not_found("webhook"))?;
        let webhook = super::webhooks::load(&app, &caller, id.as_str()).await?;
        let (list, next) = super::webhooks::filtered_page(&app, &caller, &webhook, &q, &f).await?;
        return Ok(axum::Json(json!({
            "data": list.iter().map(views::delivery).collect::<Vec<_>>(),
            "next_before": next,
        })));
    }
    let page = events_page(&app, &caller, &q, &f).await?;
    let mut data = Vec::new();
    for e in &page.events {
        for d in app.store.event_deliveries(caller.id(), &e.id).await? {
            if q.keeps(&f, &d) {
                data.push(views::delivery(&d));
            }
        }
    }
    Ok(axum::Json(json!({
        "data": data,
        "next_before": page.next.map(|(ms, id)| format!("{ms}:{id}")),
    })))
}
