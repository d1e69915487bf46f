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
use crate::clock::now_ms;
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
        let (now, lease) = (now_ms(), self.lease.as_millis() as u64);
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
            if in_lease(&next.delivery, self.lease, now_ms()) {
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
}
