//! The embedded store's writer: one thread runs every write closure waiting
//! at a moment in one transaction (the [`Hot`] tables kept open across
//! hot-path writes), sums counters and event types seen in memory for the
//! batch, and commits with one fsync.

use super::*;

/// How many waiting writes share one transaction at most.
pub(super) const MAX_GROUP: usize = 512;

pub(super) type Done = Box<dyn FnOnce(Result<(), String>) + Send>;
pub(super) type Op = Box<dyn for<'b, 't> FnOnce(Option<&'b mut Batch<'t>>) -> Done + Send>;

/// The tables hot-path writes use, open together.
pub(crate) struct Hot<'t> {
    pub events: Table<'t, Keyed2, Json>,
    pub event_times: Table<'t, (&'static str, u64, &'static str), ()>,
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
            event_times: txn.open_table(EVENT_TIMES)?,
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
    pub(super) fn txn(&mut self) -> &'t WriteTransaction {
        self.hot = None;
        self.txn
    }

    pub(super) fn hot(&mut self) -> Result<&mut Hot<'t>, redb::Error> {
        if self.hot.is_none() {
            self.hot = Some(Hot::open(self.txn)?);
        }
        Ok(self.hot.as_mut().expect("just opened"))
    }
}
pub(super) fn write_loop(db: &Database, mut rx: mpsc::Receiver<Op>, metrics: &StoreMetrics) {
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

/// What the group transaction being built on the writer thread has changed
/// in memory: delivery counters and event types seen, each read once, changed
/// by every operation of the batch, and written once just before the commit
/// (see `write_loop`).
#[derive(Default)]
pub(super) struct Pending {
    /// Per tenant, per webhook. Looked up several times per delivery, so
    /// with a fast hash (foldhash) rather than SipHash; the keys are ids.
    stats: foldhash::HashMap<String, foldhash::HashMap<String, DeliveryStats>>,
    event_types: foldhash::HashMap<(String, String), EventTypeSeen>,
}

thread_local! {
    pub(super) static PENDING: RefCell<Pending> = RefCell::default();
}

pub(super) fn update_stats(
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

pub(super) fn saw_event_type(hot: &Hot<'_>, tenant: &str, event: &Event) -> Result<(), StoreError> {
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
pub(super) fn flush_pending(batch: &mut Batch<'_>) -> Result<(), StoreError> {
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
pub(super) fn write_delivery(
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
pub(super) fn finishing(
    delivery: Delivery,
    attempt: Option<Attempt>,
) -> impl FnOnce(&mut Hot<'_>) -> Result<(), StoreError> + Send + 'static {
    let delivery = crate::store::due_if_pending(delivery, crate::clock::now_ms());
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
                    s.note(&crate::model::LastAttempt::of(a));
                }
            },
        )?;
        write_delivery(hot, from, &delivery, &bytes)
    }
}

impl EmbeddedStore {
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

    pub(super) async fn write_batch<R: Send + 'static>(
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
    pub(super) async fn queue<R: Send + 'static>(
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
}
