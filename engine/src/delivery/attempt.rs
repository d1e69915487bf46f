//! One attempt of one delivery, as values flowing through four steps:
//! shape (the native default format, or the webhook's plugin) → send (take
//! a slot to the origin, exchange, give the slot back) → decide
//! ([`super::decide`], pure) → record (the attempt and what follows it, in
//! one store write).
//!
//! Owns: the attempt's time budget (it never outlives its lease: waiting
//! for a slot and the exchange both fit in it), re-signing (a request whose
//! signed time is over [`RESHAPE_AFTER`] old when it gets its slot is shaped
//! again, by the same plugin version), and recording a panicked attempt.
//!
//! Invariants: the slot is taken once the request is shaped and given back
//! as soon as the exchange ends, before the attempt is recorded (a plugin's
//! ~40 µs between slot and send made a receiver get a burst one by one;
//! taking the slot after shaping saved about 11 % of CPU per plugin
//! delivery); a skip or a plugin error takes no slot. A final outcome's
//! record is handed to the store without waiting for it to be durable
//! (`Store::finish_final`); a retry's is waited for, so the dispatcher,
//! woken then, sees it. What may happen twice: a request is shaped twice
//! when it is re-signed; it is sent once per attempt.

use super::breaker::{self, Gate};
use super::decide::{self, Ended, Next};
use super::origins::Target;
use super::outgoing::Outgoing;
use super::shape::{self, ShapeError};
use super::shared::SharedShaping;
use super::{Deliverer, RESHAPE_AFTER, Ready};
use crate::ids::{DeliveryId, TenantId};
use crate::metrics::{OutcomeLabel, webhook};
use crate::model::{
    Attempt, AttemptOutcome, Delivery, DeliveryStatus, Event, SentRequest, Webhook,
};
use crate::plugin::LoadedPlugin;
use crate::plugin::request::{AttemptContext, OutRequest, Shaped};
use crate::schedule::policy::parse_retry_after;
use crate::store::StoreError;
use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// What shaping an attempt's request reads.
struct ToShape<'a> {
    event: &'a Event,
    webhook: &'a Webhook,
    /// The event's default-format body, made by the first of its
    /// deliveries to need it.
    envelope: &'a OnceLock<Bytes>,
}

/// The exchange with the receiver, or why there was none: what sending
/// produced, before anything is decided.
struct Exchange {
    ended: Ended,
    /// `name@version` of the plugin that shaped the request.
    plugin: Option<String>,
    /// How long the exchange took, once a request went out.
    took: Duration,
    /// The request as sent (none when none went out), for the attempt log.
    request: Option<SentRequest>,
    /// The answer's headers.
    response_headers: Option<String>,
}

impl Exchange {
    /// An attempt that ended before any exchange (a skip, a plugin error,
    /// no slot in time).
    fn before_sending(ended: Ended, plugin: Option<String>) -> Exchange {
        Exchange {
            ended,
            plugin,
            took: Duration::ZERO,
            request: None,
            response_headers: None,
        }
    }

    /// The attempt's record: what it holds moves there.
    fn into_attempt(self, delivery: &DeliveryId, number: u32, started_at_ms: u64) -> Attempt {
        let outcome = self.ended.outcome();
        let (status_code, response_body, error) = match self.ended {
            Ended::Answered { status, body, .. } => (Some(status), Some(body), None),
            Ended::Skipped(_) => (None, None, None),
            Ended::Failed(_, error) => (None, None, Some(error)),
        };
        Attempt {
            delivery_id: delivery.clone(),
            attempt: number,
            started_at_ms,
            duration_ms: self.took.as_millis() as u64,
            status_code,
            response_body,
            error,
            plugin: self.plugin,
            outcome,
            request: self.request,
            response_headers: self.response_headers,
        }
    }
}

/// The request to send, or how the attempt ends without one.
fn to_send(shaped: Result<Shaped, ShapeError>) -> Result<OutRequest, Ended> {
    match shaped {
        Ok(Shaped::Deliver(req)) => Ok(req),
        Ok(Shaped::Skip(reason)) => Err(Ended::Skipped(reason)),
        Err(error) => Err(Ended::Failed(
            AttemptOutcome::PluginError,
            error.to_string(),
        )),
    }
}

impl Deliverer {
    /// One attempt of one delivery, start to finish.
    pub(super) async fn attempt(&self, ready: Ready) -> Result<(), StoreError> {
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
        #[cfg(feature = "faults")]
        super::faults::attempt(&webhook);
        if !webhook.active {
            return self.park(*delivery).await;
        }
        let mut delivery = delivery;
        if let Some((at, why)) = self.pace(&webhook, &mut delivery).await? {
            return self.wait_until(*delivery, at, why).await;
        }
        if let Gate::WaitUntil(at) = self.breakers.gate(&webhook.id, self.clock.now_ms()) {
            return self.wait_until(*delivery, at, breaker::WAITING).await;
        }
        // An attempt never outlives its lease, or another engine could claim
        // the delivery while this one is still sending it.
        let budget = self.lease.saturating_sub(Duration::from_secs(1));
        let timeout = Duration::from_millis(self.defaults.timeout_ms(&webhook)).min(budget);
        let slot_until = Instant::now() + (budget - timeout);

        let started_at_ms = self.clock.now_ms();
        let ctx = AttemptContext::new(delivery.id.as_str(), delivery.attempts + 1, started_at_ms);
        let what = ToShape {
            event: &event,
            webhook: &webhook,
            envelope: &envelope,
        };
        let exchange = self
            .exchange(&what, &target, ctx, shared, timeout, slot_until)
            .await;
        self.record(*delivery, exchange, started_at_ms, &webhook)
            .await
    }

    /// Shapes the request, takes a slot to the origin, sends the request
    /// and gives the slot back. A fresh delivery that shares its shaping
    /// with others of its event ([`super::shared`]) takes its context and
    /// first request from there: shaped when the group's first attempt
    /// needed it, which may be long before this one was admitted to its
    /// origin, and so re-signed if that is over [`RESHAPE_AFTER`] ago.
    async fn exchange(
        &self,
        what: &ToShape<'_>,
        target: &Target,
        ctx: AttemptContext,
        shared: Option<(Arc<SharedShaping>, usize)>,
        timeout: Duration,
        slot_until: Instant,
    ) -> Exchange {
        let (version, (mut ctx, first)) = match shared {
            Some((shared, place)) => shared.take(self, place).await,
            None => {
                let (version, first) = self.shape(what, &ctx, None).await;
                (version, (ctx, first))
            }
        };
        let plugin = version.as_ref().map(|p| p.label());
        let mut req = match to_send(first) {
            Ok(req) => req,
            Err(ended) => return Exchange::before_sending(ended, plugin),
        };
        let slot = match self.origins.acquire(&target.origin, slot_until).await {
            Ok(slot) => slot,
            Err(busy) => {
                let ended = Ended::Failed(AttemptOutcome::Timeout, busy.to_string());
                return Exchange::before_sending(ended, plugin);
            }
        };
        if !slot.waited.is_zero() {
            self.metrics.origin_waits.inc();
        }
        let now = self.clock.now_ms();
        if now.saturating_sub(ctx.at_ms()) > RESHAPE_AFTER.as_millis() as u64 {
            ctx = AttemptContext::new(&ctx.delivery_id, ctx.attempt, now);
            let (_, again) = self.shape(what, &ctx, version).await;
            req = match to_send(again) {
                Ok(req) => req,
                Err(ended) => return Exchange::before_sending(ended, plugin),
            };
        }
        let signature = req.signature.as_ref().map(|s| s.header.clone());
        let out = Outgoing::build(what.webhook, req, &ctx, self.clock.now_ms());
        let request = self.sent_request(what, &ctx, &out, signature.as_deref());
        let sent = self
            .client
            .post(&target.uri, out.headers, out.body, timeout)
            .await;
        drop(slot);
        let mut response_headers = None;
        let (ended, took) = match sent {
            Ok((answer, took)) => {
                response_headers = Some(answer.headers);
                self.metrics.attempt_seconds.observe(took.as_secs_f64());
                let retry_after = answer
                    .retry_after
                    .and_then(|v| parse_retry_after(&v, std::time::SystemTime::now()));
                let ended = Ended::Answered {
                    status: answer.status,
                    body: answer.body,
                    retry_after,
                };
                (ended, took)
            }
            Err((error, took)) => {
                let outcome = match error {
                    super::client::SendError::Timeout(_) => AttemptOutcome::Timeout,
                    _ => AttemptOutcome::NetworkError,
                };
                (Ended::Failed(outcome, error.to_string()), took)
            }
        };
        Exchange {
            ended,
            plugin,
            took,
            request: Some(request),
            response_headers,
        }
    }

    /// The request as the attempt log keeps it: the URL, the headers
    /// (signature and authorization values redacted) and the body up to
    /// `log_request_body_bytes`, or none when it is the event's default
    /// format (rebuilt from the event when shown).
    fn sent_request(
        &self,
        what: &ToShape<'_>,
        ctx: &AttemptContext,
        out: &Outgoing,
        signature: Option<&str>,
    ) -> SentRequest {
        let default_format = what.webhook.plugin.is_none();
        let redact = [
            signature.unwrap_or("webhook-signature"),
            "authorization",
            "proxy-authorization",
        ];
        let body = (!default_format).then(|| {
            let kept = &out.body[..out.body.len().min(self.log_request_body_bytes)];
            String::from_utf8_lossy(kept).into_owned()
        });
        let headers = (!default_format || !what.webhook.headers.is_empty()).then(|| {
            super::client::header_lines(&out.headers, super::client::MAX_HEADER_BYTES, &redact)
        });
        SentRequest {
            url: what.webhook.url.clone(),
            headers,
            timestamp: ctx.timestamp,
            body,
            body_bytes: out.body.len() as u64,
        }
    }

    /// Shapes the request, natively or with the webhook's plugin: `version`
    /// if given (re-signing uses the version that shaped the first time),
    /// else the current one. Gives back the version used.
    async fn shape(
        &self,
        what: &ToShape<'_>,
        ctx: &AttemptContext,
        version: Option<Arc<LoadedPlugin>>,
    ) -> (Option<Arc<LoadedPlugin>>, Result<Shaped, ShapeError>) {
        let Some(name) = &what.webhook.plugin else {
            let body = what
                .envelope
                .get_or_init(|| shape::envelope(what.event))
                .clone();
            let req = shape::standard_webhooks_with(body, ctx);
            return (None, Ok(Shaped::Deliver(req)));
        };
        let plugin = match version {
            Some(plugin) => plugin,
            None => match self
                .plugins
                .get(self.store.as_ref(), &what.webhook.tenant, name)
                .await
            {
                Ok(plugin) => plugin,
                Err(e) => return (None, Err(ShapeError::Plugin(e.to_string()))),
            },
        };
        // A version whose recent calls were all quick runs on this worker
        // (a thread hop costs more than the call); anything else runs on a
        // blocking thread (see `LoadedPlugin::runs_inline`).
        if plugin.runs_inline() {
            let shaped = shape::shape_with(&self.plugins, &plugin, what.event, what.webhook, ctx);
            return (Some(plugin), shaped);
        }
        let (runtime, used) = (self.plugins.clone(), plugin.clone());
        let (event, webhook, ctx) = (what.event.clone(), what.webhook.clone(), ctx.clone());
        let shaped = tokio::task::spawn_blocking(move || {
            shape::shape_with(&runtime, &used, &event, &webhook, &ctx)
        })
        .await
        .unwrap_or_else(|e| Err(ShapeError::Panicked(e.to_string())));
        (Some(plugin), shaped)
    }

    /// Records the next attempt of `delivery`, which ended as `exchange`
    /// says, and what follows from it: done, a retry at a time, or failed
    /// (and the webhook disabled on `410 Gone`).
    async fn record(
        &self,
        mut delivery: Delivery,
        exchange: Exchange,
        started_at_ms: u64,
        webhook: &Webhook,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let number = delivery.attempts + 1;
        let next = decide::next(
            &exchange.ended,
            self.defaults.retry_policy(webhook),
            number,
            now,
            &mut rand::rng(),
        );
        let series = self
            .metrics
            .webhooks
            .series(&delivery.tenant, &delivery.event_type);
        self.observe(&exchange, &next, &series, webhook, now)
            .await?;
        let attempt = exchange.into_attempt(&delivery.id, number, started_at_ms);
        delivery.attempts = number;
        delivery.last_status_code = attempt.status_code;
        delivery.updated_at_ms = now;
        let gone = next == Next::Gone;
        let (status, reason, due) = match next {
            Next::Succeeded => (DeliveryStatus::Succeeded, None, None),
            Next::Skipped(reason) => (DeliveryStatus::Skipped, Some(reason), None),
            Next::RetryAt { due_ms, reason } => {
                (DeliveryStatus::Pending, Some(reason), Some(due_ms))
            }
            Next::GaveUp(reason) => (DeliveryStatus::Failed, Some(reason), None),
            Next::Gone => (DeliveryStatus::Failed, Some(decide::GONE.into()), None),
        };
        delivery.status = status;
        delivery.reason = reason;
        delivery.next_attempt_at_ms = due;
        self.metrics
            .attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome_name(attempt.outcome),
            })
            .inc();
        self.count_final(&delivery, &series);
        // An operational event's delivery tells the tenant nothing more.
        let operational = crate::operational::is_operational(&delivery.event_type);
        let exhausted = (delivery.status == DeliveryStatus::Failed && !gone && !operational)
            .then(|| crate::operational::exhausted(&delivery, now));
        if due.is_some() {
            self.store.finish_attempt(delivery, Some(attempt)).await?;
            // The dispatcher may be sleeping past this retry's due time; it
            // sees the retry once the write is durable.
            self.wake();
        } else {
            // Nothing waits for a final outcome's record (see `finish_final`).
            self.store.finish_final(delivery, Some(attempt)).await;
        }
        if gone {
            crate::operational::disable_webhook(
                self,
                &webhook.tenant,
                &webhook.id,
                crate::operational::DisableCause::Gone,
                "receiver answered 410 Gone".into(),
                operational,
            )
            .await?;
        }
        if let Some(data) = exhausted {
            let exhausted_type = crate::operational::DELIVERY_EXHAUSTED;
            crate::operational::emit_or_log(self, &webhook.tenant, exhausted_type, data).await;
        }
        Ok(())
    }

    /// What an attempt's end tells beyond its delivery: seed 001's
    /// metrics, the webhook's circuit breaker, and a receiver's request to
    /// be left alone (which holds all of the webhook's deliveries).
    async fn observe(
        &self,
        exchange: &Exchange,
        next: &Next,
        series: &webhook::Series,
        webhook: &Webhook,
        now: u64,
    ) -> Result<(), StoreError> {
        if exchange.request.is_some() {
            match &exchange.ended {
                Ended::Answered { status, .. } => {
                    series.http_status(*status);
                    series.duration(exchange.took);
                }
                Ended::Failed(AttemptOutcome::Timeout, _) => series.duration(exchange.took),
                _ => {}
            }
        }
        if matches!(next, Next::RetryAt { .. }) {
            series.retry(retry_reason(&exchange.ended));
        }
        match counts_for_breaker(&exchange.ended) {
            Some(failed) => {
                if let Some(change) = self.breakers.record(&webhook.id, failed, now) {
                    self.breaker_changed(webhook, change).await;
                }
            }
            None => self.breakers.release_probe(&webhook.id),
        }
        if let Ended::Answered {
            status: 429 | 503,
            retry_after: Some(after),
            ..
        } = &exchange.ended
        {
            let after = after.min(&crate::schedule::policy::MAX_RETRY_AFTER);
            self.hold(webhook, now + after.as_millis() as u64).await?;
        }
        Ok(())
    }

    /// A panic in an attempt (an engine bug, never a plugin's: a plugin's
    /// trap is an error) ends as a failed attempt with the reason, retried
    /// on the webhook's schedule, not as a delivery left leased with no
    /// attempt recorded. The delivery is read back as stored: what the
    /// attempt held went with its task.
    pub(super) async fn record_panic(&self, tenant: &TenantId, id: &DeliveryId, what: String) {
        tracing::error!(delivery = %id, panic = %what, "a delivery attempt panicked; recorded as failed");
        let ready = match self.load(tenant, id).await {
            Ok(Some(ready)) => ready,
            Ok(None) => return,
            Err(e) => return crate::store::unrecorded(id, &e),
        };
        let ended = Ended::Failed(
            AttemptOutcome::EngineError,
            format!("the engine failed during this attempt: {what}"),
        );
        let exchange = Exchange::before_sending(ended, None);
        if let Err(e) = self
            .record(
                *ready.delivery,
                exchange,
                self.clock.now_ms(),
                &ready.webhook,
            )
            .await
        {
            crate::store::unrecorded(id, &e);
        }
    }

    /// Ends a delivery without an attempt (its webhook is disabled or gone,
    /// or its event no longer exists).
    pub(super) async fn give_up(
        &self,
        mut delivery: Delivery,
        reason: &str,
    ) -> Result<(), StoreError> {
        delivery.status = DeliveryStatus::Failed;
        delivery.reason = Some(reason.to_owned());
        delivery.next_attempt_at_ms = None;
        delivery.updated_at_ms = self.clock.now_ms();
        let series = self
            .metrics
            .webhooks
            .series(&delivery.tenant, &delivery.event_type);
        self.count_final(&delivery, &series);
        self.store.finish_attempt(delivery, None).await
    }

    /// Counts a delivery that reached a final status (in both the
    /// engine's family and seed 001's).
    fn count_final(&self, delivery: &Delivery, series: &webhook::Series) {
        let (outcome, seed) = match delivery.status {
            DeliveryStatus::Pending => return,
            DeliveryStatus::Succeeded => ("succeeded", webhook::Outcome::Delivered),
            DeliveryStatus::Failed => ("failed", webhook::Outcome::Failed),
            DeliveryStatus::Skipped => ("skipped", webhook::Outcome::Skipped),
        };
        self.metrics
            .deliveries_finished
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        series.delivery(seed);
    }
}

/// Whether an attempt that ended so is a failure the breaker counts
/// (none: it says nothing of the receiver, such as a skip).
fn counts_for_breaker(ended: &Ended) -> Option<bool> {
    match ended {
        Ended::Answered { status, .. } => Some(matches!(status, 408 | 429 | 500..)),
        Ended::Failed(AttemptOutcome::Timeout | AttemptOutcome::NetworkError, _) => Some(true),
        Ended::Failed(..) | Ended::Skipped(_) => None,
    }
}

/// Why a retry follows an attempt that ended so (seed 001's reasons; an
/// engine failure counts as a server error).
fn retry_reason(ended: &Ended) -> webhook::RetryReason {
    use webhook::RetryReason;
    match ended {
        Ended::Answered { status, .. } => RetryReason::of_status(*status),
        Ended::Failed(AttemptOutcome::Timeout, _) => RetryReason::Timeout,
        Ended::Failed(AttemptOutcome::NetworkError, _) => RetryReason::ConnectionError,
        Ended::Failed(AttemptOutcome::PluginError, _) | Ended::Skipped(_) => {
            RetryReason::PluginError
        }
        Ended::Failed(_, _) => RetryReason::ServerError,
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
