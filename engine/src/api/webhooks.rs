//! `/api/webhooks…`: the routes of seed `000` — create, list, get, update,
//! delete, test, enable/disable, secret and regenerate-secret, deliveries
//! (list, one with its attempts, retry), stats and known event types.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::events::{self, check_event_type};
use super::extract::{Json, JsonOrDefault, Query, RawBody};
use super::views;
use crate::App;
use crate::clock::{now_ms, rfc3339_ms};
use crate::delivery::ssrf;
use crate::ids::{DeliveryId, WebhookId};
use crate::model::{Delivery, DeliveryStats, DeliveryStatus, RetiredSecret, Secret, Webhook};
use crate::schedule::policy::RetryPolicy;
use crate::store::walk_deliveries;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;

const MIN_TIMEOUT_MS: u64 = 1_000;
const MAX_TIMEOUT_MS: u64 = 60_000;
/// How long a replaced secret keeps signing unless the caller says otherwise.
const DEFAULT_GRACE_SECONDS: u64 = 24 * 3600;
/// Headers a webhook may not set: the core's, and Standard Webhooks' own.
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Tells "absent" (`None`) from "null" (`Some(None)`) in updates.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Body of create (url and events required) and update (all optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    url: Option<String>,
    events: Option<Vec<String>>,
    active: Option<bool>,
    description: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "present")]
    plugin: Option<Option<String>>,
    plugin_config: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    filter: Option<Option<Value>>,
    /// Deliveries per second; null: no limit.
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<f64>>,
    /// Null: back to the engine's `default_retry_policy`.
    #[serde(default, deserialize_with = "present")]
    retry_policy: Option<Option<RetryPolicy>>,
    /// Null: back to the engine's `default_timeout_ms`.
    #[serde(default, deserialize_with = "present")]
    timeout_ms: Option<Option<u64>>,
    secret: Option<String>,
}

#[derive(Deserialize)]
pub struct WebhookPath {
    pub(super) webhook_id: String,
}

#[derive(Deserialize)]
pub struct DeliveryPath {
    webhook_id: String,
    delivery_id: String,
}

pub(super) async fn load(app: &App, caller: &Caller, id: &str) -> ApiResult<Webhook> {
    let id = WebhookId::parse_external(id).map_err(|_| ApiError::not_found("webhook"))?;
    app.store
        .get_webhook(caller.id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))
}

/// Checks a webhook URL and gives it in the form it is stored and sent to:
/// parsed the WHATWG way (as browsers do), so every spelling of a host
/// (`2130706433`, `0x7f.1`, `0177.0.0.1`, `LOCALHOST.`) is judged as the
/// address it names, and what is stored is what delivery parses.
fn check_url(url: &str, allow: &[ipnet::IpNet]) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid(format!("url: {why}"));
    if url.len() > 2048 {
        return Err(bad("longer than 2048 characters"));
    }
    let mut parsed = url::Url::parse(url).map_err(|e| bad(&format!("not a valid URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must start with http:// or https://"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "must not carry credentials; use the webhook's headers for auth",
        ));
    }
    if parsed.port() == Some(0) {
        return Err(bad("port 0 cannot be connected to"));
    }
    let ip: Option<IpAddr> = match parsed.host() {
        None => return Err(bad("has no host")),
        Some(url::Host::Ipv4(v4)) => Some(v4.into()),
        Some(url::Host::Ipv6(v6)) => Some(v6.into()),
        Some(url::Host::Domain(name)) => {
            check_hostname(name).map_err(|why| bad(&why))?;
            let name = name.strip_suffix('.').unwrap_or(name);
            (name == "localhost" || name.ends_with(".localhost"))
                .then_some(IpAddr::from([127, 0, 0, 1]))
        }
    };
    if let Some(ip) = ip
        && !ssrf::allowed(ip, allow)
    {
        let host = parsed.host_str().unwrap_or_default();
        return Err(bad(&format!(
            "{host} is a private address; the operator can allow its range with allow_private_targets"
        )));
    }
    parsed.set_fragment(None);
    Ok(parsed.into())
}

/// A DNS name as DNS allows it: at most 253 characters, labels of 1 to 63.
fn check_hostname(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 253 {
        return Err("the host name is longer than the 253 characters DNS allows".into());
    }
    if let Some(label) = name.split('.').find(|l| l.is_empty() || l.len() > 63) {
        return Err(if label.is_empty() {
            "the host name has an empty label".into()
        } else {
            format!(
                "the host name has a label longer than the 63 characters DNS allows ({label:.20}...)"
            )
        });
    }
    Ok(())
}

fn check_events(events: &[String]) -> Result<(), ApiError> {
    if events.is_empty() || events.len() > 100 {
        return Err(ApiError::invalid(
            "events: give 1 to 100 event types (\"*\" for all)",
        ));
    }
    for e in events.iter().filter(|e| e.as_str() != "*") {
        let base = e.strip_suffix('*').unwrap_or(e);
        if base.contains('*') || check_event_type(base).is_err() {
            return Err(ApiError::invalid(format!(
                "events: {e:?} is not an event type, a prefix wildcard such as \"invoice.*\", or \"*\""
            )));
        }
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if headers.len() > 50 {
        return Err(ApiError::invalid("headers: at most 50"));
    }
    for (name, value) in headers {
        let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ApiError::invalid(format!("headers: {name:?} is not a valid header name"))
        })?;
        if RESERVED_HEADERS.contains(&parsed.as_str()) {
            return Err(ApiError::invalid(format!(
                "headers: {name:?} is set by the engine and cannot be overridden"
            )));
        }
        HeaderValue::from_str(value).map_err(|_| {
            ApiError::invalid(format!(
                "headers: the value of {name:?} has CR, LF or control characters"
            ))
        })?;
    }
    Ok(())
}

fn check_secret(secret: &str) -> Result<(), ApiError> {
    if !(8..=256).contains(&secret.len())
        || secret.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::invalid(
            "secret: must be 8 to 256 characters without spaces",
        ));
    }
    Ok(())
}

async fn check_plugin(app: &App, caller: &Caller, name: &str) -> Result<(), ApiError> {
    if app.store.current_plugin(caller.id(), name).await?.is_none() {
        return Err(ApiError::invalid(format!(
            "plugin: '{name}' has not been uploaded (PUT /api/plugins/{name})"
        )));
    }
    Ok(())
}

/// Applies `input` to `w`, checking every field given.
async fn apply(app: &App, caller: &Caller, w: &mut Webhook, input: WebhookInput) -> ApiResult<()> {
    if let Some(url) = input.url {
        w.url = check_url(&url, &app.settings.allow_private_targets)?;
    }
    if let Some(events) = input.events {
        check_events(&events)?;
        w.events = events;
    }
    if let Some(active) = input.active {
        w.active = active;
        if active {
            w.disabled_reason = None;
            w.disabled_at_ms = None;
        }
    }
    if let Some(description) = input.description {
        if description.len() > 1000 {
            return Err(ApiError::invalid("description: at most 1000 characters"));
        }
        w.description = description;
    }
    if let Some(headers) = input.headers {
        check_headers(&headers)?;
        w.headers = headers;
    }
    if let Some(metadata) = input.metadata {
        if metadata.len() > 50 {
            return Err(ApiError::invalid("metadata: at most 50 entries"));
        }
        w.metadata = metadata;
    }
    if let Some(plugin) = input.plugin {
        if let Some(name) = &plugin {
            check_plugin(app, caller, name).await?;
        }
        w.plugin = plugin;
    }
    if let Some(config) = input.plugin_config {
        if config.to_string().len() > 64 * 1024 {
            return Err(ApiError::invalid("plugin_config: at most 64 KiB of JSON"));
        }
        w.plugin_config = config;
    }
    if let Some(filter) = input.filter {
        if let Some(spec) = filter.clone() {
            // Compiled now (off the async workers: a regex's DFA may take
            // milliseconds) and kept, so fan-out finds it compiled.
            tokio::task::spawn_blocking(move || crate::filter::Filter::shared(&spec))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| ApiError::invalid(format!("filter: {e}")))?;
        }
        w.filter = filter;
    }
    if let Some(rate) = input.rate_limit {
        if let Some(r) = rate
            && !(0.01..=100_000.0).contains(&r)
        {
            return Err(ApiError::invalid(
                "rate_limit: deliveries per second, 0.01 to 100000 (null for none)",
            ));
        }
        w.rate_limit = rate;
    }
    if let Some(policy) = input.retry_policy {
        if let Some(policy) = &policy {
            policy
                .validate()
                .map_err(|e| ApiError::invalid(format!("retry_policy: {e}")))?;
        }
        w.retry_policy = policy;
    }
    if let Some(timeout) = input.timeout_ms {
        if let Some(timeout) = timeout
            && !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&timeout)
        {
            return Err(ApiError::invalid(format!(
                "timeout_ms: must be {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}"
            )));
        }
        w.timeout_ms = timeout;
    }
    if let Some(secret) = input.secret {
        check_secret(&secret)?;
        w.secret = Secret::new(secret);
    }
    w.updated_at_ms = now_ms();
    Ok(())
}

pub async fn create(
    caller: Caller,
    State(app): State<Arc<App>>,
    Json(input): Json<WebhookInput>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    if input.url.is_none() {
        return Err(ApiError::invalid("url: required"));
    }
    if input.events.is_none() {
        return Err(ApiError::invalid(
            "events: required (a list of event types; \"*\" for all)",
        ));
    }
    let now = now_ms();
    let mut w = Webhook::new(caller.id().clone(), String::new(), Vec::new(), now);
    apply(&app, &caller, &mut w, input).await?;
    // Counted and written under one lock, so concurrent creates cannot pass
    // the cap together (within this engine).
    let _one_at_a_time = app.webhook_creates.lock().await;
    let have = app.store.list_webhooks(caller.id()).await?.len();
    let cap = app.settings.max_webhooks_per_tenant;
    if have >= cap {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit_reached",
            format!(
                "this tenant already has {have} webhooks, the most max_webhooks_per_tenant allows ({cap}); delete one first"
            ),
        ));
    }
    app.store.put_webhook(w.clone()).await?;
    let mut body = views::webhook(&w, &app.deliverer);
    body["secret"] = json!(w.secret.expose());
    Ok((StatusCode::CREATED, axum::Json(body)))
}

/// A list's page size: 1 to 250, 50 when not given.
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=250).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit: must be 1 to 250",
        ));
    }
    Ok(limit)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /webhooks?limit=&after=`: oldest first, `limit` (1 to 250, default
/// 50) at a time; `next_after` is the cursor of the next page (none on the
/// last).
pub async fn list(
    caller: Caller,
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<Value>> {
    let limit = page_limit(q.limit)?;
    let mut hooks = app.store.list_webhooks(caller.id()).await?;
    // Ids sort by creation time.
    hooks.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let start = match &q.after {
        Some(after) => hooks.partition_point(|w| w.id.as_str() <= after.as_str()),
        None => 0,
    };
    let page = &hooks[start..hooks.len().min(start + limit)];
    let next = (start + page.len() < hooks.len())
        .then(|| page.last().map(|w| w.id.clone()))
        .flatten();
    Ok(axum::Json(json!({
        "data": page.iter().map(|w| views::webhook(w, &app.deliverer)).collect::<Vec<_>>(),
        "next_after": next,
    })))
}

pub async fn get(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
) -> ApiResult<axum::Json<Value>> {
    let w = load(&app, &caller, &path.webhook_id).await?;
    Ok(axum::Json(views::webhook(&w, &app.deliverer)))
}

pub async fn update(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
    Json(input): Json<WebhookInput>,
) -> ApiResult<axum::Json<Value>> {
    let mut w = load(&app, &caller, &path.webhook_id).await?;
    let enabling = input.active == Some(true);
    apply(&app, &caller, &mut w, input).await?;
    app.store.put_webhook(w.clone()).await?;
    let mut body = views::webhook(&w, &app.deliverer);
    if enabling {
        body["resumed_deliveries"] = json!(app.deliverer.resume(caller.id(), &w.id).await?);
    }
    Ok(axum::Json(body))
}

pub async fn delete(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
) -> ApiResult<StatusCode> {
    let w = load(&app, &caller, &path.webhook_id).await?;
    // Its pending deliveries (waiting ones too) fail now, not when each
    // would have come due; one created meanwhile fails when it does.
    app.deliverer
        .fail_pending(caller.id(), &w.id, "webhook was deleted")
        .await?;
    app.store.delete_webhook(caller.id(), &w.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_active(
    app: &App,
    caller: &Caller,
    id: &str,
    active: bool,
) -> ApiResult<axum::Json<Value>> {
    let mut w = load(app, caller, id).await?;
    w.active = active;
    w.updated_at_ms = now_ms();
    (w.disabled_reason, w.disabled_at_ms) = if active {
        (None, None)
    } else {
        (Some("disabled by the tenant".into()), Some(w.updated_at_ms))
    };
    app.store.put_webhook(w.clone()).await?;
    let mut body = views::webhook(&w, &app.deliverer);
    if active {
        body["resumed_deliveries"] = json!(app.deliverer.resume(caller.id(), &w.id).await?);
    }
    Ok(axum::Json(body))
}

pub async fn enable(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
) -> ApiResult<axum::Json<Value>> {
    set_active(&app, &caller, &path.webhook_id, true).await
}

pub async fn disable(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
) -> ApiResult<axum::Json<Value>> {
    set_active(&app, &caller, &path.webhook_id, false).await
}

/// `POST /webhooks/{id}/test`: a `webhook.test` event to this webhook only,
/// with the JSON object given as its data (or a small default).
pub async fn test(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let w = load(&app, &caller, &path.webhook_id).await?;
    let data = if body.iter().all(u8::is_ascii_whitespace) {
        RawValue::from_string(json!({"test": true, "webhook_id": w.id}).to_string())
            .expect("valid JSON")
    } else {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("malformed_json", "the body is not UTF-8"))?;
        let raw: Box<RawValue> = serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
        })?;
        crate::payload::check(raw.get())
            .map_err(|e| ApiError::invalid(format!("the test data {e}")))?;
        raw
    };
    let new = events::test_event(&app, caller.id(), &w.id, data);
    events::ingest(&app, new).await
}

pub async fn secret(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
) -> ApiResult<axum::Json<Value>> {
    let w = load(&app, &caller, &path.webhook_id).await?;
    let now = now_ms();
    Ok(axum::Json(json!({
        "secret": w.secret.expose(),
        "previous_secrets_valid_until": w.retired_secrets.iter()
            .filter(|r| r.expires_at_ms > now)
            .map(|r| rfc3339_ms(r.expires_at_ms))
            .collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Regenerate {
    /// Use this secret instead of a generated one.
    secret: Option<String>,
    /// How long the old secret keeps signing (Standard Webhooks receivers
    /// accept either while both signatures are sent).
    grace_period_seconds: Option<u64>,
}

pub async fn regenerate_secret(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
    JsonOrDefault(input): JsonOrDefault<Regenerate>,
) -> ApiResult<axum::Json<Value>> {
    let mut w = load(&app, &caller, &path.webhook_id).await?;
    let grace = input.grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if grace > 7 * 24 * 3600 {
        return Err(ApiError::invalid("grace_period_seconds: at most 7 days"));
    }
    let new = match input.secret {
        Some(s) => {
            check_secret(&s)?;
            Secret::new(s)
        }
        None => Secret::generate(),
    };
    let now = now_ms();
    let old = std::mem::replace(&mut w.secret, new);
    w.retired_secrets.retain(|r| r.expires_at_ms > now);
    if grace > 0 {
        w.retired_secrets.push(RetiredSecret {
            secret: old,
            expires_at_ms: now + grace * 1000,
        });
    }
    w.updated_at_ms = now;
    app.store.put_webhook(w.clone()).await?;
    Ok(axum::Json(json!({
        "secret": w.secret.expose(),
        "previous_secret_valid_until": (grace > 0).then(|| rfc3339_ms(now + grace * 1000)),
    })))
}

pub async fn stats(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
) -> ApiResult<axum::Json<Value>> {
    let w = load(&app, &caller, &path.webhook_id).await?;
    let s = app.store.webhook_stats(caller.id(), &w.id).await?;
    let mut body = views::stats(&s);
    body["webhook_id"] = json!(w.id);
    Ok(axum::Json(body))
}

pub async fn tenant_stats(
    caller: Caller,
    State(app): State<Arc<App>>,
) -> ApiResult<axum::Json<Value>> {
    let hooks = app.store.list_webhooks(caller.id()).await?;
    let active = hooks.iter().filter(|w| w.active).count();
    // The webhooks' own totals (as seed 000's `webhooks` section has them):
    // of the webhooks there are now; `deliveries` counts deleted ones' too.
    let now: std::collections::HashSet<&str> = hooks.iter().map(|w| w.id.as_str()).collect();
    let mut current = DeliveryStats::default();
    let mut s = DeliveryStats::default();
    for (id, stats) in app.store.stats_by_webhook(caller.id()).await? {
        if now.contains(id.as_str()) {
            current.add(&stats);
        }
        s.add(&stats);
    }
    Ok(axum::Json(json!({
        "webhooks": {
            "total": hooks.len(),
            "active": active,
            "inactive": hooks.len() - active,
            "total_deliveries": current.total,
            "succeeded_deliveries": current.succeeded,
            "failed_deliveries": current.failed,
        },
        "deliveries": views::stats(&s),
    })))
}

pub async fn event_types(
    caller: Caller,
    State(app): State<Arc<App>>,
) -> ApiResult<axum::Json<Value>> {
    let types = app.store.event_types(caller.id()).await?;
    Ok(axum::Json(json!({
        "data": types.iter().map(|t| json!({
            "type": t.event_type, "count": t.count, "last_seen": rfc3339_ms(t.last_seen_ms),
        })).collect::<Vec<_>>(),
    })))
}

type DeliveryQuery = super::lists::ListQuery;

pub async fn deliveries(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
    Query(q): Query<DeliveryQuery>,
) -> ApiResult<axum::Json<Value>> {
    let w = load(&app, &caller, &path.webhook_id).await?;
    let (list, next) = filtered_page(&app, &caller, &w, &q, &q.filters()?).await?;
    Ok(axum::Json(json!({
        "data": list.iter().map(views::delivery).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

/// `GET /webhooks/{id}/events?status=&limit=&before=` (seed 002's view):
/// the events sent to this webhook, newest first, each with its delivery
/// here; `status=failed` lists its failed events.
pub async fn events(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<WebhookPath>,
    Query(q): Query<DeliveryQuery>,
) -> ApiResult<axum::Json<Value>> {
    let w = load(&app, &caller, &path.webhook_id).await?;
    let (list, next) = filtered_page(&app, &caller, &w, &q, &q.filters()?).await?;
    let mut data = Vec::with_capacity(list.len());
    for d in &list {
        let event = app.store.get_event(caller.id(), &d.event_id).await?;
        data.push(json!({
            "id": d.event_id,
            "type": d.event_type,
            "data": event.as_ref().map(|e| &e.data),
            "occurred_at": event.as_ref().map(|e| rfc3339_ms(e.occurred_at_ms)),
            "delivery": views::delivery(d),
        }));
    }
    Ok(axum::Json(json!({"data": data, "next_before": next})))
}

/// One page of a webhook's deliveries, newest first, as `q` asks (status,
/// type, time range), and the cursor of the next page. Reads at most
/// `store::EVENT_SCAN` deliveries, so a narrow filter may answer a short
/// page with a cursor.
pub(super) async fn filtered_page(
    app: &App,
    caller: &Caller,
    w: &Webhook,
    q: &DeliveryQuery,
    f: &super::lists::Filters,
) -> ApiResult<(Vec<Delivery>, Option<DeliveryId>)> {
    let from = q.before.as_deref().map(DeliveryId::from_trusted);
    let mut kept = Vec::new();
    let mut scanned = 0;
    let mut past = false;
    let stopped = walk_deliveries(
        app.store.as_ref(),
        caller.id(),
        &w.id,
        from,
        f.status,
        |d| {
            if f.since_ms.is_some_and(|s| d.created_at_ms < s) {
                past = true;
                return ControlFlow::Break(());
            }
            scanned += 1;
            if q.keeps(f, &d) {
                kept.push(d);
            }
            if kept.len() >= f.limit || scanned >= crate::store::EVENT_SCAN {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )
    .await?;
    // Past `since`, nothing older is wanted: no next page.
    Ok((kept, stopped.filter(|_| !past)))
}

async fn load_delivery(
    app: &App,
    caller: &Caller,
    path: &DeliveryPath,
) -> ApiResult<crate::model::Delivery> {
    let w = load(app, caller, &path.webhook_id).await?;
    let id = DeliveryId::parse_external(&path.delivery_id)
        .map_err(|_| ApiError::not_found("delivery"))?;
    app.store
        .get_delivery(caller.id(), &id)
        .await?
        // The store only finds the caller's own deliveries.
        .filter(|d| d.webhook_id == w.id)
        .ok_or_else(|| ApiError::not_found("delivery"))
}

pub async fn delivery(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<DeliveryPath>,
) -> ApiResult<axum::Json<Value>> {
    let d = load_delivery(&app, &caller, &path).await?;
    let attempts = app.store.attempts(caller.id(), &d.id).await?;
    let event = app.store.get_event(caller.id(), &d.event_id).await?;
    let mut body = views::delivery(&d);
    body["attempt_log"] = json!(
        attempts
            .iter()
            .map(|a| views::attempt(a, event.as_ref()))
            .collect::<Vec<_>>()
    );
    Ok(axum::Json(body))
}

/// Manual retry of a delivery that failed or was skipped: pending again, due now.
pub async fn retry(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<DeliveryPath>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let d = load_delivery(&app, &caller, &path).await?;
    retry_one(&app, &caller, d).await
}

#[derive(Deserialize)]
pub struct EventPath {
    webhook_id: String,
    event_id: String,
}

/// `POST /webhooks/{id}/events/{event_id}/retry` (seed 002's route): the
/// retry of this webhook's delivery of that event.
pub async fn retry_event(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<EventPath>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let w = load(&app, &caller, &path.webhook_id).await?;
    let not_found = || ApiError::not_found("a delivery of this event to this webhook");
    let event = crate::ids::EventId::parse_external(&path.event_id).map_err(|_| not_found())?;
    let d = app
        .store
        .event_deliveries(caller.id(), &event)
        .await?
        .into_iter()
        .find(|d| d.webhook_id == w.id)
        .ok_or_else(not_found)?;
    retry_one(&app, &caller, d).await
}

/// Makes a failed or skipped delivery pending again, due now.
async fn retry_one(
    app: &App,
    caller: &Caller,
    d: Delivery,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    if d.status == DeliveryStatus::Pending {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "delivery_pending",
            "the delivery is still pending; it is retried on its schedule",
        ));
    }
    if d.status == DeliveryStatus::Succeeded {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "delivery_succeeded",
            "the delivery already succeeded; trigger the event again to resend it",
        ));
    }
    let d = app
        .store
        .retry_delivery(caller.id(), &d.id, now_ms())
        .await?;
    app.deliverer.wake();
    Ok((StatusCode::ACCEPTED, axum::Json(views::delivery(&d))))
}
