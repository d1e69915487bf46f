//! `/api/tenants`: the operator creates and lists tenants.

use super::auth::{Admin, hash_key, new_api_key};
use super::error::{ApiError, ApiResult};
use super::extract::Json;
use crate::App;
use crate::clock::{now_ms, rfc3339_ms};
use crate::ids::TenantId;
use crate::model::Tenant;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    id: Option<String>,
    name: String,
}

fn view(t: &Tenant) -> Value {
    json!({"id": t.id, "name": t.name, "created_at": rfc3339_ms(t.created_at_ms)})
}

pub async fn create(
    _: Admin,
    State(app): State<Arc<App>>,
    Json(input): Json<CreateTenant>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let id = match input.id {
        Some(id) => {
            TenantId::parse_external(&id).map_err(|e| ApiError::invalid(format!("id: {e}")))?
        }
        None => TenantId::generate(),
    };
    let name = input.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::invalid("name: must be 1 to 200 characters"));
    }
    let tenant = Tenant {
        id,
        name: name.to_owned(),
        created_at_ms: now_ms(),
    };
    let key = new_api_key();
    app.store
        .create_tenant(tenant.clone(), hash_key(&key))
        .await?;
    let mut body = view(&tenant);
    body["api_key"] = json!(key);
    Ok((StatusCode::CREATED, axum::Json(body)))
}

pub async fn list(_: Admin, State(app): State<Arc<App>>) -> ApiResult<axum::Json<Value>> {
    let tenants = app.store.list_tenants().await?;
    Ok(axum::Json(
        json!({"data": tenants.iter().map(view).collect::<Vec<_>>()}),
    ))
}

pub async fn get(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = TenantId::parse_external(&id).map_err(|_| ApiError::not_found("tenant"))?;
    let tenant = app
        .store
        .get_tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(axum::Json(view(&tenant)))
}
