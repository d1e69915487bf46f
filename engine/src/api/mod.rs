//! The HTTP API (axum on hyper). Tenant routes are mounted twice: at `/api`
//! for a tenant's API key, and at `/api/tenants/{tenant}` for the operator's
//! admin token acting for that tenant. Every error is JSON (see [`error`]).

mod admin;
mod auth;
mod error;
mod events;
mod extract;
mod lists;
mod plugins;
mod replays;
pub mod serve;
mod tenants;
mod views;
mod webhooks;

pub use auth::KnownKeys;
pub use plugins::PluginWork;

use crate::App;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use error::ApiError;
use std::sync::Arc;

pub use auth::hash_key;

pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.settings.max_body_bytes;
    let plugin_limit = app.settings.max_plugin_bytes;
    let tenant_routes = Router::new()
        .route("/events", post(events::trigger).get(lists::events))
        .route("/events/batch", post(events::trigger_batch))
        .route("/deliveries", get(lists::deliveries))
        .route("/events/{event_id}", get(events::get))
        .route("/events/{event_id}/resend", post(events::resend))
        .route("/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/webhooks/stats", get(webhooks::tenant_stats))
        .route("/webhooks/events", get(webhooks::event_types))
        .route(
            "/webhooks/{webhook_id}",
            get(webhooks::get)
                .put(webhooks::update)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/webhooks/{webhook_id}/test", post(webhooks::test))
        .route("/webhooks/{webhook_id}/enable", post(webhooks::enable))
        .route("/webhooks/{webhook_id}/disable", post(webhooks::disable))
        .route("/webhooks/{webhook_id}/secret", get(webhooks::secret))
        .route(
            "/webhooks/{webhook_id}/regenerate-secret",
            post(webhooks::regenerate_secret),
        )
        .route("/webhooks/{webhook_id}/stats", get(webhooks::stats))
        .route(
            "/webhooks/{webhook_id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/webhooks/{webhook_id}/deliveries/{delivery_id}",
            get(webhooks::delivery),
        )
        .route(
            "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
            post(webhooks::retry),
        )
        .route("/webhooks/{webhook_id}/events", get(webhooks::events))
        .route("/webhooks/{webhook_id}/replay", post(replays::create))
        .route(
            "/webhooks/{webhook_id}/replays/{replay_id}",
            get(replays::get),
        )
        .route(
            "/webhooks/{webhook_id}/events/{event_id}/retry",
            post(webhooks::retry_event),
        )
        .route("/plugins", get(plugins::list))
        .route(
            "/plugins/{name}",
            put(plugins::upload)
                .layer(DefaultBodyLimit::max(plugin_limit))
                .get(plugins::get),
        )
        .route("/plugins/{name}/rollback", post(plugins::rollback))
        .route(
            "/plugins/{name}/dry-run",
            post(plugins::dry_run).layer(DefaultBodyLimit::max(plugin_limit * 2)),
        );

    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/admin/jobs", get(admin::jobs))
        .route("/api/admin/jobs/{name}/run", post(admin::run))
        .route("/api/tenants", post(tenants::create).get(tenants::list))
        .route("/api/tenants/{tenant}", get(tenants::get))
        .nest("/api/tenants/{tenant}", tenant_routes.clone())
        .nest("/api", tenant_routes)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// `GET /ready`: 200 once the store takes a write (a small one, waited for
/// until durable), 503 saying why otherwise. `/health` is liveness only.
async fn ready(State(app): State<Arc<App>>) -> axum::response::Response {
    let backend = if app.settings.redis_url.is_some() {
        "redis"
    } else {
        "embedded"
    };
    let probe = app.store.check_writable();
    match tokio::time::timeout(std::time::Duration::from_secs(5), probe).await {
        Ok(Ok(())) => {
            axum::Json(serde_json::json!({"status": "ready", "store": backend})).into_response()
        }
        Ok(Err(e)) => not_ready(backend, format!("the store cannot be written: {e}")),
        Err(_) => not_ready(backend, "the store did not take a write within 5 s".into()),
    }
}

fn not_ready(backend: &str, reason: String) -> axum::response::Response {
    tracing::warn!(%reason, "not ready");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "status": "not_ready",
            "store": backend,
            "reason": reason,
        })),
    )
        .into_response()
}

/// `GET /metrics`; the schedule gauges are counted now. OpenMetrics for a
/// scraper that asks for it (Prometheus does), else the Prometheus text
/// format 0.0.4.
async fn metrics(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let now = crate::clock::now_ms();
    match app.schedule.census(now).await {
        Ok(census) => app.metrics.set_schedule(&census, now),
        Err(e) => tracing::warn!(error = %e, "cannot count the schedule for /metrics"),
    }
    app.metrics
        .breakers_open
        .set(app.deliverer.breakers().open_count() as i64);
    let open_metrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if open_metrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            app.metrics.render(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            app.metrics.render_text(),
        )
    }
}
