//! The embedded backend: one redb file in the data directory, owned by this
//! process alone (redb locks it).
//!
//! # Owns
//! - The tables (below) and their encoding: JSON records, but deliveries
//!   and attempts compact binary ([`crate::store::record`]), encoded on the
//!   caller's thread so the one writer only checks and inserts.
//! - The writer: every write is a closure sent to one thread, which runs
//!   all closures waiting at that moment in one transaction and commits it
//!   with an fsync, then answers each caller. The tables triggers,
//!   attempts and claims write ([`Hot`]) stay open while such writes follow
//!   each other; delivery counters and event types seen are summed in
//!   memory and written once per batch, just before the commit. The writer
//!   counts commits, their writes and their time ([`StoreMetrics`]).
//! - Planning triggers: fan-out runs on the caller's side (see
//!   [`crate::filter::fan_out::FanOutGate`]) against the tenant's webhooks at a version the
//!   writer checks ([`crate::filter::cache::WebhookCache`]); the writer never fans out.
//! - Retention ([`Store::sweep`]).
//!
//! # Invariants
//! - A caller hears back only once its write is durable (one disk sync per
//!   burst), except an attempt's final result ([`Store::finish_final`]),
//!   handed to the writer without waiting; the writer finishes every write
//!   it was handed before the store closes.
//! - Reads use redb's read transactions and never wait for the writer.
//! - A delivery's record names its schedule entry; a trigger leases its
//!   fresh deliveries with one entry ([`schedule`]); the
//!   idempotency record under an event's id lists its deliveries.
//! - A closure that fails leaves what it already wrote in the shared
//!   transaction, so closures check before they write (a trigger is
//!   planned whole before the writer sees it).
//!
//! # What may happen twice
//! - A final result lost with a crash before its commit: the delivery's
//!   lease brings it back and it is attempted again.
//! - A trigger planned against webhooks that changed meanwhile is planned
//!   again (the writer hands it back unwritten).

#[macro_use]
mod tables;
mod ingest;
mod schedule;
mod sweep;
mod writer;

use crate::ids::{DeliveryId, EventId, TenantId, WebhookId};
use crate::metrics::StoreMetrics;
use crate::model::{
    Attempt, Delivery, DeliveryStats, DeliveryStatus, Event, EventTypeSeen, PluginVersion, Replay,
    Tenant, Webhook,
};
use crate::store::record::{compact, decode as dec, json as enc};
use crate::store::{FanOutGate, VersionedHooks, WebhookCache};
use crate::store::{IdempotentAnswer, Ingested, NewEvent, Page, PluginUpload, Store, StoreError};
use async_trait::async_trait;
pub(crate) use ingest::listed_deliveries;
use ingest::*;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use schedule::{forget_event_leases, known_fresh_slot, lease_event, moved, release_leases, slot};
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::Arc;
use sweep::*;
pub(crate) use tables::SCHEDULE;
use tables::*;
use tokio::sync::{mpsc, oneshot};
pub(crate) use writer::Hot;
use writer::*;

/// With the `faults` feature (black-box tests only): while a file of this
/// name is in the data directory, `check_writable` fails as a store whose
/// disk refuses writes would.
#[cfg(feature = "faults")]
pub const UNWRITABLE_FAULT: &str = "wasmhook-fault-unwritable";

pub struct EmbeddedStore {
    /// Rate limits' arrival times by `tenant/name` (see [`crate::limit`]):
    /// the process owns the store, so memory is where they are shared.
    rates: std::sync::Mutex<std::collections::HashMap<String, f64>>,
    /// The directory its file is in.
    #[cfg_attr(not(feature = "faults"), allow(dead_code))]
    dir: std::path::PathBuf,
    db: Arc<Database>,
    writer: Option<mpsc::Sender<Op>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    retention_ms: u64,
    /// Each tenant's webhooks for fan-out, and their version: the writer
    /// tells it of every change (see [`WebhookCache`]), callers fill it.
    webhooks: Arc<WebhookCache>,
    gate: FanOutGate,
}

impl EmbeddedStore {
    /// Opens (or creates) `wasmhook.redb` in `dir`, keeping up to
    /// `cache_bytes` of its pages in memory, and makes leases left by a
    /// previous run due now.
    pub fn open(
        dir: &Path,
        retention: std::time::Duration,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        Self::open_with_metrics(dir, retention, cache_bytes, StoreMetrics::default())
    }

    /// [`Self::open`], counting the writer's commits in `metrics`.
    pub fn open_with_metrics(
        dir: &Path,
        retention: std::time::Duration,
        cache_bytes: usize,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Storage(redb::Error::Io(e)))?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(dir.join("wasmhook.redb"))
            .map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        {
            // Create every table so that readers never meet a missing one.
            txn.open_table(TENANTS).map_err(redb::Error::from)?;
            txn.open_table(API_KEYS).map_err(redb::Error::from)?;
            txn.open_table(WEBHOOKS).map_err(redb::Error::from)?;
            txn.open_table(EVENTS).map_err(redb::Error::from)?;
            txn.open_table(EVENT_TIMES).map_err(redb::Error::from)?;
            txn.open_table(IDEMPOTENCY).map_err(redb::Error::from)?;
            txn.open_table(DELIVERIES).map_err(redb::Error::from)?;
            txn.open_table(WEBHOOK_DELIVERIES)
                .map_err(redb::Error::from)?;
            txn.open_table(ATTEMPTS).map_err(redb::Error::from)?;
            txn.open_table(STATS).map_err(redb::Error::from)?;
            txn.open_table(EVENT_TYPES).map_err(redb::Error::from)?;
            txn.open_table(SCHEDULE).map_err(redb::Error::from)?;
            txn.open_table(PLUGINS).map_err(redb::Error::from)?;
            txn.open_table(PLUGIN_VERSIONS).map_err(redb::Error::from)?;
            txn.open_table(PLUGIN_BLOBS).map_err(redb::Error::from)?;
            txn.open_table(JOB_RUNS).map_err(redb::Error::from)?;
            txn.open_table(REPLAYS).map_err(redb::Error::from)?;
            txn.open_table(READY).map_err(redb::Error::from)?;
        }
        let released = release_leases(&mut Hot::open(&txn)?, crate::clock::now_ms())?;
        txn.commit().map_err(redb::Error::from)?;
        if released > 0 {
            tracing::info!(
                released,
                "deliveries in flight at the last stop are due again"
            );
        }
        let db = Arc::new(db);
        let (writer, rx) = mpsc::channel(4096);
        let writer_db = db.clone();
        let writer_thread = std::thread::Builder::new()
            .name("wasmhook-store-writer".into())
            .spawn(move || write_loop(&writer_db, rx, &metrics))
            .map_err(|e| StoreError::Storage(redb::Error::Io(e)))?;
        Ok(EmbeddedStore {
            rates: Default::default(),
            dir: dir.to_owned(),
            db,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            retention_ms: retention.as_millis() as u64,
            webhooks: Arc::default(),
            gate: FanOutGate::default(),
        })
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Changes the arrival time of `tenant`'s rate limit `name` (see
    /// [`crate::limit`]) as `f` says, answering what `f` answers.
    fn with_rate<R>(
        &self,
        tenant: &TenantId,
        name: &str,
        f: impl FnOnce(Option<f64>) -> (Option<f64>, R),
    ) -> R {
        let key = format!("{tenant}/{name}");
        let mut rates = self.rates.lock().expect("rates lock");
        let (tat, answer) = f(rates.get(&key).copied());
        if let Some(tat) = tat {
            rates.insert(key, tat);
        }
        answer
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        f(&txn)
    }
}

impl Drop for EmbeddedStore {
    /// Lets the writer finish what it was given and release the database, so
    /// the file can be opened again as soon as the store is gone.
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_tenant(&self, tenant: Tenant, api_key_hash: String) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut tenants = table!(txn, TENANTS);
            if tenants
                .get(tenant.id.as_str())
                .map_err(redb::Error::from)?
                .is_some()
            {
                return Err(StoreError::Conflict("tenant"));
            }
            tenants
                .insert(tenant.id.as_str(), enc(&tenant).as_slice())
                .map_err(redb::Error::from)?;
            table!(txn, API_KEYS)
                .insert(api_key_hash.as_str(), tenant.id.as_str())
                .map_err(redb::Error::from)?;
            Ok(())
        })
        .await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        self.read(|txn| get_json(&table!(txn, TENANTS), id.as_str()))
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.read(|txn| {
            let table = table!(txn, TENANTS);
            let mut out = Vec::new();
            for item in table.iter().map_err(redb::Error::from)? {
                out.push(dec(item.map_err(redb::Error::from)?.1.value())?);
            }
            Ok(out)
        })
    }

    async fn tenant_by_key_hash(&self, hash: &str) -> Result<Option<TenantId>, StoreError> {
        self.read(|txn| {
            Ok(table!(txn, API_KEYS)
                .get(hash)
                .map_err(redb::Error::from)?
                .map(|v| TenantId::from_trusted(v.value())))
        })
    }

    async fn put_webhook(&self, webhook: Webhook) -> Result<(), StoreError> {
        let tenant = webhook.tenant.clone();
        self.write_webhooks(tenant, move |txn| {
            table!(txn, WEBHOOKS)
                .insert(
                    (webhook.tenant.as_str(), webhook.id.as_str()),
                    enc(&webhook).as_slice(),
                )
                .map_err(redb::Error::from)?;
            Ok(())
        })
        .await
    }

    async fn get_webhook(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
    ) -> Result<Option<Webhook>, StoreError> {
        self.read(|txn| get_json(&table!(txn, WEBHOOKS), (tenant.as_str(), id.as_str())))
    }

    async fn list_webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
        self.read(|txn| list_json(&table!(txn, WEBHOOKS), tenant.as_str()))
    }

    async fn delete_webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError> {
        let (key, id) = (tenant.clone(), id.clone());
        self.write_webhooks(tenant.clone(), move |txn| {
            let removed = table!(txn, WEBHOOKS)
                .remove((key.as_str(), id.as_str()))
                .map_err(redb::Error::from)?
                .is_some();
            Ok(removed)
        })
        .await
    }

    async fn insert_event(&self, new: NewEvent) -> Result<Ingested, StoreError> {
        let mut batch = self.insert_planned(vec![new]).await?;
        Ok(batch.pop().expect("one trigger, one answer"))
    }

    /// One transaction, and so one disk sync, for the whole batch.
    async fn insert_events(&self, events: Vec<NewEvent>) -> Result<Vec<Ingested>, StoreError> {
        self.insert_planned(events).await
    }

    async fn get_event(
        &self,
        tenant: &TenantId,
        id: &EventId,
    ) -> Result<Option<Event>, StoreError> {
        self.read(|txn| get_json(&table!(txn, EVENTS), (tenant.as_str(), id.as_str())))
    }

    async fn event_deliveries(
        &self,
        tenant: &TenantId,
        id: &EventId,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.read(|txn| {
            let deliveries = table!(txn, DELIVERIES);
            let mut out = Vec::new();
            let idem = table!(txn, IDEMPOTENCY);
            for d in listed_deliveries(&idem, tenant.as_str(), id.as_str())? {
                if let Some(d) = get_json(&deliveries, d.as_str())? {
                    out.push(d);
                }
            }
            Ok(out)
        })
    }

    async fn event_types(&self, tenant: &TenantId) -> Result<Vec<EventTypeSeen>, StoreError> {
        self.read(|txn| list_json(&table!(txn, EVENT_TYPES), tenant.as_str()))
    }

    async fn get_delivery(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        let found: Option<Delivery> =
            self.read(|txn| get_json(&table!(txn, DELIVERIES), id.as_str()))?;
        Ok(found.filter(|d| &d.tenant == tenant))
    }

    async fn list_deliveries(
        &self,
        tenant: &TenantId,
        webhook: &WebhookId,
        page: Page<'_>,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.read(|txn| {
            let index = table!(txn, WEBHOOK_DELIVERIES);
            let deliveries = table!(txn, DELIVERIES);
            let upper = page.before.map(|b| b.as_str()).unwrap_or(MAX_ID);
            let mut out = Vec::new();
            for item in index
                .range((webhook.as_str(), "")..(webhook.as_str(), upper))
                .map_err(redb::Error::from)?
                .rev()
            {
                if out.len() >= page.limit {
                    break;
                }
                let (k, _) = item.map_err(redb::Error::from)?;
                let Some(d) = get_json::<_, Delivery>(&deliveries, k.value().1)? else {
                    continue;
                };
                if &d.tenant == tenant && page.status.is_none_or(|s| s == d.status) {
                    out.push(d);
                }
            }
            Ok(out)
        })
    }

    async fn attempts(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Vec<Attempt>, StoreError> {
        self.read(|txn| {
            // Another tenant's delivery id finds nothing, as on Redis.
            let owner: Option<Delivery> = get_json(&table!(txn, DELIVERIES), id.as_str())?;
            if owner.is_none_or(|d| &d.tenant != tenant) {
                return Ok(Vec::new());
            }
            let table = table!(txn, ATTEMPTS);
            let mut out = Vec::new();
            for item in table
                .range((id.as_str(), 0)..=(id.as_str(), u32::MAX))
                .map_err(redb::Error::from)?
            {
                out.push(dec(item.map_err(redb::Error::from)?.1.value())?);
            }
            Ok(out)
        })
    }

    async fn finish_attempt(
        &self,
        delivery: Delivery,
        attempt: Option<Attempt>,
    ) -> Result<(), StoreError> {
        self.write_hot(finishing(delivery, attempt)).await
    }

    /// Hands the write to the writer and returns: the caller does not wait
    /// for its group commit, and a failure is logged there.
    async fn finish_final(&self, delivery: Delivery, attempt: Option<Attempt>) {
        let id = delivery.id.clone();
        let write = finishing(delivery, attempt);
        self.queue(
            move |batch| write(batch.hot()?),
            move |outcome| {
                if let Err(e) = outcome {
                    crate::store::unrecorded(&id, &e);
                }
            },
        )
        .await;
    }

    async fn list_events(
        &self,
        tenant: &TenantId,
        q: crate::store::EventQuery<'_>,
    ) -> Result<crate::store::EventList, StoreError> {
        self.read(|txn| {
            let (times, events) = (table!(txn, EVENT_TIMES), table!(txn, EVENTS));
            let t = tenant.as_str();
            let low = (t, q.since_ms.unwrap_or(0), "");
            let top = match (q.before, q.until_ms) {
                (Some((ms, _)), Some(until)) if until <= ms => (t, until, ""),
                (Some((ms, id)), _) => (t, ms, id),
                (None, Some(until)) => (t, until, ""),
                (None, None) => (t, u64::MAX, ""),
            };
            let mut list = crate::store::EventList::default();
            let mut scanned = 0;
            for item in times.range(low..top).map_err(redb::Error::from)?.rev() {
                let (k, _) = item.map_err(redb::Error::from)?;
                let (_, ms, id) = k.value();
                scanned += 1;
                let event: Option<Event> = get_json(&events, (t, id))?;
                if let Some(e) = event.filter(|e| q.event_type.is_none_or(|ty| e.event_type == ty))
                {
                    list.events.push(e);
                }
                if list.events.len() >= q.limit || scanned >= crate::store::EVENT_SCAN {
                    list.next = Some((ms, id.to_owned()));
                    break;
                }
            }
            Ok(list)
        })
    }

    async fn add_deliveries(
        &self,
        tenant: &TenantId,
        event: &EventId,
        deliveries: Vec<Delivery>,
    ) -> Result<(), StoreError> {
        let (tenant, event) = (tenant.clone(), event.clone());
        let encoded: Vec<Vec<u8>> = deliveries.iter().map(compact).collect();
        self.write_hot(move |hot| {
            let (t, e) = (tenant.as_str(), event.as_str());
            if hot.events.get((t, e)).map_err(redb::Error::from)?.is_none() {
                return Err(StoreError::NotFound("event"));
            }
            // The record under the event id lists its deliveries.
            let key = ingest::id_key(e);
            let mut answer: IdempotentAnswer = get_json(&hot.idempotency, (t, key.as_str()))?
                .ok_or(StoreError::NotFound("event"))?;
            answer
                .delivery_ids
                .extend(deliveries.iter().map(|d| d.id.clone()));
            hot.idempotency
                .insert((t, key.as_str()), enc(&answer).as_slice())
                .map_err(redb::Error::from)?;
            for (d, bytes) in deliveries.iter().zip(&encoded) {
                let hook = d.webhook_id.as_str();
                hot.webhook_deliveries
                    .insert((hook, d.id.as_str()), ())
                    .map_err(redb::Error::from)?;
                update_stats(hot, t, hook, |s| {
                    s.total += 1;
                    s.pending += 1;
                })?;
                write_delivery(hot, None, d, bytes)?;
            }
            Ok(())
        })
        .await
    }

    async fn put_replay(&self, replay: Replay) -> Result<Option<Replay>, StoreError> {
        self.write(move |txn| {
            let mut table = table!(txn, REPLAYS);
            let t = replay.tenant.as_str();
            if let Some(key) = &replay.idempotency_key {
                let by_key = format!("key:{key}");
                let earlier: Option<String> = get_json(&table, (t, by_key.as_str()))?;
                if let Some(id) = earlier {
                    return get_json(&table, (t, id.as_str()));
                }
                table
                    .insert((t, by_key.as_str()), enc(&replay.id).as_slice())
                    .map_err(redb::Error::from)?;
            }
            table
                .insert((t, replay.id.as_str()), enc(&replay).as_slice())
                .map_err(redb::Error::from)?;
            Ok(None)
        })
        .await
    }

    async fn get_replay(
        &self,
        tenant: &TenantId,
        id: &crate::ids::ReplayId,
    ) -> Result<Option<Replay>, StoreError> {
        self.read(|txn| get_json(&table!(txn, REPLAYS), (tenant.as_str(), id.as_str())))
    }

    async fn retry_delivery(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
        now_ms: u64,
    ) -> Result<Delivery, StoreError> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.write_hot(move |hot| {
            let previous: Delivery = get_json::<_, Delivery>(&hot.deliveries, id.as_str())?
                .filter(|d| d.tenant == tenant)
                .ok_or(StoreError::NotFound("delivery"))?;
            let mut d = previous.clone();
            d.reopen(now_ms);
            update_stats(hot, d.tenant.as_str(), d.webhook_id.as_str(), |s| {
                s.count(previous.status, -1);
                s.count(DeliveryStatus::Pending, 1);
            })?;
            write_delivery(hot, slot(&previous), &d, &compact(&d))?;
            Ok(d)
        })
        .await
    }

    async fn webhook_stats(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
    ) -> Result<DeliveryStats, StoreError> {
        self.read(|txn| {
            Ok(get_json(&table!(txn, STATS), (tenant.as_str(), id.as_str()))?.unwrap_or_default())
        })
    }

    async fn stats_by_webhook(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, DeliveryStats)>, StoreError> {
        self.read(|txn| {
            let table = table!(txn, STATS);
            let mut out = Vec::new();
            let t = tenant.as_str();
            for item in table
                .range((t, "")..(t, MAX_ID))
                .map_err(redb::Error::from)?
            {
                let (k, v) = item.map_err(redb::Error::from)?;
                out.push((k.value().1.to_owned(), dec(v.value())?));
            }
            Ok(out)
        })
    }

    async fn put_plugin(
        &self,
        tenant: &TenantId,
        upload: PluginUpload,
    ) -> Result<PluginVersion, StoreError> {
        let tenant = tenant.clone();
        self.write(move |txn| {
            let name = upload.name.as_str();
            let mut current = table!(txn, PLUGINS);
            let mut versions = table!(txn, PLUGIN_VERSIONS);
            // Versions are never deleted, so the newest one numbers the next.
            let version = versions
                .range((tenant.as_str(), name, 0)..=(tenant.as_str(), name, u32::MAX))
                .map_err(redb::Error::from)?
                .next_back()
                .transpose()
                .map_err(redb::Error::from)?
                .map_or(1, |(k, _)| k.value().2 + 1);
            let meta = upload.version(version);
            table!(txn, PLUGIN_BLOBS)
                .insert(upload.sha256.as_str(), upload.component.as_slice())
                .map_err(redb::Error::from)?;
            versions
                .insert((tenant.as_str(), name, version), enc(&meta).as_slice())
                .map_err(redb::Error::from)?;
            current
                .insert((tenant.as_str(), name), version)
                .map_err(redb::Error::from)?;
            Ok(meta)
        })
        .await
    }

    async fn plugin_versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Vec<PluginVersion>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for item in table!(txn, PLUGIN_VERSIONS)
                .range((tenant.as_str(), name, 0)..=(tenant.as_str(), name, u32::MAX))
                .map_err(redb::Error::from)?
            {
                let (_, v) = item.map_err(redb::Error::from)?;
                out.push(dec(v.value())?);
            }
            Ok(out)
        })
    }

    async fn plugin_version(
        &self,
        tenant: &TenantId,
        name: &str,
        version: u32,
    ) -> Result<Option<(PluginVersion, Vec<u8>)>, StoreError> {
        self.read(|txn| plugin_with_bytes(txn, tenant.as_str(), name, version))
    }

    async fn current_plugin(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<(PluginVersion, Vec<u8>)>, StoreError> {
        self.read(|txn| {
            let Some(version) = table!(txn, PLUGINS)
                .get((tenant.as_str(), name))
                .map_err(redb::Error::from)?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            plugin_with_bytes(txn, tenant.as_str(), name, version)
        })
    }

    async fn sweep(&self, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(self.retention_ms);
        self.write(move |txn| sweep(txn, cutoff)).await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        #[cfg(feature = "faults")]
        if self.dir.join(UNWRITABLE_FAULT).exists() {
            return Err(StoreError::Commit(format!(
                "fault injected: {UNWRITABLE_FAULT} exists"
            )));
        }
        let now = crate::clock::now_ms();
        self.write(move |txn| {
            table!(txn, READY)
                .insert("probe", now)
                .map_err(redb::Error::from)?;
            Ok(())
        })
        .await
    }

    async fn take_rate(
        &self,
        tenant: &TenantId,
        name: &str,
        rate: crate::limit::Rate,
        n: u32,
        now_ms: u64,
    ) -> Result<Result<(), Option<std::time::Duration>>, StoreError> {
        Ok(self.with_rate(tenant, name, |tat| {
            match crate::limit::take(tat, now_ms as f64, rate, n) {
                Ok(next) => (Some(next), Ok(())),
                Err(wait) => (tat, Err(wait)),
            }
        }))
    }

    async fn reserve_rate(
        &self,
        tenant: &TenantId,
        name: &str,
        rate: crate::limit::Rate,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        Ok(self.with_rate(tenant, name, |tat| {
            let (next, go) = crate::limit::reserve(tat, now_ms as f64, rate);
            (Some(next), go.ceil() as u64)
        }))
    }

    async fn hold_rate(
        &self,
        tenant: &TenantId,
        name: &str,
        rate: crate::limit::Rate,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        self.with_rate(tenant, name, |tat| {
            (Some(crate::limit::hold(tat, until_ms as f64, rate)), ())
        });
        Ok(())
    }

    async fn take_job_lease(&self, _: &str, _: &str, _: u64) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn release_job_lease(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn claim_job_time(&self, _: &str, _: u64) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn put_job_run(&self, job: &str, run: &crate::jobs::JobRun) -> Result<(), StoreError> {
        let (job, run) = (job.to_owned(), enc(run));
        self.write(move |txn| {
            table!(txn, JOB_RUNS)
                .insert(job.as_str(), run.as_slice())
                .map_err(redb::Error::from)?;
            Ok(())
        })
        .await
    }

    async fn job_runs(&self) -> Result<Vec<(String, crate::jobs::JobRun)>, StoreError> {
        self.read(|txn| {
            let table = table!(txn, JOB_RUNS);
            let mut out = Vec::new();
            for item in table.iter().map_err(redb::Error::from)? {
                let (k, v) = item.map_err(redb::Error::from)?;
                out.push((k.value().to_owned(), dec(v.value())?));
            }
            Ok(out)
        })
    }

    async fn list_plugins(&self, tenant: &TenantId) -> Result<Vec<PluginVersion>, StoreError> {
        self.read(|txn| {
            let current = table!(txn, PLUGINS);
            let versions = table!(txn, PLUGIN_VERSIONS);
            let mut out = Vec::new();
            for item in current
                .range((tenant.as_str(), "")..(tenant.as_str(), MAX_ID))
                .map_err(redb::Error::from)?
            {
                let (k, v) = item.map_err(redb::Error::from)?;
                let (_, name) = k.value();
                if let Some(meta) = get_json(&versions, (tenant.as_str(), name, v.value()))? {
                    out.push(meta);
                }
            }
            Ok(out)
        })
    }
}

impl EmbeddedStore {
    /// Writes a change of `tenant`'s webhooks, telling the webhook cache
    /// as the writer applies it and once it is committed (see
    /// [`WebhookCache`]).
    async fn write_webhooks<R: Send + 'static>(
        &self,
        tenant: TenantId,
        f: impl FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (applying, committed) = (self.webhooks.clone(), self.webhooks.clone());
        let applied = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let noted = applied.clone();
        let who = tenant.clone();
        let (tx, rx) = oneshot::channel();
        self.queue(
            move |b| {
                applying.changing(&who);
                noted.store(true, std::sync::atomic::Ordering::Relaxed);
                f(b.txn())
            },
            move |outcome| {
                if applied.load(std::sync::atomic::Ordering::Relaxed) {
                    committed.changed(&tenant);
                }
                let _ = tx.send(outcome);
            },
        )
        .await;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The tenant's webhooks for fan-out, filters compiled, and their
    /// version: remembered, or read from committed state (when no change
    /// of them is waiting for its commit) and compiled off the writer.
    async fn hooks(&self, tenant: &TenantId) -> Result<VersionedHooks, StoreError> {
        for _ in 0..20 {
            if let Some(known) = self.webhooks.get(tenant) {
                return Ok(known);
            }
            let (version, uncommitted) = self.webhooks.version(tenant);
            if uncommitted {
                // Committed within the writer's next group commit.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                continue;
            }
            let list: Vec<Webhook> =
                self.read(|txn| list_json(&table!(txn, WEBHOOKS), tenant.as_str()))?;
            let hooks = crate::store::with_filters_off_thread(list).await;
            return Ok(self.webhooks.fill_if(tenant, version, hooks));
        }
        // Changes keep coming: read the list as the writer has it.
        let cache = self.webhooks.clone();
        let who = tenant.clone();
        let (version, list) = self
            .write(move |txn| {
                let list: Vec<Webhook> = list_json(&table!(txn, WEBHOOKS), who.as_str())?;
                Ok((cache.version(&who).0, list))
            })
            .await?;
        Ok((
            version,
            Arc::new(crate::store::with_filters_off_thread(list).await),
        ))
    }

    /// Plans each trigger (fan-out with the tenant's current webhooks) and
    /// writes them all in one transaction; if any tenant's webhooks changed
    /// since its trigger was planned, nothing is written and all are
    /// planned again.
    async fn insert_planned(&self, mut news: Vec<NewEvent>) -> Result<Vec<Ingested>, StoreError> {
        for _ in 0..5 {
            let mut triggers = Vec::with_capacity(news.len());
            for new in news {
                let (version, hooks) = self.hooks(&new.tenant).await?;
                let plan = crate::store::plan::Plan::make(&self.gate, hooks, new).await;
                triggers.push(Trigger::new(plan, version));
            }
            let cache = self.webhooks.clone();
            let written = self
                .write_hot(move |hot| {
                    if !triggers.iter().all(|t| t.current(&cache)) {
                        return Ok(Err(triggers));
                    }
                    triggers
                        .into_iter()
                        .map(|t| ingest(hot, t))
                        .collect::<Result<Vec<_>, _>>()
                        .map(Ok)
                })
                .await?;
            match written {
                Ok(done) => return Ok(done),
                Err(stale) => news = stale.into_iter().map(Trigger::into_new).collect(),
            }
        }
        Err(StoreError::Commit(
            "the tenant's webhooks kept changing during the trigger; nothing was written".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::schedule::slot;
    use super::*;
    use crate::schedule::Schedule;

    fn schedule_keys(store: &EmbeddedStore) -> Vec<(u64, String)> {
        let txn = store.db().begin_read().unwrap();
        let table = txn.open_table(SCHEDULE).unwrap();
        table
            .iter()
            .unwrap()
            .map(|item| {
                let (k, _) = item.unwrap();
                let (due, id) = k.value();
                (due, id.to_owned())
            })
            .collect()
    }

    async fn trigger(
        store: &EmbeddedStore,
        tenant: &TenantId,
        id: &str,
        due: u64,
    ) -> Vec<Delivery> {
        let new = NewEvent {
            id: EventId::from_trusted(id),
            tenant: tenant.clone(),
            event_type: "invoice.paid".into(),
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            occurred_at_ms: 1_000,
            idempotency_key: None,
            fingerprint: id.into(),
            only_webhook: None,
            due_at_ms: due,
        };
        match store.insert_event(new).await.unwrap() {
            Ingested::Created { deliveries, .. } => deliveries,
            _ => panic!("not created"),
        }
    }

    async fn succeed(store: &EmbeddedStore, d: &Delivery) {
        let mut done = d.clone();
        done.status = DeliveryStatus::Succeeded;
        done.next_attempt_at_ms = None;
        done.attempts = 1;
        store.finish_attempt(done, None).await.unwrap();
    }

    /// A trigger leases its deliveries with one schedule entry, removed with
    /// the last one's first attempt; one still in flight when the process
    /// stops is due at the next start on its own, and a lease that comes due
    /// is claimed delivery by delivery.
    #[tokio::test]
    async fn one_lease_entry_covers_a_fresh_events_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            EmbeddedStore::open(dir.path(), std::time::Duration::from_secs(86_400), 1 << 20)
                .unwrap()
        };
        let store = open();
        let tenant = TenantId::from_trusted("t1");
        for i in 0..3 {
            let hook = Webhook::new(
                tenant.clone(),
                format!("https://example.com/{i}"),
                vec!["*".into()],
                0,
            );
            store.put_webhook(hook).await.unwrap();
        }
        let later = crate::clock::now_ms() + 60_000;

        let first = trigger(&store, &tenant, "e1", later).await;
        assert_eq!(first.len(), 3);
        assert_eq!(schedule_keys(&store), vec![(later, "evt/t1/e1".to_owned())]);
        succeed(&store, &first[0]).await;
        succeed(&store, &first[1]).await;
        assert_eq!(
            schedule_keys(&store).len(),
            1,
            "one delivery is still covered"
        );
        succeed(&store, &first[2]).await;
        assert_eq!(schedule_keys(&store), vec![]);
        // Counted from what the writer knew, without reading the records back.
        let stats = store.tenant_stats(&tenant).await.unwrap();
        assert_eq!((stats.total, stats.pending, stats.succeeded), (3, 0, 3));
        for d in &first {
            let stored = store.get_delivery(&tenant, &d.id).await.unwrap().unwrap();
            assert_eq!(stored.status, DeliveryStatus::Succeeded);
        }

        // Two of e2's deliveries are in flight when the process stops.
        let second = trigger(&store, &tenant, "e2", later).await;
        succeed(&store, &second[0]).await;
        drop(store);
        let store = open();
        let now = crate::clock::now_ms();
        let mut claimed = store.claim_due(now + 1, 10, 30_000).await.unwrap();
        claimed.sort();
        let mut expected: Vec<_> = second[1..]
            .iter()
            .map(|d| (tenant.clone(), d.id.clone()))
            .collect();
        expected.sort();
        assert_eq!(claimed, expected);
        for d in &second[1..] {
            let leased = store.get_delivery(&tenant, &d.id).await.unwrap().unwrap();
            assert_eq!(slot(&leased), Some(now + 1 + 30_000));
            succeed(&store, &leased).await;
        }
        assert_eq!(schedule_keys(&store), vec![]);

        // A lease that runs out (say the delivery queue was full): each
        // delivery it still covers is claimed; one retried by hand is not.
        let now = crate::clock::now_ms();
        let third = trigger(&store, &tenant, "e3", now).await;
        let retried = store
            .retry_delivery(&tenant, &third[0].id, now + 500_000)
            .await
            .unwrap();
        assert_eq!(slot(&retried), Some(now + 500_000));
        let claimed = store.claim_due(now + 1, 10, 30_000).await.unwrap();
        assert_eq!(claimed.len(), 2, "{claimed:?}");
        assert!(claimed.iter().all(|(_, id)| id != &third[0].id));
        assert_eq!(schedule_keys(&store).len(), 3, "two leases and the retry");
        let stats = store.tenant_stats(&tenant).await.unwrap();
        assert_eq!((stats.total, stats.pending, stats.succeeded), (9, 3, 6));
    }
}
