//! `/api/plugins`: upload a tenant's plugin (a WebAssembly component), list
//! them, show one with its versions, roll back, and dry-run a candidate.
//! Uploads and rollbacks are compiled and checked against the world before
//! they are stored; a bad upload leaves the current version in place.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{JsonOrDefault, Query, RawBody};
use super::views;
use crate::App;
use crate::clock::now_ms;
use crate::delivery::{Outgoing, shape_with};
use crate::ids::{EventId, TenantId};
use crate::model::{Event, PluginVersion, Webhook};
use crate::plugin::request::{AttemptContext, Shaped};
use crate::plugin::{LoadedPlugin, PluginError, PluginRuntime};
use crate::store::{Page, PluginUpload};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct PluginPath {
    name: String,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if crate::plugin::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "plugin names are 1 to 64 lowercase letters, digits, '-' or '_'",
        ))
    }
}

fn plugin_error(e: PluginError) -> ApiError {
    match e {
        PluginError::Invalid(msg) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin", msg)
        }
        PluginError::Versions(e) => match e.downcast::<crate::store::StoreError>() {
            Ok(e) => (*e).into(),
            Err(e) => ApiError::internal(e),
        },
        other => ApiError::internal(other),
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
}

fn wasm_body(headers: &HeaderMap, bytes: &[u8]) -> Result<(), ApiError> {
    if content_type(headers) != "application/wasm" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the component with Content-Type: application/wasm",
        ));
    }
    if bytes.is_empty() {
        return Err(ApiError::invalid(
            "the body is empty; send the component's bytes",
        ));
    }
    Ok(())
}

fn uploader(caller: &Caller) -> String {
    if caller.is_admin { "admin" } else { "tenant" }.to_owned()
}

/// Makes `upload` the current version and answers `201` with it.
async fn publish(
    app: &Arc<App>,
    caller: &Caller,
    upload: PluginUpload,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let slot = WorkSlot::take(app, caller.id(), false)?;
    // A task of its own: the compile and the write go on (in their turn,
    // holding the tenant's slot) if the client gives up.
    let (app, tenant) = (app.clone(), caller.id().clone());
    let meta = tokio::spawn(async move {
        let _slot = slot;
        let _turn = app
            .plugin_work
            .compiles
            .acquire()
            .await
            .expect("never closed");
        app.plugins
            .publish(app.store.as_ref(), &tenant, upload)
            .await
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(plugin_error)?;
    Ok((StatusCode::CREATED, axum::Json(views::plugin(&meta))))
}

pub async fn upload(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<PluginPath>,
    headers: HeaderMap,
    RawBody(bytes): RawBody,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    check_name(&path.name)?;
    wasm_body(&headers, &bytes)?;
    let upload = PluginUpload {
        name: path.name,
        sha256: hex::encode(Sha256::digest(&bytes)),
        component: bytes.to_vec(),
        uploaded_by: uploader(&caller),
        restored_from: None,
        now_ms: now_ms(),
    };
    publish(&app, &caller, upload).await
}

pub async fn list(caller: Caller, State(app): State<Arc<App>>) -> ApiResult<axum::Json<Value>> {
    let plugins = app.store.list_plugins(caller.id()).await?;
    Ok(axum::Json(
        json!({"data": plugins.iter().map(views::plugin).collect::<Vec<_>>()}),
    ))
}

/// Every version of a plugin, oldest first; the last is the current one
/// (uploads and rollbacks always add the newest). 404 if there is none.
async fn versions(app: &App, caller: &Caller, name: &str) -> ApiResult<Vec<PluginVersion>> {
    check_name(name).map_err(|_| ApiError::not_found("plugin"))?;
    let versions = app.store.plugin_versions(caller.id(), name).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found("plugin"));
    }
    Ok(versions)
}

/// The current version, and every version with this engine's call counts.
pub async fn get(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<PluginPath>,
) -> ApiResult<axum::Json<Value>> {
    let versions = versions(&app, &caller, &path.name).await?;
    let current = versions.last().expect("versions() is never empty");
    let listed: Vec<Value> = versions
        .iter()
        .rev()
        .map(|v| {
            let mut view = views::plugin(v);
            view["current"] = json!(v.version == current.version);
            if let Some(counts) = app.plugins.counts(caller.id(), &v.name, v.version) {
                view["calls"] = json!(counts.calls.load(std::sync::atomic::Ordering::Relaxed));
                view["failures"] =
                    json!(counts.failures.load(std::sync::atomic::Ordering::Relaxed));
                view["last_error"] = json!(*counts.last_error.lock().expect("counts lock"));
            }
            view
        })
        .collect();
    let mut body = views::plugin(current);
    body["versions"] = json!(listed);
    Ok(axum::Json(body))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version to bring back; default: the newest earlier version whose
    /// component differs from the current one.
    version: Option<u32>,
}

/// Brings back an earlier version's component as a new version (so version
/// numbers only grow and every engine converges on the newest).
pub async fn rollback(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<PluginPath>,
    JsonOrDefault(Rollback { version: wanted }): JsonOrDefault<Rollback>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let versions = versions(&app, &caller, &path.name).await?;
    let current = versions.last().expect("versions() is never empty");
    let target = match wanted {
        Some(v) => v,
        None => versions
            .iter()
            .rev()
            .find(|v| v.sha256 != current.sha256)
            .map(|v| v.version)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "nothing_to_roll_back_to",
                    format!(
                        "plugin '{}' has no earlier version with a different component",
                        path.name
                    ),
                )
            })?,
    };
    let (old, component) = app
        .store
        .plugin_version(caller.id(), &path.name, target)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("version {target} of the plugin")))?;
    let upload = PluginUpload {
        name: path.name,
        sha256: old.sha256,
        component,
        uploaded_by: uploader(&caller),
        restored_from: Some(old.version),
        now_ms: now_ms(),
    };
    publish(&app, &caller, upload).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunQuery {
    /// How many recent events to replay (default 10, at most 100).
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunBody {
    /// The candidate component, base64.
    component: String,
    /// Events to run instead of the tenant's recent ones.
    events: Option<Vec<DryRunEvent>>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunEvent {
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    id: Option<String>,
}

const DRY_RUN_DEFAULT: usize = 10;
const DRY_RUN_MAX: usize = 100;
/// Most (event, webhook) pairs one dry run runs, each a call of the
/// candidate and of the current version; past it the answer says
/// `"truncated": true`.
const DRY_RUN_MAX_RUNS: usize = 100;
/// Longest a dry run keeps starting runs (wall clock); past it, truncated.
const DRY_RUN_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);
/// Dry runs in progress at once in one engine (each keeps a core busy).
const DRY_RUNS_AT_ONCE: usize = 1;

/// Plugin work in progress: uploads, rollbacks and dry runs compile a
/// component (seconds of a core for a large one) and dry runs call
/// plugins up to [`DRY_RUN_MAX_RUNS`] times. A tenant has one of them at a
/// time (another is answered `429`); the engine compiles one upload or
/// rollback at a time (the others wait their turn) and runs at most
/// [`DRY_RUNS_AT_ONCE`] dry runs (another is answered `429`), so this work
/// cannot take the cores deliveries need.
pub struct PluginWork {
    busy: std::sync::Mutex<(HashSet<TenantId>, usize)>,
    compiles: tokio::sync::Semaphore,
}

impl Default for PluginWork {
    fn default() -> Self {
        PluginWork {
            busy: Default::default(),
            compiles: tokio::sync::Semaphore::new(1),
        }
    }
}

/// A tenant's place in [`PluginWork`], given back when it is dropped
/// (with the blocking work it goes with, which goes on if the client gives
/// up).
struct WorkSlot {
    app: Arc<App>,
    tenant: TenantId,
    dry_run: bool,
}

impl WorkSlot {
    fn take(app: &Arc<App>, tenant: &TenantId, dry_run: bool) -> Result<WorkSlot, ApiError> {
        let mut busy = app.plugin_work.busy.lock().expect("plugin work lock");
        let refuse = |message: String| {
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "plugin_busy",
                message,
            ))
        };
        if busy.0.contains(tenant) {
            return refuse(
                "a plugin upload, rollback or dry run of this tenant is still running; try again when it ends".into(),
            );
        }
        if dry_run && busy.1 >= DRY_RUNS_AT_ONCE {
            return refuse(format!(
                "{DRY_RUNS_AT_ONCE} dry run(s) are running in this engine, the most it runs at once; try again in a few seconds"
            ));
        }
        busy.0.insert(tenant.clone());
        busy.1 += usize::from(dry_run);
        Ok(WorkSlot {
            app: app.clone(),
            tenant: tenant.clone(),
            dry_run,
        })
    }
}

impl Drop for WorkSlot {
    fn drop(&mut self) {
        let mut busy = self.app.plugin_work.busy.lock().expect("plugin work lock");
        busy.0.remove(&self.tenant);
        busy.1 -= usize::from(self.dry_run);
    }
}

/// Runs a candidate component and the current version side by side over
/// recent (or given) events, for every webhook using the plugin that would
/// get the event (subscribed, and its payload filter passes; the pairs a
/// filter stops are counted in `filtered`). Delivers nothing and stores
/// nothing.
pub async fn dry_run(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<PluginPath>,
    Query(query): Query<DryRunQuery>,
    headers: HeaderMap,
    RawBody(bytes): RawBody,
) -> ApiResult<axum::Json<Value>> {
    check_name(&path.name)?;
    let tenant = caller.id().clone();
    let slot = WorkSlot::take(&app, &tenant, true)?;
    let (component, given, limit) = if content_type(&headers) == "application/json" {
        let body: DryRunBody = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid(format!("the body is not a dry-run request: {e}")))?;
        let component = base64::engine::general_purpose::STANDARD
            .decode(body.component.trim())
            .map_err(|_| ApiError::invalid("component: must be the component's bytes in base64"))?;
        (component, body.events, body.limit.or(query.limit))
    } else {
        wasm_body(&headers, &bytes)?;
        (bytes.to_vec(), None, query.limit)
    };
    let limit = limit.unwrap_or(DRY_RUN_DEFAULT).clamp(1, DRY_RUN_MAX);

    let webhooks: Vec<Webhook> = app
        .store
        .list_webhooks(&tenant)
        .await?
        .into_iter()
        .filter(|w| w.plugin.as_deref() == Some(path.name.as_str()))
        .collect();
    if webhooks.is_empty() {
        return Err(ApiError::invalid(format!(
            "no webhook uses plugin '{}': a dry run needs a webhook's configuration (create one with \"plugin\": \"{}\"; it may be disabled)",
            path.name, path.name
        )));
    }
    let events = match given {
        Some(given) => given_events(&tenant, given, limit)?,
        None => recent_events(&app, &tenant, &webhooks, limit).await?,
    };

    let sha = hex::encode(Sha256::digest(&component));
    let runtime = app.plugins.clone();
    // The slot goes with the compile, which goes on if the client gives up.
    let (candidate_pre, slot) =
        tokio::task::spawn_blocking(move || (runtime.compile(&component), slot))
            .await
            .map_err(ApiError::internal)?;
    let candidate_pre = candidate_pre.map_err(plugin_error)?;
    let candidate_meta = PluginVersion {
        sha256: sha.clone(),
        ..PluginVersion::unstored(&path.name, 0, &uploader(&caller))
    };
    let candidate = app.plugins.load(&tenant, &candidate_meta, candidate_pre);
    let current = match app
        .plugins
        .get(app.store.as_ref(), &tenant, &path.name)
        .await
    {
        // Its own copy: dry runs do not count as the live version's calls.
        Ok(p) => Some(app.plugins.uncounted(&p)),
        Err(PluginError::NotFound(_)) => None,
        Err(e) => return Err(plugin_error(e)),
    };

    let current_version = current.as_ref().map(|p| p.version);
    let runtime = app.plugins.clone();
    let (results, filtered, truncated) = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let now = now_ms();
        let started = std::time::Instant::now();
        let mut truncated = false;
        let mut out = Vec::new();
        // Fan-out decides which webhooks get each event (subscription and
        // payload filter), as for a real trigger; a dry run also shows the
        // disabled ones.
        let hooks = crate::store::with_filters(
            webhooks
                .into_iter()
                .map(|w| Webhook { active: true, ..w })
                .collect(),
        );
        let mut filtered = 0u32;
        for (i, event) in events.iter().enumerate() {
            let (targets, stopped) = crate::store::fan_out(&hooks, &event.event_type, &event.data);
            filtered += stopped;
            for webhook in &targets {
                if out.len() >= DRY_RUN_MAX_RUNS || started.elapsed() > DRY_RUN_BUDGET {
                    truncated = true;
                    break;
                }
                let ctx = AttemptContext::new(&format!("dlv_dryrun{i}"), 1, now);
                let current_view = current
                    .as_ref()
                    .map(|p| outcome(&runtime, p, event, webhook, &ctx, now));
                let candidate_view = outcome(&runtime, &candidate, event, webhook, &ctx, now);
                let changed = current_view.as_ref() != Some(&candidate_view);
                let current_view = current.as_ref().zip(current_view).map(|(p, mut v)| {
                    v["version"] = json!(p.version);
                    v
                });
                out.push(json!({
                    "event_id": event.id,
                    "event_type": event.event_type,
                    "webhook_id": webhook.id,
                    "changed": changed,
                    "current": current_view,
                    "candidate": candidate_view,
                }));
            }
        }
        Ok::<_, ApiError>((out, filtered, truncated))
    })
    .await
    .map_err(ApiError::internal)??;
    let changed = results
        .iter()
        .filter(|r| r["changed"] == json!(true))
        .count();
    Ok(axum::Json(json!({
        "plugin": path.name,
        "candidate_sha256": sha,
        "current_version": current_version,
        "runs": results.len(),
        "changed": changed,
        "filtered": filtered,
        "truncated": truncated,
        "results": results,
    })))
}

fn given_events(
    tenant: &TenantId,
    given: Vec<DryRunEvent>,
    limit: usize,
) -> Result<Vec<Event>, ApiError> {
    if given.len() > DRY_RUN_MAX {
        return Err(ApiError::invalid(format!(
            "events: at most {DRY_RUN_MAX} per dry run"
        )));
    }
    let now = now_ms();
    given
        .into_iter()
        .take(limit)
        .enumerate()
        .map(|(i, e)| {
            super::events::check_event_type(&e.event_type)?;
            crate::payload::check(e.data.get())
                .map_err(|err| ApiError::invalid(format!("events[{i}].data: {err}")))?;
            Ok(Event {
                id: EventId::from_trusted(e.id.unwrap_or_else(|| format!("evt_dryrun{i}"))),
                tenant: tenant.clone(),
                event_type: e.event_type,
                data: e.data,
                occurred_at_ms: now,
            })
        })
        .collect()
}

/// The newest events delivered to the webhooks that use the plugin.
async fn recent_events(
    app: &App,
    tenant: &TenantId,
    webhooks: &[Webhook],
    limit: usize,
) -> Result<Vec<Event>, ApiError> {
    let mut ids = Vec::new();
    for w in webhooks {
        let page = Page {
            limit,
            before: None,
            status: None,
        };
        for d in app.store.list_deliveries(tenant, &w.id, page).await? {
            ids.push(d.event_id);
        }
    }
    // Event ids sort by time; newest first, each once.
    ids.sort_by(|a, b| b.as_str().cmp(a.as_str()));
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    let mut events = Vec::new();
    for id in ids.into_iter().take(limit) {
        if let Some(e) = app.store.get_event(tenant, &id).await? {
            events.push(e);
        }
    }
    if events.is_empty() {
        return Err(ApiError::invalid(
            "the webhooks using this plugin have no recent deliveries: give \"events\" in a JSON body",
        ));
    }
    Ok(events)
}

/// What one version would do with one event for one webhook (the same
/// attempt context for both sides, so only the plugin's changes differ).
fn outcome(
    runtime: &PluginRuntime,
    plugin: &LoadedPlugin,
    event: &Event,
    webhook: &Webhook,
    ctx: &AttemptContext,
    now: u64,
) -> Value {
    match shape_with(runtime, plugin, event, webhook, ctx) {
        Err(error) => json!({"outcome": "error", "error": error.to_string()}),
        Ok(Shaped::Skip(reason)) => json!({"outcome": "skip", "reason": reason}),
        Ok(Shaped::Deliver(req)) => {
            let Outgoing { headers, body } = Outgoing::build(webhook, req, ctx, now);
            let headers: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        json!(String::from_utf8_lossy(v.as_bytes())),
                    )
                })
                .collect();
            let mut request = json!({"method": "POST", "url": webhook.url, "headers": headers});
            match std::str::from_utf8(&body) {
                Ok(text) => request["body"] = json!(text),
                Err(_) => {
                    request["body_base64"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(&body))
                }
            }
            json!({"outcome": "deliver", "request": request})
        }
    }
}
