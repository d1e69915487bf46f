//! The dispatcher: taking due deliveries and running their attempts.
//!
//! Owns: two ways in (fresh deliveries handed over by the trigger API right
//! after they are durable, already leased to this process; and claims of
//! whatever the schedule says is due: retries, manual retries, leases that
//! ran out), the permits that bound attempts in flight
//! (`delivery_concurrency`), admission to each origin ([`super::admission`])
//! and the task that runs an origin's attempts one after another.
//!
//! Invariants: a delivery is attempted by one task at a time in this
//! process; an attempt that panics is recorded as failed (and retried), and
//! the in-flight gauge counts only attempts running. What may happen twice:
//! across a crash a delivery may be attempted twice (see [`crate::schedule`]);
//! a job that waited over half its lease for its origin is left to its
//! lease, and goes out then.

use super::admission::{Admitted, Ticket};
use super::origins::Target;
use super::{CLAIM_BATCH, DRAIN, Deliverer, Job, MAX_IDLE, Ready};
use crate::Shutdown;
use crate::ids::{DeliveryId, TenantId};
use crate::model::{Delivery, DeliveryStatus};
use futures_util::FutureExt;
use prometheus_client::metrics::gauge::Gauge;
use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

impl Deliverer {
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
                            Duration::from_millis(due.saturating_sub(self.clock.now_ms()))
                                .min(MAX_IDLE)
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
        let (now, lease) = (self.clock.now_ms(), self.lease.as_millis() as u64);
        let ids = self.schedule.claim_due(now, free, lease).await?;
        // An event lease claimed as one entry may bring several deliveries.
        let full = ids.len() >= free;
        for (tenant, id) in ids {
            let job = Job::Claimed {
                tenant,
                id,
                lease_end_ms: now + lease,
            };
            self.clone().spawn(job).await;
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
            Job::Claimed {
                tenant,
                id,
                lease_end_ms,
            } => match self.load(&tenant, &id).await {
                Ok(Some(mut ready)) => {
                    // What the claim leased it until, whatever the record
                    // says (Redis re-scores the schedule, not the record):
                    // admission measures what is left of the lease by it.
                    ready.delivery.next_attempt_at_ms = Some(lease_end_ms);
                    match self.admit_claimed(ready, permit) {
                        Some(admitted) => admitted,
                        None => return,
                    }
                }
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
            if in_lease(&next.delivery, self.lease, self.clock.now_ms()) {
                return Some(next);
            }
            tracing::debug!(delivery = %next.delivery.id, "waited too long for its origin; it goes out when its lease ends");
        }
    }

    /// A claimed delivery's records, read back: what its attempt needs, or
    /// none if there is nothing to attempt (it is no longer pending, or its
    /// webhook or event is gone, and it was given up here).
    pub(super) async fn load(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, Webhook};

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

    /// The dispatch loop on tokio's paused clock: a schedule that hands out
    /// entries by due time and notes every look, in front of an empty
    /// embedded store (so each claimed delivery is found gone and its task
    /// ends). Nothing here waits on the wall clock.
    mod paused {
        use crate::clock::Clock;
        use crate::delivery::client::HttpClient;
        use crate::delivery::{CLAIM_BATCH, Deliverer, Limits, MAX_IDLE};
        use crate::ids::{DeliveryId, TenantId};
        use crate::metrics::Metrics;
        use crate::plugin::{PluginConfig, PluginRuntime};
        use crate::schedule::{Census, Schedule};
        use crate::store::{EmbeddedStore, StoreError};
        use async_trait::async_trait;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        const LEASE: Duration = Duration::from_secs(90);

        /// One look at the schedule: when, and how many entries it took.
        #[derive(Debug, Clone, Copy, PartialEq)]
        struct Look {
            at_ms: u64,
            took: usize,
        }

        #[derive(Default)]
        struct Entries {
            due: Mutex<Vec<u64>>,
            looks: Mutex<Vec<Look>>,
        }

        impl Entries {
            fn add(&self, due_ms: u64, n: usize) {
                self.due
                    .lock()
                    .unwrap()
                    .extend(std::iter::repeat_n(due_ms, n));
            }
            fn looks(&self) -> Vec<Look> {
                self.looks.lock().unwrap().clone()
            }
        }

        #[async_trait]
        impl Schedule for Entries {
            async fn claim_due(
                &self,
                now_ms: u64,
                limit: usize,
                lease_ms: u64,
            ) -> Result<Vec<(TenantId, DeliveryId)>, StoreError> {
                assert_eq!(lease_ms, LEASE.as_millis() as u64);
                let mut due = self.due.lock().unwrap();
                due.sort_unstable();
                let took = due.iter().take(limit).filter(|&&d| d <= now_ms).count();
                due.drain(..took);
                self.looks.lock().unwrap().push(Look {
                    at_ms: now_ms,
                    took,
                });
                let tenant = TenantId::from_trusted("t");
                Ok((0..took)
                    .map(|_| (tenant.clone(), DeliveryId::generate()))
                    .collect())
            }

            async fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
                Ok(self.due.lock().unwrap().iter().min().copied())
            }

            async fn census(&self, now_ms: u64) -> Result<Census, StoreError> {
                let due = self.due.lock().unwrap();
                let (now, later): (Vec<u64>, Vec<u64>) = due.iter().partition(|&&d| d <= now_ms);
                Ok(Census {
                    due: now.len() as u64,
                    later: later.len() as u64,
                    paused: 0,
                    oldest_due_ms: now.iter().min().copied(),
                })
            }
        }

        struct Running {
            deliverer: Arc<Deliverer>,
            entries: Arc<Entries>,
            start_ms: u64,
            stop: tokio::sync::watch::Sender<bool>,
            task: tokio::task::JoinHandle<()>,
            _dir: tempfile::TempDir,
        }

        impl Running {
            async fn stop(self) {
                self.stop.send(true).unwrap();
                self.task.await.unwrap();
            }
        }

        /// A dispatcher on a paused clock, with `entries` scheduled before
        /// it starts (`(due after start, how many)`).
        fn start(entries: &[(Duration, usize)]) -> Running {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(EmbeddedStore::open(dir.path(), LEASE, 1 << 20).unwrap());
            let metrics = Arc::new(Metrics::default());
            let config = PluginConfig {
                instances: 4,
                ..PluginConfig::default()
            };
            let plugins = Arc::new(PluginRuntime::new(config, metrics.plugins.clone()).unwrap());
            let clock = Clock::tokio();
            let start_ms = clock.now_ms();
            let schedule = Arc::new(Entries::default());
            for (after, n) in entries {
                schedule.add(start_ms + after.as_millis() as u64, *n);
            }
            let limits = Limits {
                lease: LEASE,
                concurrency: 1000,
                origin_concurrency: 8,
            };
            let deliverer = Deliverer::new(
                store,
                schedule.clone(),
                plugins,
                HttpClient::new(&[]),
                metrics,
                limits,
            );
            let deliverer = Arc::new(deliverer.with_clock(clock));
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(deliverer.clone().run(stopped));
            Running {
                deliverer,
                entries: schedule,
                start_ms,
                stop,
                task,
                _dir: dir,
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_delivery_is_claimed_the_moment_it_comes_due() {
            let run = start(&[(Duration::from_millis(400), 1)]);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let looks = run.entries.looks();
            let claimed: Vec<&Look> = looks.iter().filter(|l| l.took > 0).collect();
            assert_eq!(claimed.len(), 1, "{looks:?}");
            assert_eq!(claimed[0].at_ms, run.start_ms + 400, "{looks:?}");
            assert!(
                looks
                    .iter()
                    .all(|l| l.took == 0 || l.at_ms >= run.start_ms + 400),
                "nothing is claimed before it is due: {looks:?}"
            );
            run.stop().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_later_retry_is_claimed_within_a_second_of_its_due_time() {
            let due_after = Duration::from_secs(30) + Duration::from_millis(250);
            let run = start(&[(due_after, 1)]);
            tokio::time::sleep(Duration::from_secs(40)).await;
            let due = run.start_ms + due_after.as_millis() as u64;
            let looks = run.entries.looks();
            let claimed = looks.iter().find(|l| l.took > 0).expect("claimed");
            assert!(
                claimed.at_ms >= due && claimed.at_ms - due < MAX_IDLE.as_millis() as u64,
                "due at {due}, claimed at {}",
                claimed.at_ms
            );
            // While it waited the dispatcher looked about once per MAX_IDLE.
            let before = looks.iter().filter(|l| l.at_ms < due).count();
            assert!((30..=32).contains(&before), "{before} looks in 30 s");
            run.stop().await;
        }

        #[tokio::test(start_paused = true)]
        async fn an_idle_dispatcher_looks_once_per_max_idle() {
            let run = start(&[]);
            tokio::time::sleep(Duration::from_secs(10) + Duration::from_millis(500)).await;
            let looks = run.entries.looks();
            assert_eq!(looks.len(), 11, "at 0, 1, ... 10 s: {looks:?}");
            for (i, look) in looks.iter().enumerate() {
                assert_eq!(look.at_ms, run.start_ms + 1000 * i as u64);
            }
            run.stop().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_wake_up_makes_it_look_at_once() {
            let run = start(&[]);
            tokio::time::sleep(Duration::from_millis(300)).await;
            run.entries.add(run.start_ms + 300, 1);
            run.deliverer.wake();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let looks = run.entries.looks();
            let claimed = looks.iter().find(|l| l.took > 0).expect("claimed");
            assert_eq!(claimed.at_ms, run.start_ms + 300, "{looks:?}");
            run.stop().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_full_batch_is_followed_by_another_claim_at_once() {
            let run = start(&[(Duration::ZERO, 2 * CLAIM_BATCH + 88)]);
            tokio::time::sleep(Duration::from_millis(10)).await;
            let looks = run.entries.looks();
            let at = run.start_ms;
            // A full batch means more may be due: look again at once;
            // after a short one, nothing is left until MAX_IDLE.
            assert_eq!(
                looks,
                [
                    Look {
                        at_ms: at,
                        took: CLAIM_BATCH
                    },
                    Look {
                        at_ms: at,
                        took: CLAIM_BATCH
                    },
                    Look {
                        at_ms: at,
                        took: 88
                    },
                ],
            );
            run.stop().await;
        }
    }
}
