//! Fan-out: which of a tenant's webhooks get an event (active, subscribed,
//! and their payload filter passes), the webhooks with their filters
//! compiled, and where fan-outs that evaluate filters run ([`FanOutGate`]).
//!
//! Owns: the order fan-out sees webhooks in (the tenant's, as read), and
//! the bound on where filter work happens: never on the async workers or a
//! store's writer. Nothing here writes; a fan-out may be made twice (a
//! trigger planned again after its webhooks changed).

use super::Filter;
use crate::ids::{TenantId, WebhookId};
use crate::model::Webhook;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A webhook with its payload filter compiled (shared with every webhook
/// that has the same filter). Shared, so fan-out can hand each new delivery
/// its webhook without a copy or a read.
pub type CachedHook = (Arc<Webhook>, Option<Arc<Filter>>);

/// The webhooks fan-out would look at for an event: active and subscribed
/// (or the one a test event names).
fn subscribed<'a>(
    hooks: &'a [CachedHook],
    event_type: &'a str,
    only_webhook: Option<&'a WebhookId>,
) -> impl Iterator<Item = &'a CachedHook> + 'a {
    hooks.iter().filter(move |(w, _)| match only_webhook {
        Some(only) => &w.id == only,
        None => w.active && w.subscribes_to(event_type),
    })
}

/// Which of a tenant's webhooks get an event: active, subscribed, and
/// whose payload filter matches. Returns them and how many a filter turned
/// away. The data is parsed at most once, and only if a filter needs it.
/// Data accepted at ingest always parses (see [`crate::payload`]); data
/// that did not would match no filter.
pub fn fan_out(
    hooks: &[CachedHook],
    event_type: &str,
    data: &RawValue,
) -> (Vec<Arc<Webhook>>, u32) {
    let mut parsed: Option<Option<serde_json::Value>> = None;
    let mut filtered = 0u32;
    let mut targets = Vec::new();
    for (w, filter) in subscribed(hooks, event_type, None) {
        let pass = match filter {
            Some(f) => {
                let data = parsed.get_or_insert_with(|| {
                    serde_json::from_str(data.get())
                        .inspect_err(|e| tracing::error!(error = %e, "event data does not parse; no payload filter matches it"))
                        .ok()
                });
                data.as_ref().is_some_and(|d| f.matches(d))
            }
            None => true,
        };
        if pass {
            targets.push(w.clone());
        } else {
            filtered += 1;
        }
    }
    (targets, filtered)
}

/// [`fan_out`] when it evaluates no payload filter (the webhooks it finds
/// have none, or a test event names its one webhook): the targets, found in
/// one pass; none as soon as a subscribed webhook has a filter, so the
/// caller can run the filters where they belong ([`FanOutGate`]).
pub fn without_filters(
    hooks: &[CachedHook],
    event_type: &str,
    only_webhook: Option<&WebhookId>,
) -> Option<Vec<Arc<Webhook>>> {
    subscribed(hooks, event_type, only_webhook)
        .map(|(w, filter)| match (filter, only_webhook) {
            (Some(_), None) => None,
            _ => Some(w.clone()),
        })
        .collect()
}

/// Where fan-outs that evaluate payload filters run: on blocking threads,
/// never on the async workers or a store's writer; one at a time per
/// tenant, and at most one per core at once. A tenant whose filters cost
/// the most its limits allow slows only its own triggers. Fan-outs that
/// evaluate no filter (subscriptions only) run where they are asked for.
pub struct FanOutGate {
    tenants: Mutex<HashMap<TenantId, Arc<tokio::sync::Semaphore>>>,
    cores: Arc<tokio::sync::Semaphore>,
}

impl Default for FanOutGate {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        FanOutGate {
            tenants: Mutex::default(),
            cores: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }
}

impl FanOutGate {
    /// Runs `work` (a fan-out that evaluates filters) on a blocking thread
    /// in `tenant`'s turn, holding a core's permit; the permits go with the
    /// work, which goes on if the caller gives up.
    pub async fn run<R: Send + 'static>(
        &self,
        tenant: &TenantId,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let turn = self
            .tenants
            .lock()
            .expect("fan-out gate lock")
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
            .clone();
        let one = turn.clone().acquire_owned().await.expect("never closed");
        let core = self
            .cores
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let out = tokio::task::spawn_blocking(move || {
            let out = work();
            drop((core, one));
            out
        })
        .await
        .expect("fan-out does not panic");
        let mut tenants = self.tenants.lock().expect("fan-out gate lock");
        // Only the map and this call hold it: nobody else waits.
        if Arc::strong_count(&turn) == 2 {
            tenants.remove(tenant);
        }
        out
    }
}

/// Compiles the webhooks' payload filters (checked when written; one that no
/// longer compiles matches nothing). Filters compiled before (when written,
/// or for another webhook) are shared, not compiled again; a new one with
/// regexes is CPU work: see [`with_filters_off_thread`].
pub fn with_filters(hooks: Vec<Webhook>) -> Vec<CachedHook> {
    hooks
        .into_iter()
        .map(|w| {
            let filter = w.filter.as_ref().map(|spec| {
                Filter::shared(spec).unwrap_or_else(|e| {
                    tracing::error!(webhook = %w.id, error = %e, "stored payload filter does not compile");
                    Arc::new(Filter::never())
                })
            });
            (Arc::new(w), filter)
        })
        .collect()
}

/// [`with_filters`] on a blocking thread when any filter has a regex (its
/// DFA may take milliseconds to build), inline otherwise.
pub async fn with_filters_off_thread(hooks: Vec<Webhook>) -> Vec<CachedHook> {
    let regexes = hooks
        .iter()
        .any(|w| w.filter.as_ref().is_some_and(Filter::has_regex));
    if !regexes {
        return with_filters(hooks);
    }
    tokio::task::spawn_blocking(move || with_filters(hooks))
        .await
        .expect("compiling filters does not panic")
}
