//! `/api/plugins`: upload a tenant's plugin (a WebAssembly component), list
//! them, show one. An upload is compiled and checked against the world before
//! it is stored; a bad upload leaves the current version in place.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::RawBody;
use super::views;
use crate::App;
use crate::clock::now_ms;
use crate::plugin::PluginError;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Deserialize)]
pub struct PluginPath {
    name: String,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "plugin names are 1 to 64 lowercase letters, digits, '-' or '_'",
        ))
    }
}

pub async fn upload(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<PluginPath>,
    headers: HeaderMap,
    RawBody(bytes): RawBody,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    check_name(&path.name)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/wasm" {
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
    let runtime = app.plugins.clone();
    let component = bytes.to_vec();
    let sha256 = hex::encode(Sha256::digest(&component));
    let sha = sha256.clone();
    let (pre, component) = tokio::task::spawn_blocking(move || {
        let pre = runtime.compile_shared(&sha, &component);
        (pre, component)
    })
    .await
    .map_err(ApiError::internal)?;
    let pre = pre.map_err(|e| match e {
        PluginError::Invalid(msg) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin", msg)
        }
        other => ApiError::internal(other),
    })?;
    let by = if caller.is_admin { "admin" } else { "tenant" };
    let meta = app
        .store
        .put_plugin(caller.id(), &path.name, component, sha256, by, now_ms())
        .await?;
    app.plugins.install(caller.id(), &meta, pre);
    tracing::info!(tenant = %caller.id(), plugin = %meta.name, version = meta.version, "plugin version installed");
    Ok((StatusCode::CREATED, axum::Json(views::plugin(&meta))))
}

pub async fn list(caller: Caller, State(app): State<Arc<App>>) -> ApiResult<axum::Json<Value>> {
    let plugins = app.store.list_plugins(caller.id()).await?;
    Ok(axum::Json(
        json!({"data": plugins.iter().map(views::plugin).collect::<Vec<_>>()}),
    ))
}

pub async fn get(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(path): Path<PluginPath>,
) -> ApiResult<axum::Json<Value>> {
    check_name(&path.name).map_err(|_| ApiError::not_found("plugin"))?;
    let (meta, _) = app
        .store
        .current_plugin(caller.id(), &path.name)
        .await?
        .ok_or_else(|| ApiError::not_found("plugin"))?;
    Ok(axum::Json(views::plugin(&meta)))
}
