//! Shaping a fan-out's first attempts together. When a trigger hands over
//! several deliveries whose webhooks use the same plugin, the first of their
//! attempts to need its request shapes all of them with one plugin call
//! (`handle-many`; see [`crate::plugin`]), with one timestamp, and each of
//! the others takes its request from that call. The plugin parses the
//! event's data once instead of once per webhook.
//!
//! What may happen twice: nothing here is sent twice. A request taken from
//! here more than `RESHAPE_AFTER` after the call shaped it (it waited for
//! admission to its origin, or for a slot) is shaped again on its own, with
//! the same plugin version, like any other.

use super::Deliverer;
use super::shape::ShapeError;
use crate::ids::DeliveryId;
use crate::model::{Delivery, Event, Webhook};
use crate::plugin::request::{AttemptContext, Shaped};
use crate::plugin::{LoadedPlugin, PluginRuntime};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// One event's first attempts to the webhooks that use one plugin.
pub struct SharedShaping {
    event: Arc<Event>,
    plugin: String,
    targets: Vec<(Arc<Webhook>, DeliveryId)>,
    shaped: OnceCell<Outcome>,
}

/// What the one call gave: the version used and each target's attempt and
/// result (taken by its own attempt), or why no version could be had.
type Outcome = Result<(Arc<LoadedPlugin>, Mutex<Vec<Option<Taken>>>), ShapeError>;

/// What one attempt takes: its context and its result.
pub type Taken = (AttemptContext, Result<Shaped, ShapeError>);

impl SharedShaping {
    /// The shapings for a trigger's fresh deliveries: for each delivery, in
    /// order, the shared shaping it belongs to and its place there, if its
    /// plugin serves more than one of them (none at all when no plugin
    /// does, which allocates nothing). `webhooks[i]` is the webhook of
    /// `deliveries[i]`.
    pub fn group(
        event: &Arc<Event>,
        deliveries: &[Delivery],
        webhooks: &[Arc<Webhook>],
    ) -> Vec<Option<(Arc<SharedShaping>, usize)>> {
        let mut out = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for (i, webhook) in webhooks.iter().enumerate() {
            let Some(plugin) = webhook.plugin.as_deref() else {
                continue;
            };
            if seen.contains(&plugin) {
                continue;
            }
            seen.push(plugin);
            let members: Vec<usize> = (i..webhooks.len())
                .filter(|&j| webhooks[j].plugin.as_deref() == Some(plugin))
                .collect();
            if members.len() < 2 {
                continue;
            }
            let shared = Arc::new(SharedShaping {
                event: event.clone(),
                plugin: plugin.to_owned(),
                targets: members
                    .iter()
                    .map(|&j| (webhooks[j].clone(), deliveries[j].id.clone()))
                    .collect(),
                shaped: OnceCell::new(),
            });
            out.resize(deliveries.len(), None);
            for (place, &j) in members.iter().enumerate() {
                out[j] = Some((shared.clone(), place));
            }
        }
        out
    }

    /// The attempt context and result for the target at `place`, shaping
    /// every target first if no attempt of the group has yet; and the
    /// plugin version used (none if it could not be loaded).
    pub async fn take(
        &self,
        deliverer: &Deliverer,
        place: usize,
    ) -> (Option<Arc<LoadedPlugin>>, Taken) {
        let shaped = self.shaped.get_or_init(|| self.shape(deliverer)).await;
        match shaped {
            Ok((plugin, results)) => {
                let taken = results.lock().expect("shared results lock")[place]
                    .take()
                    .expect("each place is taken once");
                (Some(plugin.clone()), taken)
            }
            Err(error) => {
                let ctx = AttemptContext::new(
                    self.targets[place].1.as_str(),
                    1,
                    deliverer.clock.now_ms(),
                );
                (None, (ctx, Err(error.clone())))
            }
        }
    }

    async fn shape(&self, deliverer: &Deliverer) -> Outcome {
        let tenant = &self.event.tenant;
        let plugin = deliverer
            .plugins
            .get(deliverer.store.as_ref(), tenant, &self.plugin)
            .await
            .map_err(|e| ShapeError::Plugin(e.to_string()))?;
        let now = deliverer.clock.now_ms();
        let contexts: Vec<AttemptContext> = self
            .targets
            .iter()
            .map(|(_, id)| AttemptContext::new(id.as_str(), 1, now))
            .collect();
        // As for one call (see `Deliverer::shape`): inline only once quick.
        let results = if plugin.runs_inline() {
            shape_all(
                &deliverer.plugins,
                &plugin,
                &self.event,
                &self.targets,
                &contexts,
            )
        } else {
            let (runtime, plugin) = (deliverer.plugins.clone(), plugin.clone());
            let (event, targets) = (self.event.clone(), self.targets.clone());
            let contexts = contexts.clone();
            tokio::task::spawn_blocking(move || {
                shape_all(&runtime, &plugin, &event, &targets, &contexts)
            })
            .await
            .map_err(|e| ShapeError::Panicked(e.to_string()))?
        };
        let taken = contexts
            .into_iter()
            .zip(results)
            .map(|(ctx, result)| Some((ctx, result)))
            .collect();
        Ok((plugin, Mutex::new(taken)))
    }
}

/// Calls `plugin` for every target at once and checks each request (see
/// `super::shape::checked`). CPU-bound, like `PluginRuntime::call_many`.
fn shape_all(
    runtime: &PluginRuntime,
    plugin: &LoadedPlugin,
    event: &Event,
    targets: &[(Arc<Webhook>, DeliveryId)],
    contexts: &[AttemptContext],
) -> Vec<Result<Shaped, ShapeError>> {
    let pairs: Vec<_> = targets
        .iter()
        .map(|(webhook, _)| webhook.as_ref())
        .zip(contexts)
        .collect();
    runtime
        .call_many(plugin, event, &pairs)
        .into_iter()
        .map(|result| super::shape::checked(runtime, plugin, result))
        .collect()
}
