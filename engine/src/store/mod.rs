//! Durable state: tenants, API keys, webhooks, events, deliveries, attempts,
//! counters and plugin versions, behind the [`Store`] trait so the embedded
//! backend and the Redis backend are interchangeable.
//!
//! Invariants every backend keeps:
//! - `insert_event` is atomic: the event, its idempotency records, its
//!   deliveries and their schedule entries become durable together, before the
//!   call returns. A trigger answered 2xx is therefore never lost.
//! - A delivery is in the schedule exactly while its status is `pending`;
//!   `finish_attempt` and `retry_delivery` move it in and out of the schedule in
//!   the same write as the status change.
//! - Counters (`DeliveryStats`) change in the same write as the status they count.

pub mod embedded;
pub mod plan;
pub(crate) mod record;
pub mod redis;

use crate::ids::{DeliveryId, EventId, ReplayId, TenantId, WebhookId};
use crate::jobs::JobRun;
use crate::model::{
    Attempt, Delivery, DeliveryStats, DeliveryStatus, Event, EventTypeSeen, PluginVersion, Replay,
    Tenant, Webhook,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

pub use self::redis::RedisStore;
pub use crate::filter::cache::{VersionedHooks, WebhookCache};
pub use crate::filter::fan_out::{
    CachedHook, FanOutGate, fan_out, with_filters, with_filters_off_thread,
};
pub use crate::plugin::PluginUpload;
pub use embedded::EmbeddedStore;

/// A new pending delivery of `event` to `webhook`, due at `due_at_ms`.
pub fn new_delivery(event: &Event, webhook: &Webhook, due_at_ms: u64) -> Delivery {
    Delivery {
        id: DeliveryId::generate(),
        tenant: event.tenant.clone(),
        event_id: event.id.clone(),
        webhook_id: webhook.id.clone(),
        event_type: event.event_type.clone(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at_ms: Some(due_at_ms),
        reason: None,
        last_status_code: None,
        created_at_ms: event.occurred_at_ms,
        updated_at_ms: event.occurred_at_ms,
        replay_of: None,
        rate_slot_ms: None,
    }
}

/// A new pending delivery that sends `event` again to `webhook` in place
/// of `original`, due at `now_ms`.
pub fn replay_delivery(
    event: &Event,
    webhook: &Webhook,
    original: &DeliveryId,
    now_ms: u64,
) -> Delivery {
    Delivery {
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        replay_of: Some(original.clone()),
        ..new_delivery(event, webhook, now_ms)
    }
}

/// A delivery as a backend writes it at the end of an attempt: a pending
/// one without a due time (not a state the worker produces) is due now on
/// both backends, rather than kept out of the schedule and lost.
pub(crate) fn due_if_pending(mut delivery: Delivery, now_ms: u64) -> Delivery {
    if delivery.status == DeliveryStatus::Pending && delivery.next_attempt_at_ms.is_none() {
        delivery.next_attempt_at_ms = Some(now_ms);
    }
    delivery
}

/// Walks a webhook's deliveries newest first (those with `status`, if
/// given), from just before `from` (or the newest), a page at a time,
/// until `visit` breaks or none is left. Answers the id of the delivery
/// `visit` broke on: where to go on from (a cursor), none when all were
/// visited.
pub async fn walk_deliveries(
    store: &dyn Store,
    tenant: &TenantId,
    webhook: &WebhookId,
    from: Option<DeliveryId>,
    status: Option<DeliveryStatus>,
    mut visit: impl FnMut(Delivery) -> std::ops::ControlFlow<()>,
) -> Result<Option<DeliveryId>, StoreError> {
    const PAGE: usize = 500;
    let mut before = from;
    loop {
        let page = Page {
            limit: PAGE,
            before: before.as_ref(),
            status,
        };
        let list = store.list_deliveries(tenant, webhook, page).await?;
        let full = list.len() == PAGE;
        for d in list {
            before = Some(d.id.clone());
            if visit(d).is_break() {
                return Ok(before);
            }
        }
        if !full {
            return Ok(None);
        }
    }
}

/// Logs that an attempt's end could not be recorded: the delivery stays
/// leased and goes out again when its lease ends.
pub fn unrecorded(delivery: &DeliveryId, error: &StoreError) {
    tracing::error!(delivery = %delivery, error = %error, "recording a delivery attempt failed; it is retried when its lease ends");
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the store is shutting down")]
    Closed,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

/// A trigger, checked and ready to be written.
#[derive(Debug)]
pub struct NewEvent {
    pub id: EventId,
    pub tenant: TenantId,
    pub event_type: String,
    pub data: Box<RawValue>,
    pub occurred_at_ms: u64,
    /// The caller's `Idempotency-Key`, if any. The event id always acts as one too.
    pub idempotency_key: Option<String>,
    /// Fingerprint of the request, to tell a retried trigger from a different
    /// one reusing the same key.
    pub fingerprint: String,
    /// Deliver to this webhook only, whatever it subscribes to (the `test` route).
    pub only_webhook: Option<WebhookId>,
    /// The new deliveries are due at this time; the caller hands them to its
    /// own worker at once, so this is a lease: if the process dies first, they
    /// come due then.
    pub due_at_ms: u64,
}

/// What an earlier trigger with the same idempotency key answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdempotentAnswer {
    pub event_id: EventId,
    pub event_type: String,
    pub deliveries: u32,
    pub fingerprint: String,
    /// When the first trigger was accepted (for retention).
    #[serde(default)]
    pub at_ms: u64,
    /// The deliveries it created, where the backend keeps them here (the
    /// embedded store's record under the event id is its event→delivery
    /// index; empty elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivery_ids: Vec<DeliveryId>,
}

#[derive(Debug)]
pub enum Ingested {
    /// Written now; these deliveries were created.
    Created {
        event: Event,
        deliveries: Vec<Delivery>,
        /// `webhooks[i]` is the webhook `deliveries[i]` goes to, as fan-out
        /// saw it: the first attempt uses it instead of reading it back.
        webhooks: Vec<Arc<Webhook>>,
        /// Subscribed webhooks whose payload filter did not match.
        filtered: u32,
    },
    /// The same trigger was accepted before: here is what it answered.
    Replayed(IdempotentAnswer),
    /// The key (or event id) was used before by a different trigger.
    KeyReused(IdempotentAnswer),
}

/// A page of a tenant's events, newest first (by when they were
/// accepted, then id).
#[derive(Clone, Copy, Debug)]
pub struct EventQuery<'a> {
    pub limit: usize,
    /// Only events before this one: `(occurred_at_ms, id)`.
    pub before: Option<(u64, &'a str)>,
    /// Accepted at or after this time.
    pub since_ms: Option<u64>,
    /// Accepted before this time.
    pub until_ms: Option<u64>,
    pub event_type: Option<&'a str>,
}

/// Events of a page, and where the next page starts when there may be
/// one (a page stops after [`EVENT_SCAN`] events even when the type
/// filter kept fewer than the limit).
#[derive(Debug, Default)]
pub struct EventList {
    pub events: Vec<Event>,
    pub next: Option<(u64, String)>,
}

/// Events one page looks at, at most.
pub const EVENT_SCAN: usize = 5_000;

#[derive(Clone, Copy, Debug)]
pub struct Page<'a> {
    pub limit: usize,
    /// Only deliveries older than this one (ids sort by creation time).
    pub before: Option<&'a DeliveryId>,
    pub status: Option<DeliveryStatus>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a tenant with the hash of its first API key.
    async fn create_tenant(&self, tenant: Tenant, api_key_hash: String) -> Result<(), StoreError>;
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    async fn tenant_by_key_hash(&self, hash: &str) -> Result<Option<TenantId>, StoreError>;

    /// Creates or replaces a webhook.
    async fn put_webhook(&self, webhook: Webhook) -> Result<(), StoreError>;
    async fn get_webhook(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
    ) -> Result<Option<Webhook>, StoreError>;
    async fn list_webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError>;
    /// Deletes a webhook; its deliveries and counters stay as history.
    async fn delete_webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError>;

    /// Writes an event and fans it out to the tenant's active, subscribed
    /// webhooks (see the module doc for what is atomic).
    async fn insert_event(&self, event: NewEvent) -> Result<Ingested, StoreError>;
    /// Several triggers, answered in order. Each is atomic on its own; the
    /// embedded backend also writes them all in one transaction, while this
    /// default (Redis) writes them concurrently, one script each.
    async fn insert_events(&self, events: Vec<NewEvent>) -> Result<Vec<Ingested>, StoreError> {
        futures_util::future::try_join_all(events.into_iter().map(|e| self.insert_event(e))).await
    }
    async fn get_event(&self, tenant: &TenantId, id: &EventId)
    -> Result<Option<Event>, StoreError>;
    async fn event_deliveries(
        &self,
        tenant: &TenantId,
        id: &EventId,
    ) -> Result<Vec<Delivery>, StoreError>;
    async fn event_types(&self, tenant: &TenantId) -> Result<Vec<EventTypeSeen>, StoreError>;
    /// The tenant's events, newest first, as `query` asks.
    async fn list_events(
        &self,
        tenant: &TenantId,
        query: EventQuery<'_>,
    ) -> Result<EventList, StoreError>;

    /// A delivery of `tenant` (another tenant's id finds nothing).
    async fn get_delivery(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Option<Delivery>, StoreError>;
    /// A webhook's deliveries, newest first.
    async fn list_deliveries(
        &self,
        tenant: &TenantId,
        webhook: &WebhookId,
        page: Page<'_>,
    ) -> Result<Vec<Delivery>, StoreError>;
    async fn attempts(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Vec<Attempt>, StoreError>;
    /// Records the end of an attempt (or of a delivery that needed none, such
    /// as one for a deleted webhook): the updated delivery replaces the stored
    /// one; it stays scheduled at `next_attempt_at_ms` if still pending.
    async fn finish_attempt(
        &self,
        delivery: Delivery,
        attempt: Option<Attempt>,
    ) -> Result<(), StoreError>;
    /// [`Store::finish_attempt`] for a delivery whose outcome is final (no
    /// retry follows, so nothing waits for its record): a backend may return
    /// once the write is queued, before it is durable, which frees the
    /// attempt's task at once; a failure is logged, not returned. What may
    /// happen twice: if the process dies before the write is durable, the
    /// delivery's lease brings it back and it is sent again, as for an
    /// attempt cut off by a crash while it ran.
    async fn finish_final(&self, delivery: Delivery, attempt: Option<Attempt>) {
        let id = delivery.id.clone();
        if let Err(e) = self.finish_attempt(delivery, attempt).await {
            unrecorded(&id, &e);
        }
    }
    /// Adds new pending deliveries to an existing event (a resend or a
    /// replay), each due at its `next_attempt_at_ms`, atomically: the
    /// deliveries, their schedule entries, indexes and counters. `NotFound`
    /// if the event is gone (retention).
    async fn add_deliveries(
        &self,
        tenant: &TenantId,
        event: &EventId,
        deliveries: Vec<Delivery>,
    ) -> Result<(), StoreError>;
    /// Stores a replay, unless one with the same idempotency key is
    /// stored for the tenant: then that one is answered and nothing is
    /// written.
    async fn put_replay(&self, replay: Replay) -> Result<Option<Replay>, StoreError>;
    async fn get_replay(
        &self,
        tenant: &TenantId,
        id: &ReplayId,
    ) -> Result<Option<Replay>, StoreError>;
    /// Makes a finished delivery pending again, due now (manual retry).
    async fn retry_delivery(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
        now_ms: u64,
    ) -> Result<Delivery, StoreError>;

    async fn webhook_stats(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
    ) -> Result<DeliveryStats, StoreError>;
    /// Counters of every webhook the tenant ever had, by webhook id.
    async fn stats_by_webhook(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, DeliveryStats)>, StoreError>;
    /// Counters of every webhook the tenant ever had, summed.
    async fn tenant_stats(&self, tenant: &TenantId) -> Result<DeliveryStats, StoreError> {
        let mut sum = DeliveryStats::default();
        for (_, stats) in self.stats_by_webhook(tenant).await? {
            sum.add(&stats);
        }
        Ok(sum)
    }

    /// Stores a new version of a plugin (the next sequence number) and makes
    /// it current, in one atomic write; returns it.
    async fn put_plugin(
        &self,
        tenant: &TenantId,
        upload: PluginUpload,
    ) -> Result<PluginVersion, StoreError>;
    /// Every version of a plugin, oldest first (empty if there is none). The
    /// last is the current one: every upload or rollback adds the newest.
    async fn plugin_versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Vec<PluginVersion>, StoreError>;
    /// One version of a plugin and its component bytes.
    async fn plugin_version(
        &self,
        tenant: &TenantId,
        name: &str,
        version: u32,
    ) -> Result<Option<(PluginVersion, Vec<u8>)>, StoreError>;
    /// The current version of a plugin and its component bytes.
    async fn current_plugin(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<(PluginVersion, Vec<u8>)>, StoreError>;
    /// The current version of each of the tenant's plugins.
    async fn list_plugins(&self, tenant: &TenantId) -> Result<Vec<PluginVersion>, StoreError>;

    /// Forgets events, finished deliveries, their attempts and idempotency
    /// keys older than the retention period (pending deliveries and their
    /// events stay). Returns how many records went. Run periodically.
    async fn sweep(&self, now_ms: u64) -> Result<u64, StoreError>;

    /// Takes `n` units of the rate limit `name` of `tenant` at `now_ms`
    /// (see [`crate::limit`]): `Ok` if they pass, else how long to wait
    /// (`None`: never, `n` is over the burst). Kept in memory on the
    /// embedded store (one process), in Redis across engines.
    async fn take_rate(
        &self,
        tenant: &TenantId,
        name: &str,
        rate: crate::limit::Rate,
        n: u32,
        now_ms: u64,
    ) -> Result<Result<(), Option<std::time::Duration>>, StoreError>;

    /// Reserves one unit of the rate limit `name` of `tenant` at `now_ms`
    /// (see [`crate::limit::reserve`]): when it may go.
    async fn reserve_rate(
        &self,
        tenant: &TenantId,
        name: &str,
        rate: crate::limit::Rate,
        now_ms: u64,
    ) -> Result<u64, StoreError>;
    /// Lets no unit of the rate limit `name` go before `until_ms`.
    async fn hold_rate(
        &self,
        tenant: &TenantId,
        name: &str,
        rate: crate::limit::Rate,
        until_ms: u64,
    ) -> Result<(), StoreError>;

    /// Tells the other engines sharing the store that a webhook's circuit
    /// breaker opened (until then) or closed. Only Redis has others.
    async fn announce_breaker(
        &self,
        _webhook: &WebhookId,
        _open_until: Option<u64>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes something small and waits until it is durable: `/ready`.
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Takes (or renews, for the same `holder`) a job's lease until
    /// `until_ms`; false if another holder has it. The embedded store's
    /// process owns its file, so there it is always granted (the process
    /// itself runs a job once at a time, see [`crate::jobs`]).
    async fn take_job_lease(
        &self,
        job: &str,
        holder: &str,
        until_ms: u64,
    ) -> Result<bool, StoreError>;
    async fn release_job_lease(&self, job: &str, holder: &str) -> Result<(), StoreError>;
    /// Claims a job's scheduled time: true for the first engine to claim it.
    async fn claim_job_time(&self, job: &str, at_ms: u64) -> Result<bool, StoreError>;
    /// Records a job's latest run.
    async fn put_job_run(&self, job: &str, run: &JobRun) -> Result<(), StoreError>;
    /// Each job's latest run, by name.
    async fn job_runs(&self) -> Result<Vec<(String, JobRun)>, StoreError>;
}

/// The plugin host's view of a store (see [`crate::plugin::Versions`]).
#[async_trait]
impl<S: Store + ?Sized> crate::plugin::Versions for S {
    async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, crate::plugin::VersionsError> {
        Ok(self.get_tenant(tenant).await?.is_some())
    }
    async fn versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Vec<PluginVersion>, crate::plugin::VersionsError> {
        Ok(self.plugin_versions(tenant, name).await?)
    }
    async fn current(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<(PluginVersion, Vec<u8>)>, crate::plugin::VersionsError> {
        Ok(self.current_plugin(tenant, name).await?)
    }
    async fn add(
        &self,
        tenant: &TenantId,
        upload: PluginUpload,
    ) -> Result<PluginVersion, crate::plugin::VersionsError> {
        Ok(self.put_plugin(tenant, upload).await?)
    }
}
