//! The plugins directory: `<plugins_dir>/<tenant>/<name>.wasm`. A new or
//! changed file becomes a new version of that tenant's plugin, exactly as an
//! upload would (validated and compiled first; a bad file leaves the current
//! version serving and is logged with the reason).
//!
//! The directory is polled every [`POLL`]; a file is read once its size and
//! modification time were the same on two polls in a row, so a file still
//! being written is not picked up half-way (writing to a temporary name and
//! renaming is still best). A file whose content is already the current
//! version is left alone, so a restart uploads nothing. Engines sharing a
//! Redis and the same directory may each upload a changed file once: the
//! result is an extra version with the same content.

use super::{PluginRuntime, valid_name};
use super::{PluginUpload, Versions};
use crate::Shutdown;
use crate::clock::now_ms;
use crate::ids::TenantId;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const POLL: Duration = Duration::from_secs(1);

#[derive(Clone, PartialEq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

struct Seen {
    stamp: Stamp,
    /// This stamp was acted on (uploaded, already current, or refused).
    done: bool,
}

pub async fn run<V: Versions + ?Sized + 'static>(
    runtime: Arc<PluginRuntime>,
    store: Arc<V>,
    dir: PathBuf,
    mut stop: Shutdown,
) {
    tracing::info!(dir = %dir.display(), "watching the plugins directory");
    let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
    loop {
        for (tenant, name, path, stamp) in files(&dir) {
            let entry = seen.entry(path.clone()).or_insert(Seen {
                stamp: stamp.clone(),
                done: false,
            });
            if entry.stamp != stamp {
                // Changed since the last poll: wait until it settles.
                *entry = Seen { stamp, done: false };
                continue;
            }
            if entry.done {
                continue;
            }
            entry.done = pick_up(&runtime, store.as_ref(), &tenant, &name, &path).await;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Every `<tenant>/<name>.wasm` under `dir` with a valid tenant id and name.
fn files(dir: &Path) -> Vec<(TenantId, String, PathBuf, Stamp)> {
    let mut out = Vec::new();
    let Ok(tenants) = std::fs::read_dir(dir) else {
        return out;
    };
    for tenant_dir in tenants.flatten() {
        let Some(tenant) = tenant_dir
            .file_name()
            .to_str()
            .and_then(|t| TenantId::parse_external(t).ok())
        else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(tenant_dir.path()) else {
            continue;
        };
        for file in entries.flatten() {
            let path = file.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".wasm"))
                .filter(|n| valid_name(n))
                .map(str::to_owned)
            else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            if meta.is_file() {
                let stamp = Stamp {
                    len: meta.len(),
                    modified: meta.modified().ok(),
                };
                out.push((tenant.clone(), name, path, stamp));
            }
        }
    }
    out
}

/// Uploads one settled file if it differs from the current version. True
/// when done with this content (including a refusal); false to try again
/// on the next poll (the store was unreachable).
async fn pick_up<V: Versions + ?Sized>(
    runtime: &Arc<PluginRuntime>,
    store: &V,
    tenant: &TenantId,
    name: &str,
    path: &Path,
) -> bool {
    let file = path.display();
    let Ok(component) = std::fs::read(path) else {
        return false;
    };
    match store.tenant_exists(tenant).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(%file, %tenant, "plugins directory: no such tenant; file ignored");
            return true;
        }
        Err(e) => {
            tracing::warn!(%file, error = %e, "plugins directory: store unavailable");
            return false;
        }
    }
    let sha256 = hex::encode(Sha256::digest(&component));
    // The newest version is the current one.
    match store.versions(tenant, name).await {
        Ok(versions) if versions.last().is_some_and(|v| v.sha256 == sha256) => return true,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%file, error = %e, "plugins directory: store unavailable");
            return false;
        }
    }
    let upload = PluginUpload {
        name: name.to_owned(),
        component,
        sha256,
        uploaded_by: "plugins_dir".into(),
        restored_from: None,
        now_ms: now_ms(),
    };
    match runtime.publish(store, tenant, upload).await {
        Ok(_) => true,
        Err(super::PluginError::Invalid(reason)) => {
            tracing::error!(%file, %tenant, plugin = name, %reason, "plugins directory: file refused; the current version keeps serving");
            true
        }
        Err(e) => {
            tracing::warn!(%file, error = %e, "plugins directory: upload failed; retrying");
            false
        }
    }
}
