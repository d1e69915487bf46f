//! Delivery: taking due deliveries, shaping each (native default format or
//! the webhook's plugin), signing, sending, and recording the attempt with the
//! next step (done, retry at a time, or failed).
//!
//! Two ways in: fresh deliveries are handed over by the trigger API right
//! after they are durable (already leased to this process, so they go out at
//! once), and a dispatcher claims whatever the schedule says is due (retries,
//! manual retries, and leases that ran out). Each delivery is admitted to
//! its origin ([`admission`]: at most twice `origin_concurrency` attempt
//! tasks per origin; the rest wait as jobs, and a finishing task runs its
//! origin's next one): a fresh one before its task starts, a claimed one
//! once its records are read. An attempt shapes its request,
//! then takes a slot to its webhook's origin ([`origins`]), holds it while
//! sending, and records its result after giving it back. A final result
//! (succeeded, failed, skipped) is handed to the store without waiting for
//! it to be durable (`Store::finish_final`); a retry's is waited for, so the
//! dispatcher, woken then, sees it. A fresh event's
//! deliveries to several webhooks with the same plugin are shaped by one
//! plugin call ([`shared`]), and its default-format deliveries send one
//! body, made once by the first of them to need it (claimed deliveries
//! make their own). A delivery is
//! attempted by one task at a time in this process; across a crash it may be
//! attempted twice (see [`crate::schedule`]). A request whose signed time is
//! old when it gets its slot (it waited for the slot, or for admission after
//! its event's shared call shaped it) is shaped twice (see `RESHAPE_AFTER`).

mod admission;
pub mod client;
#[cfg(feature = "faults")]
mod faults;
pub mod origins;
pub mod request;
pub mod shape;
mod shared;
pub mod sign;
pub mod ssrf;

use crate::Shutdown;
use crate::clock::now_ms;
use crate::ids::{DeliveryId, TenantId};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::model::{Attempt, AttemptOutcome, Delivery, DeliveryStatus, Event, Webhook};
use crate::plugin::{LoadedPlugin, PluginRuntime};
use crate::schedule::Schedule;
use crate::schedule::policy::{next_delay, parse_retry_after};
use crate::store::Store;
use admission::{Admission, Admitted, Ticket};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use bytes::Bytes;
use client::{HttpClient, SendError};
use futures_util::FutureExt;
use origins::{Origins, Target};
use prometheus_client::metrics::gauge::Gauge;
use request::{AttemptContext, Shaped};
use shared::SharedShaping;
use std::any::Any;
use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

/// How many due deliveries one claim takes at most.
const CLAIM_BATCH: usize = 256;
/// Deliveries waiting to be taken, at most: fresh ones in the queue from
/// the trigger API, and again any waiting for their origin ([`admission`]).
const FRESH_QUEUE: usize = 65_536;
/// Longest the dispatcher sleeps without looking at the schedule.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// How long shutdown waits for attempts in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// A request that waited longer than this for a slot to its origin is
/// shaped again before it is sent, so its timestamp is fresh.
const RESHAPE_AFTER: Duration = Duration::from_secs(1);

/// A delivery to attempt: just its id when claimed from the schedule, or the
/// records themselves when the trigger API hands over what it just wrote
/// (delivery, event, the webhook as fan-out saw it, and the shaping it
/// shares with the event's other deliveries: the same plugin's call, or the
/// default format's body), so the first attempt reads nothing back from the
/// store.
enum Job {
    Claimed(TenantId, DeliveryId),
    Fresh(Ready),
}

/// A delivery with what its attempt needs: handed over fresh, or read back
/// after a claim (then it shares nothing).
struct Ready {
    delivery: Box<Delivery>,
    event: Arc<Event>,
    webhook: Arc<Webhook>,
    target: Target,
    shared: Option<(Arc<SharedShaping>, usize)>,
    /// The event's default-format body, made by the first of its
    /// deliveries to need it.
    envelope: Arc<OnceLock<Bytes>>,
    /// A claimed delivery waiting for admission keeps the permit its task
    /// had: claims stay bounded by `delivery_concurrency`, as when each
    /// waited for its slot as a task.
    permit: Option<OwnedSemaphorePermit>,
}

/// What an attempt shares with its event's other deliveries: the plugin
/// call and its place in it (fresh deliveries only), and the default
/// format's body (a claimed delivery has one of its own).
type Sharing<'a> = (Option<(Arc<SharedShaping>, usize)>, &'a OnceLock<Bytes>);

pub struct Deliverer {
    store: Arc<dyn Store>,
    schedule: Arc<dyn Schedule>,
    plugins: Arc<PluginRuntime>,
    client: HttpClient,
    origins: Origins,
    metrics: Arc<Metrics>,
    lease: Duration,
    permits: Arc<Semaphore>,
    concurrency: usize,
    wake: Notify,
    fresh_tx: mpsc::Sender<Job>,
    fresh_rx: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    admission: Admission<Ready>,
}

impl Deliverer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        schedule: Arc<dyn Schedule>,
        plugins: Arc<PluginRuntime>,
        client: HttpClient,
        metrics: Arc<Metrics>,
        lease: Duration,
        concurrency: usize,
        origin_concurrency: usize,
    ) -> Self {
        let (fresh_tx, fresh_rx) = mpsc::channel(FRESH_QUEUE);
        let admission = Admission::new(
            2 * origin_concurrency,
            FRESH_QUEUE,
            metrics.waiting_for_origin.clone(),
        );
        Deliverer {
            store,
            schedule,
            plugins,
            client,
            origins: Origins::new(origin_concurrency),
            metrics,
            lease,
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            wake: Notify::new(),
            fresh_tx,
            fresh_rx: tokio::sync::Mutex::new(fresh_rx),
            admission,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Hands over deliveries that were just written, leased to this process.
    /// If the queue is full they go out when their lease runs out instead.
    /// `webhooks[i]` is the webhook of `deliveries[i]`.
    pub fn submit(
        &self,
        event: Arc<Event>,
        deliveries: Vec<Delivery>,
        webhooks: Vec<Arc<Webhook>>,
    ) {
        let mut shared = SharedShaping::group(&event, &deliveries, &webhooks).into_iter();
        let envelope = Arc::new(OnceLock::new());
        for (d, webhook) in deliveries.into_iter().zip(webhooks) {
            let job = Job::Fresh(Ready {
                delivery: Box::new(d),
                event: event.clone(),
                target: Target::of(&webhook.url),
                webhook,
                shared: shared.next().flatten(),
                envelope: envelope.clone(),
                permit: None,
            });
            if let Err(e) = self.fresh_tx.try_send(job)
                && let Job::Fresh(fresh) = e.into_inner()
            {
                tracing::warn!(delivery = %fresh.delivery.id, "delivery queue full; it goes out when its lease ends");
            }
        }
    }

    /// Tells the dispatcher the schedule changed (e.g. a manual retry is due now).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown`, then waits (up to a bound) for attempts in flight.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut fresh = self.fresh_rx.lock().await;
        // The schedule is looked at when something may be due (its earliest
        // due time, a wake-up, or at least every MAX_IDLE), never once per
        // fresh delivery: those come straight from the trigger API.
        let mut next_look = tokio::time::Instant::now();
        let mut jobs = Vec::with_capacity(CLAIM_BATCH);
        loop {
            if tokio::time::Instant::now() >= next_look {
                let wait = match self.claim_due().await {
                    Ok(true) => Duration::ZERO,
                    Ok(false) => match self.schedule.next_due_ms().await {
                        Ok(Some(due)) => {
                            Duration::from_millis(due.saturating_sub(now_ms())).min(MAX_IDLE)
                        }
                        _ => MAX_IDLE,
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "claiming due deliveries failed");
                        MAX_IDLE
                    }
                };
                next_look = tokio::time::Instant::now() + wait;
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                // Every job waiting is taken at once: one turn of this loop
                // (and of its timer) per burst, not per delivery.
                1.. = fresh.recv_many(&mut jobs, CLAIM_BATCH) => {
                    for job in jobs.drain(..) {
                        self.clone().spawn(job).await;
                    }
                }
                _ = self.wake.notified() => next_look = tokio::time::Instant::now(),
                _ = tokio::time::sleep_until(next_look) => {}
            }
        }
        let dropped = self.admission.close();
        if dropped > 0 {
            tracing::info!(
                dropped,
                "deliveries waiting for their origin go out when their leases end"
            );
        }
        let drained =
            tokio::time::timeout(DRAIN, self.permits.acquire_many(self.concurrency as u32)).await;
        if drained.is_err() {
            tracing::warn!("stopped with attempts in flight; they are retried after restart");
        }
    }

    /// Claims one batch of due deliveries; true if the batch was full.
    async fn claim_due(self: &Arc<Self>) -> Result<bool, crate::store::StoreError> {
        let free = self.permits.available_permits().min(CLAIM_BATCH);
        if free == 0 {
            return Ok(false);
        }
        let ids = self
            .schedule
            .claim_due(now_ms(), free, self.lease.as_millis() as u64)
            .await?;
        // An event lease claimed as one entry may bring several deliveries.
        let full = ids.len() >= free;
        for (tenant, id) in ids {
            self.clone().spawn(Job::Claimed(tenant, id)).await;
        }
        Ok(full)
    }

    /// Starts an attempt task for `job` once a permit is free; a fresh
    /// delivery first needs admission to its origin, or waits there (a
    /// claimed one is admitted once its task has read its records).
    async fn spawn(self: Arc<Self>, job: Job) {
        let (job, ticket) = match job {
            Job::Fresh(fresh) => match self.admission.admit(fresh.target.origin.clone(), fresh) {
                Admitted::Now(fresh, ticket) => (Job::Fresh(fresh), Some(ticket)),
                Admitted::Queued => return,
                Admitted::Refused(fresh) => {
                    tracing::warn!(delivery = %fresh.delivery.id, "delivery queue full; it goes out when its lease ends");
                    return;
                }
            },
            claimed => (claimed, None),
        };
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        tokio::spawn(async move { self.run_attempts(job, ticket, permit).await });
    }

    /// Runs `job`, then, while its origin has deliveries waiting for
    /// admission, the next of them with the same ticket (and permit). A
    /// claimed job comes without a ticket: once its records are read it is
    /// admitted, or left waiting for its origin (and this task ends).
    async fn run_attempts(
        &self,
        job: Job,
        ticket: Option<Ticket<Ready>>,
        permit: OwnedSemaphorePermit,
    ) {
        let (mut ready, mut ticket, _permit) = match job {
            Job::Fresh(ready) => (ready, ticket, Some(permit)),
            Job::Claimed(tenant, id) => match self.load(&tenant, &id).await {
                Ok(Some(ready)) => match self.admit_claimed(ready, permit) {
                    Some(admitted) => admitted,
                    None => return,
                },
                Ok(None) => return,
                Err(e) => return crate::store::unrecorded(&id, &e),
            },
        };
        loop {
            let in_flight = InFlight::count(&self.metrics.in_flight);
            let (id, webhook) = (ready.delivery.id.clone(), ready.webhook.clone());
            match AssertUnwindSafe(self.attempt(ready)).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => crate::store::unrecorded(&id, &e),
                Err(panic) => {
                    let what = panic_message(&*panic);
                    self.record_panic(&webhook.tenant, &id, what).await
                }
            }
            drop(in_flight);
            match self.next_of_origin(&mut ticket) {
                Some(next) => ready = next,
                None => return,
            }
        }
    }

    /// Admits a claimed delivery, read back, to its origin. One that must
    /// wait keeps `permit` while it waits, so claims stay bounded by
    /// `delivery_concurrency` (and the task ends: none). Otherwise, what
    /// to run now, its ticket (none when too many wait: it is attempted
    /// anyway, waiting for a slot as a task) and the permit to hold.
    fn admit_claimed(
        &self,
        mut ready: Ready,
        permit: OwnedSemaphorePermit,
    ) -> Option<(Ready, Option<Ticket<Ready>>, Option<OwnedSemaphorePermit>)> {
        ready.permit = Some(permit);
        let (mut ready, ticket) = match self.admission.admit(ready.target.origin.clone(), ready) {
            Admitted::Now(ready, ticket) => (ready, Some(ticket)),
            Admitted::Queued => return None,
            Admitted::Refused(ready) => (ready, None),
        };
        let permit = ready.permit.take();
        Some((ready, ticket, permit))
    }

    /// The next delivery waiting for the ticket's origin, with the ticket
    /// handed on to it; none (and the ticket given back) when none waits.
    /// One that waited for over half its lease is passed over: it goes out
    /// when that ends (an attempt started now could outlive it).
    fn next_of_origin(&self, ticket: &mut Option<Ticket<Ready>>) -> Option<Ready> {
        loop {
            let (next, next_ticket) = ticket.take()?.finish()?;
            *ticket = Some(next_ticket);
            if in_lease(&next.delivery, self.lease, now_ms()) {
                return Some(next);
            }
            tracing::debug!(delivery = %next.delivery.id, "waited too long for its origin; it goes out when its lease ends");
        }
    }

    /// A claimed delivery's records, read back: what its attempt needs, or
    /// none if there is nothing to attempt (it is no longer pending, or its
    /// webhook or event is gone, and it was given up here).
    async fn load(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Option<Ready>, crate::store::StoreError> {
        let Some(d) = self.store.get_delivery(tenant, id).await? else {
            return Ok(None);
        };
        if d.status != DeliveryStatus::Pending {
            return Ok(None);
        }
        let webhook = self.store.get_webhook(&d.tenant, &d.webhook_id).await?;
        let event = self.store.get_event(&d.tenant, &d.event_id).await?;
        let (webhook, event) = match (webhook, event) {
            (Some(w), Some(e)) => (w, e),
            (None, _) => return self.give_up(d, "webhook was deleted").await.map(|()| None),
            (_, None) => {
                return self
                    .give_up(d, "event no longer exists")
                    .await
                    .map(|()| None);
            }
        };
        Ok(Some(Ready {
            target: Target::of(&webhook.url),
            delivery: Box::new(d),
            event: Arc::new(event),
            webhook: Arc::new(webhook),
            shared: None,
            envelope: Arc::default(),
            permit: None,
        }))
    }

    /// One attempt of one delivery, start to finish.
    async fn attempt(&self, ready: Ready) -> Result<(), crate::store::StoreError> {
        let Ready {
            delivery,
            event,
            webhook,
            target,
            shared,
            envelope,
            // One waiting for admission held a permit; the task that runs
            // it has its own.
            permit: _,
        } = ready;
        let mut delivery = *delivery;
        #[cfg(feature = "faults")]
        faults::attempt(&webhook);
        if !webhook.active {
            return self.give_up(delivery, "webhook is disabled").await;
        }

        // An attempt never outlives its lease, or another engine could claim
        // the delivery while this one is still sending it: waiting for a slot
        // to the origin and the exchange itself both fit in it.
        let budget = self.lease.saturating_sub(Duration::from_secs(1));
        let timeout = Duration::from_millis(webhook.timeout_ms).min(budget);
        let slot_until = tokio::time::Instant::now() + (budget - timeout);

        let started_at_ms = now_ms();
        let ctx = AttemptContext::new(delivery.id.as_str(), delivery.attempts + 1, started_at_ms);
        let mut attempt = Attempt {
            delivery_id: delivery.id.clone(),
            attempt: ctx.attempt,
            started_at_ms,
            duration_ms: 0,
            status_code: None,
            response_body: None,
            error: None,
            plugin: None,
            outcome: AttemptOutcome::NetworkError,
        };
        let retry_after = self
            .shape_and_send(
                &event,
                (&webhook, &target),
                (ctx, (shared, &envelope)),
                (timeout, slot_until),
                &mut delivery,
                &mut attempt,
            )
            .await;
        self.record(delivery, attempt, &webhook, retry_after).await
    }

    /// A panic in an attempt (an engine bug, never a plugin's: a plugin's
    /// trap is an error) ends as a failed attempt with the reason, retried
    /// on the webhook's schedule, not as a delivery left leased with no
    /// attempt recorded. The delivery is read back as stored: what the
    /// attempt held went with its task.
    async fn record_panic(&self, tenant: &TenantId, id: &DeliveryId, what: String) {
        tracing::error!(delivery = %id, panic = %what, "a delivery attempt panicked; recorded as failed");
        let ready = match self.load(tenant, id).await {
            Ok(Some(ready)) => ready,
            Ok(None) => return,
            Err(e) => return crate::store::unrecorded(id, &e),
        };
        let delivery = *ready.delivery;
        let now = now_ms();
        let attempt = Attempt {
            delivery_id: delivery.id.clone(),
            attempt: delivery.attempts + 1,
            started_at_ms: now,
            duration_ms: 0,
            status_code: None,
            response_body: None,
            error: Some(format!("the engine failed during this attempt: {what}")),
            plugin: None,
            outcome: AttemptOutcome::EngineError,
        };
        if let Err(e) = self.record(delivery, attempt, &ready.webhook, None).await {
            crate::store::unrecorded(id, &e);
        }
    }

    /// Records an attempt's end and decides what follows: done, a retry
    /// at a time, or failed (and the webhook disabled on `410 Gone`).
    async fn record(
        &self,
        mut delivery: Delivery,
        attempt: Attempt,
        webhook: &Webhook,
        retry_after: Option<Duration>,
    ) -> Result<(), crate::store::StoreError> {
        let now = now_ms();
        delivery.attempts = attempt.attempt;
        delivery.last_status_code = attempt.status_code;
        delivery.updated_at_ms = now;
        delivery.next_attempt_at_ms = None;
        let gone = attempt.status_code == Some(410);
        match attempt.outcome {
            AttemptOutcome::Succeeded => {
                delivery.status = DeliveryStatus::Succeeded;
                delivery.reason = None;
            }
            AttemptOutcome::Skipped => delivery.status = DeliveryStatus::Skipped,
            _ if gone => {
                delivery.status = DeliveryStatus::Failed;
                delivery.reason = Some("receiver answered 410 Gone; webhook disabled".into());
            }
            _ => {
                let delay = next_delay(
                    &webhook.retry_policy,
                    attempt.attempt,
                    retry_after,
                    &mut rand::rng(),
                );
                let error = attempt.error.clone().unwrap_or_else(|| {
                    format!(
                        "receiver answered {}",
                        attempt.status_code.unwrap_or_default()
                    )
                });
                match delay {
                    Some(delay) => {
                        delivery.next_attempt_at_ms = Some(now + delay.as_millis() as u64);
                        delivery.reason = Some(error);
                    }
                    None => {
                        delivery.status = DeliveryStatus::Failed;
                        delivery.reason = Some(format!(
                            "gave up after {} attempts: {error}",
                            attempt.attempt
                        ));
                    }
                }
            }
        }
        self.metrics
            .attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome_name(attempt.outcome),
            })
            .inc();
        self.count_final(delivery.status);
        if delivery.next_attempt_at_ms.is_some() {
            self.store.finish_attempt(delivery, Some(attempt)).await?;
            // The dispatcher may be sleeping past this retry's due time; it
            // sees the retry once the write is durable.
            self.wake();
        } else {
            // Nothing waits for a final outcome's record (see `finish_final`).
            self.store.finish_final(delivery, Some(attempt)).await;
        }
        if gone {
            self.disable(webhook, "receiver answered 410 Gone").await?;
        }
        Ok(())
    }

    /// Shapes the request (natively or with the plugin), takes a slot to
    /// the origin, sends it and notes the answer on `attempt`; returns the
    /// receiver's `Retry-After`.
    ///
    /// The slot is taken once the request is shaped and given back as soon
    /// as the exchange ends, before the attempt is recorded: requests go out
    /// as soon as they get a slot (a plugin's ~40 µs between slot and send
    /// made the receiver get a burst one by one: taking the slot after
    /// shaping saved about 11 % of CPU per plugin delivery), and
    /// a skipped delivery or a plugin error takes none. A request whose
    /// context (the time it signs) is over [`RESHAPE_AFTER`] old when it
    /// gets its slot is shaped again
    /// with the time it is sent (by the same plugin version, even if a new
    /// one was uploaded meanwhile), so what it signs is never older than that.
    /// A fresh delivery that shares its shaping with others of its event
    /// ([`shared`]) takes its context and first request from there: shaped
    /// when the group's first attempt needed it, which may be long before
    /// this one was admitted to its origin ([`admission`]).
    async fn shape_and_send(
        &self,
        event: &Event,
        (webhook, target): (&Webhook, &Target),
        (mut ctx, (shared, envelope)): (AttemptContext, Sharing<'_>),
        (timeout, slot_until): (Duration, tokio::time::Instant),
        delivery: &mut Delivery,
        attempt: &mut Attempt,
    ) -> Option<Duration> {
        let mut version = None;
        let first = match shared {
            Some((shared, place)) => {
                let (plugin, (shared_ctx, shaped)) = shared.take(self, place).await;
                ctx = shared_ctx;
                if let Some(plugin) = plugin {
                    attempt.plugin = Some(plugin.label());
                    version = Some(plugin);
                }
                shaped
            }
            None => {
                self.shape(event, webhook, &ctx, envelope, &mut version, attempt)
                    .await
            }
        };
        let mut req = noted(first, delivery, attempt)?;
        let _slot = match self.origins.acquire(&target.origin, slot_until).await {
            Err(busy) => {
                attempt.outcome = AttemptOutcome::Timeout;
                attempt.error = Some(busy.to_string());
                return None;
            }
            Ok(slot) => {
                if !slot.waited.is_zero() {
                    self.metrics.origin_waits.inc();
                }
                let now = now_ms();
                if now.saturating_sub(ctx.at_ms()) > RESHAPE_AFTER.as_millis() as u64 {
                    ctx = AttemptContext::new(&ctx.delivery_id, ctx.attempt, now);
                    let again = self
                        .shape(event, webhook, &ctx, envelope, &mut version, attempt)
                        .await;
                    req = noted(again, delivery, attempt)?;
                }
                slot
            }
        };
        let (headers, body) = build(webhook, req, &ctx, now_ms());
        match self.client.post(&target.uri, headers, body, timeout).await {
            Ok((answer, took)) => {
                attempt.duration_ms = took.as_millis() as u64;
                attempt.status_code = Some(answer.status);
                attempt.response_body = Some(answer.body);
                attempt.outcome = if (200..300).contains(&answer.status) {
                    AttemptOutcome::Succeeded
                } else {
                    AttemptOutcome::HttpError
                };
                self.metrics.attempt_seconds.observe(took.as_secs_f64());
                answer
                    .retry_after
                    .and_then(|v| parse_retry_after(&v, std::time::SystemTime::now()))
            }
            Err((e, took)) => {
                attempt.duration_ms = took.as_millis() as u64;
                attempt.outcome = match e {
                    SendError::Timeout(_) => AttemptOutcome::Timeout,
                    _ => AttemptOutcome::NetworkError,
                };
                attempt.error = Some(e.to_string());
                None
            }
        }
    }

    /// Shapes the request, natively or with the webhook's plugin: the
    /// version in `version`, else the current one (then kept in `version`,
    /// so shaping again uses the same).
    async fn shape(
        &self,
        event: &Event,
        webhook: &Webhook,
        ctx: &AttemptContext,
        envelope: &OnceLock<Bytes>,
        version: &mut Option<Arc<LoadedPlugin>>,
        attempt: &mut Attempt,
    ) -> Result<Shaped, String> {
        let shaped = match &webhook.plugin {
            None => {
                let body = envelope.get_or_init(|| shape::envelope(event)).clone();
                Shaped::Deliver(shape::standard_webhooks_with(body, ctx))
            }
            Some(name) => {
                let plugin = match version {
                    Some(plugin) => plugin.clone(),
                    None => {
                        let plugin = self
                            .plugins
                            .get(self.store.as_ref(), &webhook.tenant, name)
                            .await
                            .map_err(|e| e.to_string())?;
                        version.insert(plugin).clone()
                    }
                };
                attempt.plugin = Some(plugin.label());
                // A version whose recent calls were all quick runs on this
                // worker (a thread hop costs more than the call); anything
                // else runs on a blocking thread (see `LoadedPlugin::runs_inline`).
                if plugin.runs_inline() {
                    return shape_with(&self.plugins, &plugin, event, webhook, ctx);
                }
                let runtime = self.plugins.clone();
                let (event, webhook, ctx) = (event.clone(), webhook.clone(), ctx.clone());
                return tokio::task::spawn_blocking(move || {
                    shape_with(&runtime, &plugin, &event, &webhook, &ctx)
                })
                .await
                .map_err(|e| format!("plugin call panicked: {e}"))?;
            }
        };
        Ok(shaped)
    }

    async fn give_up(
        &self,
        mut delivery: Delivery,
        reason: &str,
    ) -> Result<(), crate::store::StoreError> {
        delivery.status = DeliveryStatus::Failed;
        delivery.reason = Some(reason.to_owned());
        delivery.next_attempt_at_ms = None;
        delivery.updated_at_ms = now_ms();
        self.count_final(delivery.status);
        self.store.finish_attempt(delivery, None).await
    }

    /// Disables the webhook as stored now (the attempt may have used an
    /// older copy), so a change made meanwhile is kept.
    async fn disable(
        &self,
        webhook: &Webhook,
        reason: &str,
    ) -> Result<(), crate::store::StoreError> {
        let Some(mut webhook) = self.store.get_webhook(&webhook.tenant, &webhook.id).await? else {
            return Ok(());
        };
        tracing::warn!(tenant = %webhook.tenant, webhook = %webhook.id, reason, "disabling webhook");
        webhook.active = false;
        webhook.disabled_reason = Some(reason.to_owned());
        webhook.updated_at_ms = now_ms();
        self.store.put_webhook(webhook).await
    }

    fn count_final(&self, status: DeliveryStatus) {
        let outcome = match status {
            DeliveryStatus::Pending => return,
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Skipped => "skipped",
        };
        self.metrics
            .deliveries_finished
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

/// The request to send; a plugin error or a skip is noted on `attempt`
/// (and the skip's reason on `delivery`) and gives none.
fn noted(
    shaped: Result<Shaped, String>,
    delivery: &mut Delivery,
    attempt: &mut Attempt,
) -> Option<request::OutRequest> {
    match shaped {
        Err(error) => {
            attempt.outcome = AttemptOutcome::PluginError;
            attempt.error = Some(error);
            None
        }
        Ok(Shaped::Skip(reason)) => {
            attempt.outcome = AttemptOutcome::Skipped;
            delivery.reason = Some(reason);
            None
        }
        Ok(Shaped::Deliver(req)) => Some(req),
    }
}

/// Calls `plugin` and checks what it produced (see [`checked`]). CPU-bound,
/// like [`PluginRuntime::call`].
pub fn shape_with(
    runtime: &PluginRuntime,
    plugin: &LoadedPlugin,
    event: &Event,
    webhook: &Webhook,
    ctx: &AttemptContext,
) -> Result<Shaped, String> {
    checked(runtime, plugin, runtime.call(plugin, event, webhook, ctx))
}

/// What a plugin call produced, checked: a request with forbidden or
/// malformed headers is refused with the reason (and counted as invalid).
fn checked(
    runtime: &PluginRuntime,
    plugin: &LoadedPlugin,
    result: Result<Shaped, crate::plugin::PluginError>,
) -> Result<Shaped, String> {
    let shaped = result.map_err(|e| e.to_string())?;
    if let Shaped::Deliver(req) = &shaped
        && let Err(e) = shape::check(req)
    {
        let error = format!("plugin produced an invalid request: {e}");
        runtime.count_invalid(plugin, &error);
        return Err(error);
    }
    Ok(shaped)
}

/// The final headers and body: content type, user agent, the shaped headers,
/// the webhook's custom headers (which win), and the signature. `req` must
/// have passed [`shape::check`].
pub fn build(
    webhook: &Webhook,
    req: request::OutRequest,
    ctx: &AttemptContext,
    now_ms: u64,
) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::with_capacity(8);
    let valid = "checked by shape::check or on webhook write";
    headers.insert(
        header::CONTENT_TYPE,
        match &req.content_type {
            Cow::Borrowed(text) => HeaderValue::from_static(text),
            Cow::Owned(text) => HeaderValue::from_str(text).expect(valid),
        },
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("wasmhook/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in &req.headers {
        headers.insert(
            header_name(name),
            HeaderValue::from_str(value).expect(valid),
        );
    }
    for (name, value) in &webhook.headers {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).expect(valid),
            HeaderValue::from_str(value).expect(valid),
        );
    }
    if let Some(spec) = &req.signature {
        let secrets = webhook.live_secrets(now_ms);
        let value =
            sign::signature_value(spec, &secrets, &req.body, &ctx.delivery_id, ctx.timestamp);
        headers.insert(
            header_name(&spec.header),
            HeaderValue::from_str(&value).expect("base64, hex and checked prefixes are valid"),
        );
    }
    (headers, req.body)
}

/// What a panic said, if it said it in text.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// One attempt counted in `wasmhook_deliveries_in_flight` while it lives,
/// however its task ends.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn count(gauge: &'a Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// True while at least half of a delivery's lease (`lease` long, ending at
/// its `next_attempt_at_ms`) is left at `now_ms`.
fn in_lease(delivery: &Delivery, lease: Duration, now_ms: u64) -> bool {
    let half = lease.as_millis() as u64 / 2;
    delivery
        .next_attempt_at_ms
        .is_some_and(|end| end.saturating_sub(now_ms) >= half)
}

/// A shaped header's name: the default format's constants are taken as
/// they are, a plugin's are parsed (and copied).
fn header_name(name: &request::Text) -> HeaderName {
    match name {
        Cow::Borrowed(name) => HeaderName::from_static(name),
        Cow::Owned(name) => {
            HeaderName::from_bytes(name.as_bytes()).expect("checked by shape::check")
        }
    }
}

fn outcome_name(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Succeeded => "succeeded",
        AttemptOutcome::HttpError => "http_error",
        AttemptOutcome::NetworkError => "network_error",
        AttemptOutcome::Timeout => "timeout",
        AttemptOutcome::PluginError => "plugin_error",
        AttemptOutcome::Skipped => "skipped",
        AttemptOutcome::EngineError => "engine_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;

    #[test]
    fn a_fresh_delivery_is_started_only_with_half_its_lease_left() {
        let tenant = TenantId::from_trusted("t");
        let event = Event {
            id: crate::ids::EventId::generate(),
            tenant: tenant.clone(),
            event_type: "x".into(),
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            occurred_at_ms: 0,
        };
        let webhook = Webhook::new(tenant, "http://127.0.0.1/h", vec!["*".into()], 0);
        let lease = Duration::from_secs(90);
        // Triggered at 1,000: leased until 91,000.
        let d = crate::store::new_delivery(&event, &webhook, 91_000);
        assert!(in_lease(&d, lease, 1_000));
        assert!(in_lease(&d, lease, 46_000), "exactly half left");
        assert!(!in_lease(&d, lease, 46_001));
        assert!(!in_lease(&d, lease, 95_000), "lease over");
        let done = Delivery {
            next_attempt_at_ms: None,
            ..d
        };
        assert!(!in_lease(&done, lease, 1_000));
    }
}
