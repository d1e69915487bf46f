//! Tenant plugins: compiling and validating uploaded components, keeping the
//! current version of each `(tenant, name)` loaded, and calling a plugin
//! (for one delivery attempt, or a fan-out's first attempts at once) in a
//! sandboxed instance ([`call`]).
//!
//! Components are compiled once per content hash (shared by tenants that
//! upload the same bytes) and cached on disk ([`cache`]). Calls reuse warm
//! instances of the same tenant's same version ([`instances`]); a store that
//! trapped is dropped with its instance, never reused. Each call runs under
//! an epoch deadline (CPU; the epoch advances only while a call runs, see
//! [`epoch`]) and a memory cap. Replacing a version swaps an
//! `Arc`: calls already running keep the version they started with. Calls of
//! a version that has proven quick run on the async worker that needs them,
//! others on blocking threads ([`LoadedPlugin::runs_inline`]). Loaded
//! versions unused for a while, or beyond the configured number, are evicted
//! and load again (from the disk cache) on their next call. A version may be
//! compiled twice if two calls race to load it; the second copy is dropped.

mod bindings;
mod cache;
mod call;
mod epoch;
mod host;
mod instances;
mod loaded;
pub mod request;
mod versions;
mod wasi;
pub mod watch;

use crate::ids::TenantId;
use crate::metrics::{PluginMetrics, SourceLabel};
use crate::model::PluginVersion;
use bindings::PluginPre;
use epoch::{EPOCH_TICK, Ticker};
use host::HostState;
use instances::Budget;
pub use loaded::{CallCounts, LoadedPlugin};
use loaded::{InlinePolicy, Which};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
pub use versions::{PluginUpload, Versions, VersionsError};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Plugin names: 1 to 64 lowercase letters, digits, `-` or `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The upload is not a usable plugin component.
    #[error("{0}")]
    Invalid(String),
    #[error("plugin '{0}' does not exist")]
    NotFound(String),
    /// The plugin ran past its CPU deadline.
    #[error("plugin exceeded its time limit of {0:?}")]
    Timeout(Duration),
    /// The plugin trapped (a bug in it, or it hit the memory cap).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin returned an error result.
    #[error("plugin error: {0}")]
    Failed(String),
    /// Where versions are kept could not answer.
    #[error("{0}")]
    Versions(VersionsError),
}

impl PluginError {
    fn outcome(&self) -> &'static str {
        match self {
            PluginError::Timeout(_) => "timeout",
            PluginError::Trap(_) => "trap",
            PluginError::Failed(_) => "error",
            _ => "unavailable",
        }
    }
}

/// How the plugin runtime is sized and where it keeps compiled components.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// CPU time one call may take.
    pub timeout: Duration,
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Instances that may be live at once (calls in flight plus idle ones).
    pub instances: u32,
    /// Idle instances kept warm across all plugins (0: a fresh instance per call).
    pub idle_instances: usize,
    /// Plugin versions kept loaded at most; the least recently used go first.
    pub max_loaded: usize,
    /// A loaded version unused this long is unloaded.
    pub unload_after: Duration,
    /// Where compiled components are cached across restarts (none: not cached).
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            timeout: Duration::from_millis(50),
            memory_bytes: 64 << 20,
            instances: 1000,
            idle_instances: 256,
            max_loaded: 2000,
            unload_after: Duration::from_secs(600),
            cache_dir: None,
        }
    }
}

type VersionKey = (TenantId, String, u32);

pub struct PluginRuntime {
    engine: Engine,
    ticker: Ticker,
    linker: Linker<HostState>,
    config: PluginConfig,
    deadline_ticks: u64,
    disk: Option<cache::DiskCache>,
    budget: Arc<Budget>,
    metrics: PluginMetrics,
    loaded: RwLock<HashMap<(TenantId, String), Arc<LoadedPlugin>>>,
    /// The newest version other engines announced, so a slow compile of an
    /// older version finishing late is not cached over it.
    announced: RwLock<HashMap<(TenantId, String), u32>>,
    /// Compiled components by content hash, while some loaded version uses
    /// them: tenants uploading the same bytes share one compiled copy.
    compiled: RwLock<HashMap<String, Weak<PluginPre<HostState>>>>,
    counts: RwLock<HashMap<VersionKey, Arc<CallCounts>>>,
}

impl PluginRuntime {
    pub fn new(config: PluginConfig, metrics: PluginMetrics) -> Result<Self, PluginError> {
        let fail = |e: wasmtime::Error| PluginError::Invalid(format!("{e:?}"));
        let n = config.instances;
        let mut pool = PoolingAllocationConfig::default();
        // A Rust component holds a few core instances, memories and tables.
        pool.total_component_instances(n)
            .total_core_instances(n * 4)
            .total_memories(n * 2)
            .total_tables(n * 2)
            .max_memory_size(config.memory_bytes);
        let mut wasm = Config::new();
        // One core per compile: an upload must not starve deliveries.
        wasm.parallel_compilation(false)
            .epoch_interruption(true)
            .memory_reservation(config.memory_bytes as u64)
            .memory_guard_size(64 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(fail)?;
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(fail)?;
        bindings::PluginMany::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(fail)?;
        let disk = match &config.cache_dir {
            Some(dir) => Some(cache::DiskCache::open(dir, &engine).map_err(|e| {
                PluginError::Invalid(format!(
                    "cannot use {} for compiled plugins: {e}",
                    dir.display()
                ))
            })?),
            None => None,
        };

        let ticker = Ticker::start(&engine).map_err(|e| PluginError::Invalid(e.to_string()))?;

        Ok(PluginRuntime {
            engine,
            ticker,
            linker,
            deadline_ticks: (config.timeout.as_micros() / EPOCH_TICK.as_micros()) as u64 + 1,
            budget: Arc::new(Budget::new(
                config.idle_instances,
                metrics.idle_instances.clone(),
            )),
            config,
            disk,
            metrics,
            loaded: RwLock::default(),
            announced: RwLock::default(),
            compiled: RwLock::default(),
            counts: RwLock::default(),
        })
    }

    /// Compiles and validates uploaded bytes: they must be a component that
    /// exports the world's `handle` and imports nothing beyond WASI and the
    /// `log` interface. CPU-heavy: call it from a blocking thread.
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<PluginPre<HostState>>, PluginError> {
        self.link(&self.new_component(bytes)?).map(Arc::new)
    }

    /// Validates and compiles uploaded bytes. Never deserialises: a
    /// precompiled artifact is refused like any other non-component.
    fn new_component(&self, bytes: &[u8]) -> Result<Component, PluginError> {
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            PluginError::Invalid(format!("not a valid WebAssembly component: {}", root(&e)))
        })?;
        self.metrics
            .loads
            .get_or_create(&SourceLabel { source: "compiled" })
            .inc();
        Ok(component)
    }

    fn link(&self, component: &Component) -> Result<PluginPre<HostState>, PluginError> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            PluginError::Invalid(format!(
                "the component needs imports the engine does not grant: {}",
                root(&e)
            ))
        })?;
        let pre = PluginPre::new(pre).map_err(|e| {
            PluginError::Invalid(format!(
                "the component does not implement the wasmhook:plugin world: {}",
                root(&e)
            ))
        })?;
        self.check_exports(&pre).map_err(|e| {
            PluginError::Invalid(format!(
                "the component does not implement the wasmhook:plugin world: {e}"
            ))
        })?;
        Ok(pre)
    }

    /// The compiled form of `bytes` (`sha256` is their hash): shared with
    /// loaded versions using the same bytes, else from the disk cache, else
    /// compiled (and cached). CPU-heavy: call it from a blocking thread.
    pub fn prepare(
        &self,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<Arc<PluginPre<HostState>>, PluginError> {
        if let Some(pre) = self
            .compiled
            .read()
            .expect("plugin map lock")
            .get(sha256)
            .and_then(Weak::upgrade)
        {
            return Ok(pre);
        }
        let cached = self
            .disk
            .as_ref()
            .and_then(|d| d.load(&self.engine, sha256));
        let pre = match cached {
            Some(component) => {
                self.metrics
                    .loads
                    .get_or_create(&SourceLabel { source: "disk" })
                    .inc();
                self.link(&component)?
            }
            None => {
                let component = self.new_component(bytes)?;
                let pre = self.link(&component)?;
                if let Some(disk) = &self.disk {
                    disk.save(sha256, &component);
                }
                pre
            }
        };
        let pre = Arc::new(pre);
        self.compiled
            .write()
            .expect("plugin map lock")
            .insert(sha256.to_owned(), Arc::downgrade(&pre));
        Ok(pre)
    }

    /// A loaded plugin for `meta` that is not (yet) the current one: dry runs
    /// and the developer kit call it directly. Version 0 means a candidate
    /// that was never stored.
    pub fn load(
        &self,
        tenant: &TenantId,
        meta: &PluginVersion,
        pre: Arc<PluginPre<HostState>>,
    ) -> Arc<LoadedPlugin> {
        // A candidate (version 0: not stored) is not counted.
        let counts = (meta.version != 0).then(|| {
            self.counts
                .write()
                .expect("plugin map lock")
                .entry((tenant.clone(), meta.name.clone(), meta.version))
                .or_default()
                .clone()
        });
        Arc::new(LoadedPlugin::new(
            Which {
                name: meta.name.clone(),
                version: meta.version,
                sha256: meta.sha256.clone(),
                tenant: tenant.clone(),
            },
            pre,
            self.budget.clone(),
            counts,
            InlinePolicy::new(self.config.timeout),
            crate::clock::now_ms(),
        ))
    }

    /// Makes `pre` the version of `meta.name` that new calls use.
    pub fn install(
        &self,
        tenant: &TenantId,
        meta: &PluginVersion,
        pre: Arc<PluginPre<HostState>>,
    ) -> Arc<LoadedPlugin> {
        let plugin = self.load(tenant, meta, pre);
        let key = (tenant.clone(), meta.name.clone());
        let announced = self
            .announced
            .read()
            .expect("plugin map lock")
            .get(&key)
            .copied()
            .unwrap_or(0);
        let mut loaded = self.loaded.write().expect("plugin map lock");
        // Two uploads (or a compile and an announcement) finishing out of
        // order must not bring back the older version.
        let newer_known = announced > plugin.version
            || loaded.get(&key).is_some_and(|c| c.version > plugin.version);
        if !newer_known {
            loaded.insert(key.clone(), plugin.clone());
            let excess = loaded.len().saturating_sub(self.config.max_loaded);
            if excess > 0 {
                evict_least_recent(&mut loaded, excess, &key);
            }
            self.metrics.loaded.set(loaded.len() as i64);
        }
        plugin
    }

    /// Validates and compiles a new version, then stores it and makes it
    /// current: the one path for uploads, rollbacks and the plugins
    /// directory. A component that does not compile or link is refused
    /// before anything is stored, so the current version keeps serving.
    pub async fn publish<V: Versions + ?Sized>(
        self: &Arc<Self>,
        store: &V,
        tenant: &TenantId,
        upload: PluginUpload,
    ) -> Result<PluginVersion, PluginError> {
        let this = self.clone();
        let (pre, upload) = tokio::task::spawn_blocking(move || {
            let pre = this.prepare(&upload.sha256, &upload.component);
            (pre, upload)
        })
        .await
        .map_err(|e| PluginError::Trap(e.to_string()))?;
        let pre = pre?;
        let meta = store
            .add(tenant, upload)
            .await
            .map_err(PluginError::Versions)?;
        self.install(tenant, &meta, pre);
        tracing::info!(%tenant, plugin = %meta.name, version = meta.version, by = %meta.uploaded_by, "plugin version installed");
        Ok(meta)
    }

    /// Another engine made `version` current: drop an older loaded version so
    /// the next call loads the new one.
    pub fn forget_older(&self, tenant: &TenantId, name: &str, version: u32) {
        let key = (tenant.clone(), name.to_owned());
        {
            let mut announced = self.announced.write().expect("plugin map lock");
            let newest = announced.entry(key.clone()).or_insert(version);
            *newest = (*newest).max(version);
        }
        let mut loaded = self.loaded.write().expect("plugin map lock");
        if loaded.get(&key).is_some_and(|p| p.version < version) {
            loaded.remove(&key);
            self.metrics.loaded.set(loaded.len() as i64);
        }
    }

    /// Unloads versions unused for `unload_after`; returns how many went.
    /// Their compiled code goes too once no other tenant shares it.
    pub fn unload_idle(&self, now_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(self.config.unload_after.as_millis() as u64);
        let mut loaded = self.loaded.write().expect("plugin map lock");
        let before = loaded.len();
        loaded.retain(|_, p| p.last_used_ms.load(Ordering::Relaxed) >= cutoff);
        let gone = before - loaded.len();
        self.metrics.loaded.set(loaded.len() as i64);
        drop(loaded);
        self.compiled
            .write()
            .expect("plugin map lock")
            .retain(|_, pre| pre.strong_count() > 0);
        gone
    }

    /// Removes compiled plugins from the disk cache that no version in
    /// `keep` (sha256 of the components) uses, and those another engine
    /// build wrote; how many files went.
    pub fn prune_disk_cache(&self, keep: &std::collections::HashSet<String>) -> usize {
        self.disk.as_ref().map_or(0, |disk| disk.prune(keep))
    }

    /// The current version of a tenant's plugin, loaded on first use.
    pub async fn get<V: Versions + ?Sized>(
        self: &Arc<Self>,
        store: &V,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let key = (tenant.clone(), name.to_owned());
        if let Some(p) = self.loaded.read().expect("plugin map lock").get(&key) {
            p.last_used_ms
                .store(crate::clock::now_ms(), Ordering::Relaxed);
            return Ok(p.clone());
        }
        let (meta, bytes) = store
            .current(tenant, name)
            .await
            .map_err(PluginError::Versions)?
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
        let this = self.clone();
        let sha = meta.sha256.clone();
        let pre = tokio::task::spawn_blocking(move || this.prepare(&sha, &bytes))
            .await
            .map_err(|e| PluginError::Trap(e.to_string()))??;
        Ok(self.install(tenant, &meta, pre))
    }

    /// This engine's call counts of one version, if it was ever loaded here.
    pub fn counts(&self, tenant: &TenantId, name: &str, version: u32) -> Option<Arc<CallCounts>> {
        self.counts
            .read()
            .expect("plugin map lock")
            .get(&(tenant.clone(), name.to_owned(), version))
            .cloned()
    }

    /// The same version with its own instances, whose calls count nothing:
    /// a dry run must not show up in the version's counts or metrics.
    pub fn uncounted(&self, plugin: &LoadedPlugin) -> Arc<LoadedPlugin> {
        Arc::new(LoadedPlugin::new(
            Which {
                name: plugin.name.clone(),
                version: plugin.version,
                sha256: plugin.sha256.clone(),
                tenant: plugin.tenant.clone(),
            },
            plugin.pre.clone(),
            self.budget.clone(),
            None,
            InlinePolicy::new(self.config.timeout),
            crate::clock::now_ms(),
        ))
    }
}

/// Unloads the `n` least recently used versions, never `keep` (just installed).
fn evict_least_recent(
    loaded: &mut HashMap<(TenantId, String), Arc<LoadedPlugin>>,
    n: usize,
    keep: &(TenantId, String),
) {
    let mut by_age: Vec<_> = loaded
        .iter()
        .filter(|(k, _)| *k != keep)
        .map(|(k, p)| (p.last_used_ms.load(Ordering::Relaxed), k.clone()))
        .collect();
    by_age.sort_unstable_by_key(|(t, _)| *t);
    for (_, key) in by_age.into_iter().take(n) {
        loaded.remove(&key);
    }
}

/// The innermost cause, which is what a plugin author needs to read.
fn root(e: &wasmtime::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        text = format!("{text}: {cause}");
    }
    text
}
