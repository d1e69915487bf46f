//! What a plugin instance's store holds: a WASI context that grants nothing
//! (no files, sockets, environment or arguments; clocks and random are WASI's
//! defaults), the memory cap, and who the plugin is, for its log lines.

use super::bindings::{Level, LogHost, TypesHost};
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Longest plugin log message kept; the rest is cut.
const MAX_LOG_BYTES: usize = 2048;
/// Log lines one call may write; the rest are dropped.
const MAX_LOG_LINES: u32 = 32;

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    tenant: String,
    plugin: String,
    log_lines: u32,
}

impl HostState {
    pub fn new(limits: StoreLimits, tenant: &str, plugin: &str) -> Self {
        HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            log_lines: 0,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl TypesHost for HostState {}

impl LogHost for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let (tenant, plugin) = (self.tenant.as_str(), self.plugin.as_str());
        match level {
            Level::Trace => tracing::trace!(tenant, plugin, "{message}"),
            Level::Debug => tracing::debug!(tenant, plugin, "{message}"),
            Level::Info => tracing::info!(tenant, plugin, "{message}"),
            Level::Warn => tracing::warn!(tenant, plugin, "{message}"),
            Level::Error => tracing::error!(tenant, plugin, "{message}"),
        }
    }
}
