//! Tenant plugins: compiling and validating uploaded components, keeping the
//! current version of each `(tenant, name)` loaded, and calling a plugin for
//! one delivery attempt in a fresh, sandboxed instance.
//!
//! Every call gets a new store and instance from a pre-instantiated component
//! (the pooling allocator makes that a few microseconds), so no state leaks
//! between calls or tenants, and a store that trapped is dropped with its
//! instance, never reused. Each call runs under an epoch deadline (CPU) and a
//! memory cap. Replacing a version swaps an `Arc`: calls already running keep
//! the version they started with.

mod bindings;
mod host;

use crate::delivery::request::{
    AttemptContext, KeyFormat, OutRequest, Shaped, SigEncoding, SignSpec, SignedContent,
};
use crate::ids::TenantId;
use crate::model::{Event, PluginVersion, Webhook};
use crate::store::{Store, StoreError};
use bindings::{PluginPre, wasmhook::plugin::types as wit};
use host::HostState;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store as WasmStore,
    StoreLimitsBuilder,
};

/// How often the epoch advances; a call's deadline is counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(2);

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One compiled, validated plugin version, ready to instantiate.
pub struct LoadedPlugin {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    pre: PluginPre<HostState>,
}

impl LoadedPlugin {
    /// `name@version`, as recorded on attempts.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    deadline_ticks: u64,
    timeout: Duration,
    memory_bytes: usize,
    loaded: RwLock<HashMap<(TenantId, String), Arc<LoadedPlugin>>>,
    /// The newest version other engines announced, so a slow compile of an
    /// older version finishing late is not cached over it.
    announced: RwLock<HashMap<(TenantId, String), u32>>,
    /// Compiled components by content hash: tenants uploading the same bytes
    /// share one compiled copy (code memory is most of a plugin's footprint).
    compiled: RwLock<HashMap<String, PluginPre<HostState>>>,
}

impl PluginRuntime {
    pub fn new(timeout: Duration, memory_bytes: usize) -> Result<Self, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1000)
            .total_core_instances(1000)
            .total_memories(1000)
            .total_tables(1000)
            .max_memory_size(memory_bytes);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .memory_reservation(memory_bytes as u64)
            .memory_guard_size(64 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PluginError::Invalid(format!("{e:?}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Invalid(format!("{e:?}")))?;
        bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Invalid(format!("{e:?}")))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasmhook-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PluginError::Invalid(e.to_string()))?;

        Ok(PluginRuntime {
            engine,
            linker,
            deadline_ticks: (timeout.as_micros() / EPOCH_TICK.as_micros()) as u64 + 1,
            timeout,
            memory_bytes,
            loaded: RwLock::default(),
            announced: RwLock::default(),
            compiled: RwLock::default(),
        })
    }

    /// Compiles and validates a component: it must export the world's
    /// `handle` and import nothing beyond WASI and the `log` interface.
    /// CPU-heavy: call it from a blocking thread.
    pub fn compile(&self, bytes: &[u8]) -> Result<PluginPre<HostState>, PluginError> {
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            PluginError::Invalid(format!("not a valid WebAssembly component: {}", root(&e)))
        })?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            PluginError::Invalid(format!(
                "the component needs imports the engine does not grant: {}",
                root(&e)
            ))
        })?;
        PluginPre::new(pre).map_err(|e| {
            PluginError::Invalid(format!(
                "the component does not implement the wasmhook:plugin world: {}",
                root(&e)
            ))
        })
    }

    /// [`PluginRuntime::compile`], reusing an earlier compilation of the same
    /// bytes (`sha256` is their hash).
    pub fn compile_shared(
        &self,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<PluginPre<HostState>, PluginError> {
        if let Some(pre) = self.compiled.read().expect("plugin map lock").get(sha256) {
            return Ok(pre.clone());
        }
        let pre = self.compile(bytes)?;
        self.compiled
            .write()
            .expect("plugin map lock")
            .insert(sha256.to_owned(), pre.clone());
        Ok(pre)
    }

    /// Makes `pre` the version of `meta.name` that new calls use.
    pub fn install(
        &self,
        tenant: &TenantId,
        meta: &PluginVersion,
        pre: PluginPre<HostState>,
    ) -> Arc<LoadedPlugin> {
        let plugin = Arc::new(LoadedPlugin {
            name: meta.name.clone(),
            version: meta.version,
            sha256: meta.sha256.clone(),
            pre,
        });
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
            loaded.insert(key, plugin.clone());
        }
        plugin
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
        }
    }

    /// The current version of a tenant's plugin, compiled on first use.
    pub async fn get(
        self: &Arc<Self>,
        store: &dyn Store,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let key = (tenant.clone(), name.to_owned());
        if let Some(p) = self.loaded.read().expect("plugin map lock").get(&key) {
            return Ok(p.clone());
        }
        let (meta, bytes) = store
            .current_plugin(tenant, name)
            .await?
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
        let this = self.clone();
        let sha = meta.sha256.clone();
        let pre = tokio::task::spawn_blocking(move || this.compile_shared(&sha, &bytes))
            .await
            .map_err(|e| PluginError::Trap(e.to_string()))??;
        Ok(self.install(tenant, &meta, pre))
    }

    /// Runs the plugin for one attempt. CPU-bound and bounded by the deadline:
    /// call it from a blocking thread.
    pub fn call(
        &self,
        plugin: &LoadedPlugin,
        event: &Event,
        webhook: &Webhook,
        ctx: &AttemptContext,
    ) -> Result<Shaped, PluginError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState::new(limits, event.tenant.as_str(), &plugin.name);
        let mut store = WasmStore::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks);
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.trap(e))?;

        let wit_event = wit::Event {
            id: event.id.to_string(),
            event_type: event.event_type.clone(),
            tenant: event.tenant.to_string(),
            occurred_at: crate::clock::rfc3339_ms(event.occurred_at_ms),
            occurred_at_ms: event.occurred_at_ms,
            data: event.data.get().to_owned(),
        };
        let wit_webhook = wit::Webhook {
            id: webhook.id.to_string(),
            url: webhook.url.clone(),
            config: webhook.plugin_config.to_string(),
            metadata: webhook
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let wit_delivery = wit::Delivery {
            id: ctx.delivery_id.clone(),
            attempt: ctx.attempt,
            timestamp: ctx.timestamp,
            time: ctx.time.clone(),
        };
        let result = instance
            .call_handle(&mut store, &wit_event, &wit_webhook, &wit_delivery)
            .map_err(|e| self.trap(e))?;
        match result {
            Ok(decision) => Ok(from_wit(decision)),
            Err(e) => Err(PluginError::Failed(e.message)),
        }
    }

    fn trap(&self, e: wasmtime::Error) -> PluginError {
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return PluginError::Timeout(self.timeout);
        }
        PluginError::Trap(root(&e))
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

fn from_wit(decision: wit::Decision) -> Shaped {
    match decision {
        wit::Decision::Skip(reason) => Shaped::Skip(reason),
        wit::Decision::Deliver(r) => Shaped::Deliver(OutRequest {
            body: r.body,
            content_type: r.content_type,
            headers: r.headers,
            signature: r.signature.map(|s| SignSpec {
                header: s.header,
                prefix: s.prefix,
                encoding: match s.encoding {
                    wit::Encoding::Hex => SigEncoding::Hex,
                    wit::Encoding::Base64 => SigEncoding::Base64,
                },
                key: match s.key {
                    wit::KeyFormat::Utf8 => KeyFormat::Utf8,
                    wit::KeyFormat::StandardWebhooks => KeyFormat::StandardWebhooks,
                },
                content: match s.content {
                    wit::SignedContent::Body => SignedContent::Body,
                    wit::SignedContent::Bytes(b) => SignedContent::Bytes(b),
                    wit::SignedContent::StandardWebhooks => SignedContent::StandardWebhooks,
                },
                rotation_separator: s.rotation_separator,
            }),
        }),
    }
}
