//! The webhooks each tenant's fan-out uses, filters compiled, with the
//! version they are of (see [`WebhookCache`]).

use super::fan_out::CachedHook;
use crate::ids::TenantId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Each tenant's webhooks for fan-out, filters compiled, with the version
/// they are of. The Redis store's versions are Redis's (checked inside the
/// trigger script). The embedded store's are kept here: its writer calls
/// [`WebhookCache::changing`] as it applies a change of a tenant's webhooks
/// and [`WebhookCache::changed`] once that is committed, and checks a
/// trigger's version as it writes it; a list read from committed state is
/// remembered only while no change is applied but uncommitted, so the
/// writer never fans out and never sees a stale list.
#[derive(Default)]
pub struct WebhookCache(Mutex<HashMap<TenantId, Cached>>);

#[derive(Default)]
struct Cached {
    version: i64,
    /// Changes applied by the writer and not yet committed.
    uncommitted: u32,
    hooks: Option<Arc<Vec<CachedHook>>>,
}

/// A tenant's webhooks for fan-out, and the version they were read at.
pub type VersionedHooks = (i64, Arc<Vec<CachedHook>>);

impl WebhookCache {
    pub fn get(&self, tenant: &TenantId) -> Option<VersionedHooks> {
        let map = self.0.lock().expect("webhook cache lock");
        let cached = map.get(tenant)?;
        Some((cached.version, cached.hooks.clone()?))
    }

    /// The tenant's version, and whether a change of it is applied but not
    /// yet committed.
    pub fn version(&self, tenant: &TenantId) -> (i64, bool) {
        let map = self.0.lock().expect("webhook cache lock");
        map.get(tenant)
            .map_or((0, false), |c| (c.version, c.uncommitted > 0))
    }

    /// Remembers `hooks` as the tenant's at `version` (Redis: whatever the
    /// version held before).
    pub fn fill(&self, tenant: &TenantId, version: i64, hooks: Vec<CachedHook>) -> VersionedHooks {
        let hooks = Arc::new(hooks);
        let mut map = self.0.lock().expect("webhook cache lock");
        let cached = map.entry(tenant.clone()).or_default();
        cached.version = version;
        cached.hooks = Some(hooks.clone());
        (version, hooks)
    }

    /// Remembers `hooks` as the tenant's at `version` if that is still its
    /// version (embedded); gives them back either way.
    pub fn fill_if(
        &self,
        tenant: &TenantId,
        version: i64,
        hooks: Vec<CachedHook>,
    ) -> VersionedHooks {
        let hooks = Arc::new(hooks);
        let mut map = self.0.lock().expect("webhook cache lock");
        let cached = map.entry(tenant.clone()).or_default();
        if cached.version == version && cached.uncommitted == 0 {
            cached.hooks = Some(hooks.clone());
        }
        (version, hooks)
    }

    /// The writer applied a change of the tenant's webhooks.
    pub fn changing(&self, tenant: &TenantId) {
        let mut map = self.0.lock().expect("webhook cache lock");
        let cached = map.entry(tenant.clone()).or_default();
        cached.version += 1;
        cached.uncommitted += 1;
        cached.hooks = None;
    }

    /// A change [`WebhookCache::changing`] announced is committed (or its
    /// commit failed: then the writer's state is the committed one again).
    pub fn changed(&self, tenant: &TenantId) {
        let mut map = self.0.lock().expect("webhook cache lock");
        let cached = map.entry(tenant.clone()).or_default();
        cached.version += 1;
        cached.uncommitted = cached.uncommitted.saturating_sub(1);
        cached.hooks = None;
    }

    /// Drops the tenant's list (Redis: it changed, here or elsewhere).
    pub fn forget(&self, tenant: &TenantId) {
        if let Some(cached) = self.0.lock().expect("webhook cache lock").get_mut(tenant) {
            cached.hooks = None;
        }
    }
}
