//! Who is calling. Tenant routes take `Authorization: Bearer <api key>`; the
//! same routes under `/api/tenants/{tenant}/…` take the operator's admin token
//! and act for that tenant. API keys are stored as SHA-256 hashes only.

use super::error::ApiError;
use crate::App;
use crate::ids::TenantId;
use crate::model::Tenant;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::StatusCode;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many API keys [`KnownKeys`] remembers before it starts over.
const KNOWN_KEYS_MAX: usize = 100_000;

/// The tenant of each API key (by its hash) seen before. Keys and tenants are
/// never changed or removed once created, so an entry cannot go stale; a route
/// that revokes a key or removes a tenant would have to drop its entries here
/// (and, with Redis, on every engine).
#[derive(Default)]
pub struct KnownKeys(Mutex<HashMap<String, Tenant>>);

impl KnownKeys {
    fn get(&self, hash: &str) -> Option<Tenant> {
        self.0.lock().expect("key cache lock").get(hash).cloned()
    }

    fn remember(&self, hash: String, tenant: &Tenant) {
        let mut known = self.0.lock().expect("key cache lock");
        if known.len() >= KNOWN_KEYS_MAX {
            known.clear();
        }
        known.insert(hash, tenant.clone());
    }
}

/// The tenant a request acts for.
pub struct Caller {
    pub tenant: Tenant,
    pub is_admin: bool,
}

impl Caller {
    pub fn id(&self) -> &TenantId {
        &self.tenant.id
    }
}

/// The operator (admin token) is calling.
pub struct Admin;

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new tenant API key: `whk_` + 32 random bytes in hex.
pub fn new_api_key() -> String {
    format!("whk_{}", hex::encode(rand::random::<[u8; 32]>()))
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing header Authorization: Bearer <key>"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <key>'"))
}

fn check_admin(app: &App, parts: &Parts) -> Result<(), ApiError> {
    let Some(expected) = &app.settings.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is off: start the engine with WASMHOOK_ADMIN_TOKEN set",
        ));
    };
    let given = bearer(parts)?;
    // Comparing digests keeps the comparison's timing independent of the token.
    if Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid admin token"))
    }
}

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        check_admin(app, parts).map(|()| Admin)
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, app)
            .await
            .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))?;
        let path_tenant = params
            .iter()
            .find(|(k, _)| *k == "tenant")
            .map(|(_, v)| v.to_owned());
        if let Some(tenant) = path_tenant {
            check_admin(app, parts)?;
            let id =
                TenantId::parse_external(&tenant).map_err(|_| ApiError::not_found("tenant"))?;
            let tenant = app
                .store
                .get_tenant(&id)
                .await?
                .ok_or_else(|| ApiError::not_found("tenant"))?;
            return Ok(Caller {
                tenant,
                is_admin: true,
            });
        }
        let hash = hash_key(bearer(parts)?);
        if let Some(tenant) = app.known_keys.get(&hash) {
            return Ok(Caller {
                tenant,
                is_admin: false,
            });
        }
        let tenant_id = app.store.tenant_by_key_hash(&hash).await?.ok_or_else(|| {
            ApiError::unauthorized(
                "invalid API key (the admin token acts for a tenant under /api/tenants/{tenant}/…)",
            )
        })?;
        let tenant = app
            .store
            .get_tenant(&tenant_id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
        app.known_keys.remember(hash, &tenant);
        Ok(Caller {
            tenant,
            is_admin: false,
        })
    }
}
