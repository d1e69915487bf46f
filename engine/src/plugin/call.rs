//! Calling a loaded plugin version on a warm instance, within the time limit
//! and the memory cap, counting each attempt's outcome: one attempt
//! (`handle`), or the first attempts of several webhooks of one event at once
//! (`handle-many`, when the component exports `batch`; the SDK does).
//!
//! What may happen twice: a shared call that fails as a whole (a trap, the
//! time limit, a wrong number of results) is followed by one call per
//! attempt, so each attempt gets its own outcome and one bad webhook fails
//! only its own; log lines the plugin wrote during the failed call may then
//! be written again.

use super::bindings::{self, PluginPre, wasmhook::plugin::types as wit};
use super::host::{HostState, LogGate};
use super::instances::Warm;
use super::loaded::CallTimer;
use super::{LoadedPlugin, PluginError, PluginRuntime, root};
use crate::metrics::OutcomeLabel;
use crate::model::{Event, Webhook};
use crate::plugin::request::{AttemptContext, Shaped};
use std::sync::atomic::Ordering;
use wasmtime::Store as WasmStore;
use wasmtime::StoreLimitsBuilder;

/// Attempts one `handle-many` call shapes at most; a larger fan-out takes
/// several calls, each well within the time limit of one. A version whose
/// shared call runs out of time shares half as many from then on
/// ([`LoadedPlugin::shares_up_to`]).
pub(super) const MAX_SHARED: usize = 16;

impl PluginRuntime {
    /// Runs the plugin for one attempt, counting the outcome. CPU-bound and
    /// bounded by the deadline: call it from a blocking thread unless
    /// [`LoadedPlugin::runs_inline`] says it is quick.
    pub fn call(
        &self,
        plugin: &LoadedPlugin,
        event: &Event,
        webhook: &Webhook,
        ctx: &AttemptContext,
    ) -> Result<Shaped, PluginError> {
        let (event, webhook, delivery) =
            (wit_event(event), wit_webhook(webhook), wit_delivery(ctx));
        let result = self
            .on_instance(plugin, ctx.timestamp, |warm| {
                warm.exports
                    .shape
                    .call_handle(&mut warm.store, &event, &webhook, &delivery)
            })
            .and_then(from_wit);
        self.count(plugin, &result);
        result
    }

    /// [`Self::call`] for several attempts of one event, in order: shared
    /// calls of up to [`LoadedPlugin::shares_up_to`] attempts each where the
    /// component exports `handle-many`, one call per attempt otherwise.
    /// Like `call`, CPU-bound.
    pub fn call_many(
        &self,
        plugin: &LoadedPlugin,
        event: &Event,
        targets: &[(&Webhook, &AttemptContext)],
    ) -> Vec<Result<Shaped, PluginError>> {
        let shared_event = wit_event(event);
        let mut out = Vec::with_capacity(targets.len());
        for chunk in targets.chunks(plugin.shares_up_to()) {
            match self.call_shared(plugin, &shared_event, chunk) {
                Some(results) => {
                    for result in &results {
                        self.count(plugin, result);
                    }
                    out.extend(results);
                }
                None => out.extend(
                    chunk
                        .iter()
                        .map(|(webhook, ctx)| self.call(plugin, event, webhook, ctx)),
                ),
            }
        }
        out
    }

    /// One `handle-many` call for `targets`; none when there is only one,
    /// the component does not export it, or the call failed as a whole.
    fn call_shared(
        &self,
        plugin: &LoadedPlugin,
        event: &wit::Event,
        targets: &[(&Webhook, &AttemptContext)],
    ) -> Option<Vec<Result<Shaped, PluginError>>> {
        if targets.len() < 2 || !plugin.pre.shares_calls() {
            return None;
        }
        let items: Vec<_> = targets
            .iter()
            .map(|(webhook, ctx)| (wit_webhook(webhook), wit_delivery(ctx)))
            .collect();
        let called = self.on_instance(plugin, targets[0].1.timestamp, |warm| {
            match &warm.exports.batch {
                Some(batch) => Ok(Some(batch.call_handle_many(
                    &mut warm.store,
                    event,
                    &items,
                )?)),
                None => Ok(None),
            }
        });
        if let Err(PluginError::Timeout(_)) = called {
            plugin.shared_call_timed_out();
        }
        let results = called.ok()??;
        if results.len() != targets.len() {
            return None;
        }
        if plugin.counts.is_some() {
            self.metrics.shared_calls.inc();
        }
        Some(results.into_iter().map(from_wit).collect())
    }

    /// Runs `f` on a warm instance of `plugin` (a new one when none is
    /// idle), with the guest's clocks at `timestamp` and the deadline set;
    /// the instance is kept for the next call unless the call trapped.
    fn on_instance<R>(
        &self,
        plugin: &LoadedPlugin,
        timestamp: u64,
        f: impl FnOnce(&mut Warm) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        // Guest code runs from here (instantiating runs some too): the
        // epoch, which the deadline counts, must advance.
        let _ticking = self.ticker.hold();
        let mut warm = match plugin.idle.take(&self.budget) {
            Some(warm) => warm,
            None => self.instantiate(plugin)?,
        };
        warm.store.set_epoch_deadline(self.deadline_ticks);
        warm.store.data_mut().begin_call(timestamp);
        // Only the guest's run counts towards running inline: creating an
        // instance is the host's one-off cost, not the plugin's speed.
        let timer = CallTimer::start();
        let result = f(&mut warm);
        plugin.note_duration(timer.took());
        warm.store.data_mut().end_call();
        // After a trap (or a timeout) the store refuses further calls: drop it.
        let result = result.map_err(|e| self.trap(e))?;
        warm.calls += 1;
        plugin.idle.put(warm, &self.budget);
        Ok(result)
    }

    pub(super) fn instantiate(&self, plugin: &LoadedPlugin) -> Result<Warm, PluginError> {
        let state = self.host_state(plugin.tenant.as_str(), &plugin.label(), plugin.gate.clone());
        self.instance_of(&plugin.pre, state)
    }

    /// Instantiates a just-linked component once and loads its exports, so
    /// one whose functions do not have the world's types is refused when it
    /// is uploaded rather than at its first delivery.
    pub(super) fn check_exports(&self, pre: &PluginPre<HostState>) -> Result<(), PluginError> {
        let _ticking = self.ticker.hold();
        let mut store = self.store_for(self.host_state("", "upload-check", Default::default()));
        let instance = pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| PluginError::Invalid(format!("instantiating it failed: {}", root(&e))))?;
        pre.exports(&mut store, &instance).map_err(|e| {
            PluginError::Invalid(format!(
                "its `handle` (or `handle-many`) does not have the types wit/plugin.wit gives: {}",
                root(&e)
            ))
        })?;
        Ok(())
    }

    fn host_state(&self, tenant: &str, label: &str, gate: std::sync::Arc<LogGate>) -> HostState {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.config.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        HostState::new(limits, tenant, label, gate)
    }

    /// A store for one instance: the memory cap, and the deadline set.
    fn store_for(&self, state: HostState) -> WasmStore<HostState> {
        let mut store = WasmStore::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks);
        store
    }

    fn instance_of(
        &self,
        pre: &PluginPre<HostState>,
        state: HostState,
    ) -> Result<Warm, PluginError> {
        let mut store = self.store_for(state);
        let instance = pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| self.trap(e))?;
        let exports = pre
            .exports(&mut store, &instance)
            .map_err(|e| self.trap(e))?;
        Ok(Warm {
            store,
            exports,
            calls: 0,
        })
    }

    fn count(&self, plugin: &LoadedPlugin, result: &Result<Shaped, PluginError>) {
        let outcome = match result {
            Ok(Shaped::Deliver(_)) => "deliver",
            Ok(Shaped::Skip(_)) => "skip",
            Err(e) => e.outcome(),
        };
        if let Some(counts) = &plugin.counts {
            self.metrics
                .calls
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
            counts.calls.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = result {
                counts.failed(e.to_string());
            }
        }
    }

    /// The host refused what a call returned (see `delivery::shape::check`):
    /// counted as a failure of that version (and as a call by `call`).
    pub fn count_invalid(&self, plugin: &LoadedPlugin, error: &str) {
        if let Some(counts) = &plugin.counts {
            self.metrics
                .calls
                .get_or_create(&OutcomeLabel { outcome: "invalid" })
                .inc();
            counts.failed(error.to_owned());
        }
    }

    fn trap(&self, e: wasmtime::Error) -> PluginError {
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return PluginError::Timeout(self.config.timeout);
        }
        PluginError::Trap(root(&e))
    }
}

fn from_wit(result: Result<wit::Decision, wit::PluginError>) -> Result<Shaped, PluginError> {
    result
        .map(bindings::from_wit)
        .map_err(|e| PluginError::Failed(e.message))
}

fn wit_event(event: &Event) -> wit::Event {
    wit::Event {
        id: event.id.to_string(),
        event_type: event.event_type.clone(),
        tenant: event.tenant.to_string(),
        occurred_at: crate::clock::rfc3339_ms(event.occurred_at_ms),
        occurred_at_ms: event.occurred_at_ms,
        data: event.data.get().to_owned(),
    }
}

fn wit_webhook(webhook: &Webhook) -> wit::Webhook {
    wit::Webhook {
        id: webhook.id.to_string(),
        url: webhook.url.clone(),
        config: serde_json::to_string(&webhook.plugin_config).expect("JSON values serialise"),
        metadata: webhook
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn wit_delivery(ctx: &AttemptContext) -> wit::Delivery {
    wit::Delivery {
        id: ctx.delivery_id.clone(),
        attempt: ctx.attempt,
        timestamp: ctx.timestamp,
        time: ctx.time(),
    }
}
