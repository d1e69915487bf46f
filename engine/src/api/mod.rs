//! The HTTP API (axum on hyper). Tenant routes are mounted twice: at `/api`
//! for a tenant's API key, and at `/api/tenants/{tenant}` for the operator's
//! admin token acting for that tenant. Every error is JSON (see [`error`]).

mod auth;
mod error;
mod events;
mod extract;
mod plugins;
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
        .route("/events", post(events::trigger))
        .route("/events/batch", post(events::trigger_batch))
        .route("/events/{event_id}", get(events::get))
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
        .route("/metrics", get(metrics))
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

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}
