//! The embedded backend: one redb file in the data directory, owned by this
//! process alone (redb locks it).
//!
//! # Owns
//! - The tables (below) and their encoding: JSON records, but deliveries
//!   and attempts compact binary ([`super::record`]), encoded on the
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
//!   fresh deliveries with one entry ([`crate::schedule::embedded`]); the
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

use super::record::{compact, decode as dec, json as enc};
use super::{IdempotentAnswer, Ingested, NewEvent, Page, PluginUpload, Store, StoreError};
use crate::ids::{DeliveryId, EventId, TenantId, WebhookId};
use crate::metrics::StoreMetrics;
use crate::model::{
    Attempt, Delivery, DeliveryStats, DeliveryStatus, Event, EventTypeSeen, PluginVersion, Tenant,
    Webhook,
};
use crate::schedule::embedded::{
    forget_event_leases, known_fresh_slot, lease_event, moved, release_leases, slot,
};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Json = &'static [u8];
pub(crate) const TENANTS: TableDefinition<&str, Json> = TableDefinition::new("tenants");
pub(crate) const API_KEYS: TableDefinition<&str, &str> = TableDefinition::new("api_keys");
pub(crate) const WEBHOOKS: TableDefinition<(&str, &str), Json> = TableDefinition::new("webhooks");
pub(crate) const EVENTS: TableDefinition<(&str, &str), Json> = TableDefinition::new("events");
pub(crate) const IDEMPOTENCY: TableDefinition<(&str, &str), Json> =
    TableDefinition::new("idempotency");
pub(crate) const DELIVERIES: TableDefinition<&str, Json> = TableDefinition::new("deliveries");
pub(crate) const WEBHOOK_DELIVERIES: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("webhook_deliveries");
pub(crate) const ATTEMPTS: TableDefinition<(&str, u32), Json> = TableDefinition::new("attempts");
pub(crate) const STATS: TableDefinition<(&str, &str), Json> = TableDefinition::new("stats");
pub(crate) const EVENT_TYPES: TableDefinition<(&str, &str), Json> =
    TableDefinition::new("event_types");
pub(crate) const SCHEDULE: TableDefinition<(u64, &str), bool> = TableDefinition::new("schedule");
pub(crate) const PLUGINS: TableDefinition<(&str, &str), u32> = TableDefinition::new("plugins");
pub(crate) const PLUGIN_VERSIONS: TableDefinition<(&str, &str, u32), Json> =
    TableDefinition::new("plugin_versions");
pub(crate) const PLUGIN_BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_blobs");

/// Past every id character, for the upper end of a prefix range.
const MAX_ID: &str = "\u{7f}";
/// How many waiting writes share one transaction at most.
const MAX_GROUP: usize = 512;

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;
type Op = Box<dyn for<'b, 't> FnOnce(Option<&'b mut Batch<'t>>) -> Done + Send>;

type Keyed2 = (&'static str, &'static str);

/// The tables hot-path writes use, open together.
pub(crate) struct Hot<'t> {
    pub events: Table<'t, Keyed2, Json>,
    pub idempotency: Table<'t, Keyed2, Json>,
    pub event_types: Table<'t, Keyed2, Json>,
    pub webhook_deliveries: Table<'t, Keyed2, ()>,
    pub deliveries: Table<'t, &'static str, Json>,
    pub attempts: Table<'t, (&'static str, u32), Json>,
    pub stats: Table<'t, Keyed2, Json>,
    pub schedule: Table<'t, (u64, &'static str), bool>,
}

impl<'t> Hot<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<Hot<'t>, redb::Error> {
        Ok(Hot {
            events: txn.open_table(EVENTS)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            event_types: txn.open_table(EVENT_TYPES)?,
            webhook_deliveries: txn.open_table(WEBHOOK_DELIVERIES)?,
            deliveries: txn.open_table(DELIVERIES)?,
            attempts: txn.open_table(ATTEMPTS)?,
            stats: txn.open_table(STATS)?,
            schedule: txn.open_table(SCHEDULE)?,
        })
    }
}

/// One group transaction as its closures see it: the transaction, and the
/// [`Hot`] tables while hot-path writes follow each other (opening a table
/// is a lookup in redb's table tree, closing it a write there).
pub(crate) struct Batch<'t> {
    txn: &'t WriteTransaction,
    hot: Option<Hot<'t>>,
}

impl<'t> Batch<'t> {
    /// The transaction, for a closure that opens tables itself.
    fn txn(&mut self) -> &'t WriteTransaction {
        self.hot = None;
        self.txn
    }

    fn hot(&mut self) -> Result<&mut Hot<'t>, redb::Error> {
        if self.hot.is_none() {
            self.hot = Some(Hot::open(self.txn)?);
        }
        Ok(self.hot.as_mut().expect("just opened"))
    }
}
use super::{FanOutGate, VersionedHooks, WebhookCache};

pub struct EmbeddedStore {
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

    /// Runs `f` in the next group transaction; answers once that is durable.
    pub(crate) async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.write_batch(move |b| f(b.txn())).await
    }

    /// [`Self::write`] for a closure that needs only the [`Hot`] tables.
    pub(crate) async fn write_hot<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Hot<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.write_batch(move |b| f(b.hot()?)).await
    }

    async fn write_batch<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue(f, move |outcome| {
            let _ = tx.send(outcome);
        })
        .await;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Hands `f` to the writer, to run in the next group transaction, and
    /// returns as soon as the writer has it. `answer` is called exactly
    /// once: with the outcome when that group is committed (or failed), or
    /// at once with [`StoreError::Closed`] if the store is closing.
    async fn queue<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<R, StoreError> + Send + 'static,
        answer: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) {
        let op: Op = Box::new(move |batch| {
            let result = match batch {
                Some(batch) => f(batch),
                None => Err(StoreError::Closed),
            };
            Box::new(move |committed: Result<(), String>| {
                answer(committed.map_err(StoreError::Commit).and(result));
            })
        });
        let refused = match &self.writer {
            Some(writer) => writer.send(op).await.err().map(|refused| refused.0),
            None => Some(op),
        };
        // Run without a batch, the write answers `Closed` itself.
        if let Some(op) = refused {
            op(None)(Ok(()));
        }
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

fn write_loop(db: &Database, mut rx: mpsc::Receiver<Op>, metrics: &StoreMetrics) {
    while let Some(first) = rx.blocking_recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        match db.begin_write() {
            Ok(txn) => {
                let mut batch = Batch {
                    txn: &txn,
                    hot: None,
                };
                let done: Vec<Done> = ops.into_iter().map(|op| op(Some(&mut batch))).collect();
                let flushed = flush_pending(&mut batch);
                drop(batch);
                let started = std::time::Instant::now();
                let committed = match flushed {
                    Ok(()) => txn.commit().map_err(|e| e.to_string()),
                    // Dropping the transaction aborts it: nothing is half-counted.
                    Err(e) => Err(format!("writing counters: {e}")),
                };
                match &committed {
                    Ok(()) => {
                        metrics.commits.inc();
                        metrics.writes.inc_by(done.len() as u64);
                        metrics
                            .commit_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        metrics.failed_commits.inc();
                        tracing::error!(error = %e, "store commit failed");
                        forget_event_leases();
                    }
                }
                for d in done {
                    d(committed.clone());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store transaction could not start");
                for op in ops {
                    op(None)(Err(e.to_string()));
                }
            }
        }
    }
}

macro_rules! table {
    ($txn:expr, $def:expr) => {
        $txn.open_table($def).map_err(redb::Error::from)?
    };
}

fn get_json<K: redb::Key + 'static, T: DeserializeOwned>(
    table: &impl ReadableTable<K, Json>,
    key: K::SelfType<'_>,
) -> Result<Option<T>, StoreError> {
    match table.get(key).map_err(redb::Error::from)? {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

/// Every value under `(prefix, *)` of a two-part key.
fn list_json<T: DeserializeOwned>(
    table: &impl ReadableTable<(&'static str, &'static str), Json>,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for item in table
        .range((prefix, "")..(prefix, MAX_ID))
        .map_err(redb::Error::from)?
    {
        let (_, v) = item.map_err(redb::Error::from)?;
        out.push(dec(v.value())?);
    }
    Ok(out)
}

fn plugin_with_bytes(
    txn: &redb::ReadTransaction,
    tenant: &str,
    name: &str,
    version: u32,
) -> Result<Option<(PluginVersion, Vec<u8>)>, StoreError> {
    let Some(meta) =
        get_json::<_, PluginVersion>(&table!(txn, PLUGIN_VERSIONS), (tenant, name, version))?
    else {
        return Ok(None);
    };
    let bytes = table!(txn, PLUGIN_BLOBS)
        .get(meta.sha256.as_str())
        .map_err(redb::Error::from)?
        .ok_or(StoreError::NotFound("plugin component"))?
        .value()
        .to_vec();
    Ok(Some((meta, bytes)))
}

/// What the group transaction being built on the writer thread has changed
/// in memory: delivery counters and event types seen, each read once, changed
/// by every operation of the batch, and written once just before the commit
/// (see `write_loop`).
#[derive(Default)]
struct Pending {
    /// Per tenant, per webhook. Looked up several times per delivery, so
    /// with a fast hash (foldhash) rather than SipHash; the keys are ids.
    stats: foldhash::HashMap<String, foldhash::HashMap<String, DeliveryStats>>,
    event_types: foldhash::HashMap<(String, String), EventTypeSeen>,
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::default();
}

fn update_stats(
    hot: &Hot<'_>,
    tenant: &str,
    webhook: &str,
    f: impl FnOnce(&mut DeliveryStats),
) -> Result<(), StoreError> {
    PENDING.with(|pending| {
        let stats = &mut pending.borrow_mut().stats;
        // Looked up by reference first: most calls find the webhook's counters.
        let tenant_stats = match stats.get_mut(tenant) {
            Some(t) => t,
            None => stats.entry(tenant.to_owned()).or_default(),
        };
        let stats = match tenant_stats.get_mut(webhook) {
            Some(s) => s,
            None => {
                let current: Option<DeliveryStats> = get_json(&hot.stats, (tenant, webhook))?;
                tenant_stats
                    .entry(webhook.to_owned())
                    .or_insert(current.unwrap_or_default())
            }
        };
        f(stats);
        Ok(())
    })
}

fn saw_event_type(hot: &Hot<'_>, tenant: &str, event: &Event) -> Result<(), StoreError> {
    PENDING.with(|pending| {
        let types = &mut pending.borrow_mut().event_types;
        let key = (tenant.to_owned(), event.event_type.clone());
        let seen = match types.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let current = get_json(&hot.event_types, (tenant, event.event_type.as_str()))?;
                e.insert(current.unwrap_or(EventTypeSeen {
                    event_type: event.event_type.clone(),
                    count: 0,
                    last_seen_ms: 0,
                }))
            }
        };
        seen.count += 1;
        seen.last_seen_ms = seen.last_seen_ms.max(event.occurred_at_ms);
        Ok(())
    })
}

/// Writes what the batch changed in memory; the last step before a commit.
fn flush_pending(batch: &mut Batch<'_>) -> Result<(), StoreError> {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.stats.is_empty() && pending.event_types.is_empty() {
        return Ok(());
    }
    let hot = batch.hot()?;
    for (tenant, webhooks) in &pending.stats {
        for (webhook, stats) in webhooks {
            hot.stats
                .insert((tenant.as_str(), webhook.as_str()), enc(stats).as_slice())
                .map_err(redb::Error::from)?;
        }
    }
    for ((tenant, event_type), seen) in &pending.event_types {
        hot.event_types
            .insert((tenant.as_str(), event_type.as_str()), enc(seen).as_slice())
            .map_err(redb::Error::from)?;
    }
    Ok(())
}

/// Writes `d` (encoded: `bytes`) over its stored record, whose schedule
/// slot was `from`, moving it in the schedule.
fn write_delivery(
    hot: &mut Hot<'_>,
    from: Option<u64>,
    d: &Delivery,
    bytes: &[u8],
) -> Result<(), StoreError> {
    hot.deliveries
        .insert(d.id.as_str(), bytes)
        .map_err(redb::Error::from)?;
    moved(hot, from, d)?;
    Ok(())
}

/// The write that records the end of an attempt (see
/// [`Store::finish_attempt`]), encoded here, on the caller's thread: the
/// writer only checks and inserts.
fn finishing(
    delivery: Delivery,
    attempt: Option<Attempt>,
) -> impl FnOnce(&mut Hot<'_>) -> Result<(), StoreError> + Send + 'static {
    let delivery = super::due_if_pending(delivery, crate::clock::now_ms());
    let bytes = compact(&delivery);
    let attempt = attempt.map(|a| {
        let encoded = compact(&a);
        (a, encoded)
    });
    move |hot| {
        // A first attempt's delivery is usually still as the trigger wrote
        // it, which the writer knows without reading it back.
        let (previous_status, from) = match known_fresh_slot(&delivery) {
            Some(due) => (DeliveryStatus::Pending, Some(due)),
            None => {
                let previous: Option<Delivery> = get_json(&hot.deliveries, delivery.id.as_str())?;
                let previous = previous.ok_or(StoreError::NotFound("delivery"))?;
                (previous.status, slot(&previous))
            }
        };
        if let Some((a, encoded)) = &attempt {
            hot.attempts
                .insert((a.delivery_id.as_str(), a.attempt), encoded.as_slice())
                .map_err(redb::Error::from)?;
        }
        update_stats(
            hot,
            delivery.tenant.as_str(),
            delivery.webhook_id.as_str(),
            |s| {
                if previous_status != delivery.status {
                    s.count(previous_status, -1);
                    s.count(delivery.status, 1);
                }
                if let Some((a, _)) = &attempt {
                    s.attempts += 1;
                    s.attempt_duration_ms_total += a.duration_ms;
                }
            },
        )?;
        write_delivery(hot, from, &delivery, &bytes)
    }
}

/// The key of the idempotency record every event has, under its id; it also
/// lists the event's deliveries.
fn id_key(event_id: &str) -> String {
    format!("id:{event_id}")
}

/// A trigger as the writer needs it, planned on the caller's side so that
/// the single writer only checks and inserts: the event record encoded, and
/// the fan-out made (off the async workers when filters run, see
/// [`FanOutGate`]) with the tenant's webhooks at `version`. The writer
/// writes it only if that is still the tenant's version; otherwise it hands
/// it back to be planned again. The writer never fans out.
pub(crate) struct Trigger {
    event: Event,
    event_bytes: Vec<u8>,
    idempotency_key: Option<String>,
    fingerprint: String,
    only_webhook: Option<WebhookId>,
    due_at_ms: u64,
    version: i64,
    fanned: FanOut,
}

struct FanOut {
    targets: Vec<Arc<Webhook>>,
    filtered: u32,
    /// Each new delivery with its encoded record.
    deliveries: Vec<(Delivery, Vec<u8>)>,
}

impl Trigger {
    fn new(new: NewEvent, version: i64, targets: Vec<Arc<Webhook>>, filtered: u32) -> Trigger {
        let event = Event {
            id: new.id,
            tenant: new.tenant,
            event_type: new.event_type,
            data: new.data,
            occurred_at_ms: new.occurred_at_ms,
        };
        let deliveries = targets
            .iter()
            .map(|w| {
                let d = super::new_delivery(&event, w, new.due_at_ms);
                let bytes = compact(&d);
                (d, bytes)
            })
            .collect();
        Trigger {
            event_bytes: enc(&event),
            event,
            idempotency_key: new.idempotency_key,
            fingerprint: new.fingerprint,
            only_webhook: new.only_webhook,
            due_at_ms: new.due_at_ms,
            version,
            fanned: FanOut {
                targets,
                filtered,
                deliveries,
            },
        }
    }

    /// The trigger as it came, to be planned again.
    fn into_new(self) -> NewEvent {
        NewEvent {
            id: self.event.id,
            tenant: self.event.tenant,
            event_type: self.event.event_type,
            data: self.event.data,
            occurred_at_ms: self.event.occurred_at_ms,
            idempotency_key: self.idempotency_key,
            fingerprint: self.fingerprint,
            only_webhook: self.only_webhook,
            due_at_ms: self.due_at_ms,
        }
    }

    /// True while the tenant's webhooks are the ones it was planned with.
    fn current(&self, cache: &WebhookCache) -> bool {
        cache.version(&self.event.tenant).0 == self.version
    }
}

/// Writes a planned trigger (whose version the writer checked).
fn ingest(hot: &mut Hot<'_>, t: Trigger) -> Result<Ingested, StoreError> {
    let Trigger {
        event,
        event_bytes,
        idempotency_key,
        fingerprint,
        due_at_ms,
        fanned,
        ..
    } = t;
    let tenant = event.tenant.as_str();
    let id_key = id_key(event.id.as_str());
    let header_key = idempotency_key.as_ref().map(|k| format!("key:{k}"));
    for key in header_key.iter().chain(std::iter::once(&id_key)) {
        if let Some(prev) =
            get_json::<_, IdempotentAnswer>(&hot.idempotency, (tenant, key.as_str()))?
        {
            return Ok(if prev.fingerprint == fingerprint {
                Ingested::Replayed(prev)
            } else {
                Ingested::KeyReused(prev)
            });
        }
    }

    hot.events
        .insert((tenant, event.id.as_str()), event_bytes.as_slice())
        .map_err(redb::Error::from)?;
    let mut answer = IdempotentAnswer {
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        deliveries: fanned.deliveries.len() as u32,
        fingerprint,
        at_ms: event.occurred_at_ms,
        delivery_ids: Vec::new(),
    };
    if let Some(key) = &header_key {
        hot.idempotency
            .insert((tenant, key.as_str()), enc(&answer).as_slice())
            .map_err(redb::Error::from)?;
    }
    answer.delivery_ids = fanned
        .deliveries
        .iter()
        .map(|(d, _)| d.id.clone())
        .collect();
    hot.idempotency
        .insert((tenant, id_key.as_str()), enc(&answer).as_slice())
        .map_err(redb::Error::from)?;
    saw_event_type(hot, tenant, &event)?;
    for (d, bytes) in &fanned.deliveries {
        let (id, hook) = (d.id.as_str(), d.webhook_id.as_str());
        hot.webhook_deliveries
            .insert((hook, id), ())
            .map_err(redb::Error::from)?;
        update_stats(hot, tenant, hook, |s| {
            s.total += 1;
            s.pending += 1;
        })?;
        hot.deliveries
            .insert(id, bytes.as_slice())
            .map_err(redb::Error::from)?;
    }
    if !fanned.deliveries.is_empty() {
        // One leased entry for all of them (see `crate::schedule::embedded`).
        let members = fanned.deliveries.iter().map(|(d, _)| d.id.as_str());
        lease_event(hot, tenant, event.id.as_str(), due_at_ms, members)?;
    }
    Ok(Ingested::Created {
        event,
        deliveries: fanned.deliveries.into_iter().map(|(d, _)| d).collect(),
        webhooks: fanned.targets,
        filtered: fanned.filtered,
    })
}

/// The deliveries an event's `id:` record (`idem`) lists: those it created.
pub(crate) fn listed_deliveries(
    idem: &impl ReadableTable<Keyed2, Json>,
    tenant: &str,
    event_id: &str,
) -> Result<Vec<DeliveryId>, StoreError> {
    let answer: Option<IdempotentAnswer> = get_json(idem, (tenant, id_key(event_id).as_str()))?;
    Ok(answer.map(|a| a.delivery_ids).unwrap_or_default())
}

/// When an engine-minted id (`dlv_<ulid>`) was created.
fn id_time_ms(id: &str) -> Option<u64> {
    let (_, ulid) = id.split_once('_')?;
    ulid::Ulid::from_string(&ulid.to_uppercase())
        .ok()
        .map(|u| u.timestamp_ms())
}

/// Retention: see [`Store::sweep`]. Deliveries are found by id (ids sort by
/// time); events and idempotency keys by a scan (run rarely).
fn sweep(txn: &WriteTransaction, cutoff_ms: u64) -> Result<u64, StoreError> {
    let mut removed = 0u64;
    let old: Vec<Delivery> = {
        let table = table!(txn, DELIVERIES);
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            if id_time_ms(k.value()).is_none_or(|t| t >= cutoff_ms) {
                break;
            }
            let d: Delivery = dec(v.value())?;
            if d.status != DeliveryStatus::Pending {
                out.push(d);
            }
        }
        out
    };
    for d in &old {
        let id = d.id.as_str();
        table!(txn, DELIVERIES).remove(id)?;
        table!(txn, WEBHOOK_DELIVERIES).remove((d.webhook_id.as_str(), id))?;
        table!(txn, ATTEMPTS).retain_in((id, 0)..=(id, u32::MAX), |_, _| false)?;
        removed += 1;
    }
    let old_events: Vec<(String, String)> = {
        let events = table!(txn, EVENTS);
        let (deliveries, idem) = (table!(txn, DELIVERIES), table!(txn, IDEMPOTENCY));
        let mut out = Vec::new();
        for item in events.iter()? {
            let (k, v) = item?;
            let e: Event = dec(v.value())?;
            let (t, id) = k.value();
            if e.occurred_at_ms >= cutoff_ms {
                continue;
            }
            let mut kept = false;
            for d in listed_deliveries(&idem, t, id)? {
                kept |= deliveries.get(d.as_str())?.is_some();
            }
            if !kept {
                out.push((t.to_owned(), id.to_owned()));
            }
        }
        out
    };
    for (t, id) in &old_events {
        table!(txn, EVENTS).remove((t.as_str(), id.as_str()))?;
        removed += 1;
    }
    let old_keys: Vec<(String, String)> = {
        let (idem, events) = (table!(txn, IDEMPOTENCY), table!(txn, EVENTS));
        let mut out = Vec::new();
        for item in idem.iter()? {
            let (k, v) = item?;
            let answer: IdempotentAnswer = dec(v.value())?;
            let (t, key) = k.value();
            // The record under the event id lists its deliveries: it goes
            // with the event.
            let event_kept = key.starts_with("id:")
                && events
                    .get((t, answer.event_id.as_str()))
                    .map_err(redb::Error::from)?
                    .is_some();
            if answer.at_ms < cutoff_ms && !event_kept {
                out.push((t.to_owned(), key.to_owned()));
            }
        }
        out
    };
    for (t, key) in &old_keys {
        table!(txn, IDEMPOTENCY).remove((t.as_str(), key.as_str()))?;
        removed += 1;
    }
    Ok(removed)
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
                    super::unrecorded(&id, &e);
                }
            },
        )
        .await;
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

    async fn tenant_stats(&self, tenant: &TenantId) -> Result<DeliveryStats, StoreError> {
        self.read(|txn| {
            let all: Vec<DeliveryStats> = list_json(&table!(txn, STATS), tenant.as_str())?;
            let mut sum = DeliveryStats::default();
            all.iter().for_each(|s| sum.add(s));
            Ok(sum)
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
            let hooks = super::with_filters_off_thread(list).await;
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
            Arc::new(super::with_filters_off_thread(list).await),
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
                let (new, targets, filtered) = super::plan_fan_out(&self.gate, hooks, new).await;
                triggers.push(Trigger::new(new, version, targets, filtered));
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
    use super::*;
    use crate::schedule::Schedule;
    use crate::schedule::embedded::slot;

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
