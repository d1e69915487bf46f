//! Delivery: taking due deliveries, shaping each (native default format or
//! the webhook's plugin), signing, sending, and recording the attempt with
//! what follows it (done, retry at a time, or failed).
//!
//! - [`dispatch`]: the dispatcher (fresh deliveries from the trigger API,
//!   claims from the schedule, permits, admission glue, panics recorded).
//! - [`attempt`]: one attempt as values: shape → send → decide → record.
//! - [`decide`]: what follows an attempt, a pure function.
//! - [`shape`], [`outgoing`], [`sign`]: the request as shaped, as sent, its
//!   signature. [`shared`]: one plugin call for a fan-out's first attempts.
//! - [`pause`]: a disabled webhook's deliveries wait; enabling sends them.
//! - [`pace`]: a webhook's rate limit, and receivers asking for a break.
//! - [`breaker`]: each webhook's circuit breaker.
//! - [`admission`], [`origins`]: per-origin limits. [`client`], [`ssrf`]:
//!   the HTTP client and the addresses it may reach.
//!
//! Invariants: a delivery is attempted by one task at a time in this
//! process; every attempt that runs is recorded, a panicked one too. What
//! may happen twice: across a crash an attempt may be repeated (see
//! [`crate::schedule`]); a re-signed request is shaped twice.

mod admission;
mod attempt;
pub mod breaker;
pub mod client;
pub mod decide;
mod dispatch;
#[cfg(feature = "faults")]
mod faults;
pub mod origins;
pub mod outgoing;
pub mod pace;
pub mod pause;
pub mod shape;
mod shared;
pub mod sign;
pub mod ssrf;

use crate::clock::Clock;
use crate::ids::{DeliveryId, TenantId};
use crate::metrics::Metrics;
use crate::model::{Delivery, Event, Webhook, WebhookDefaults};
use crate::plugin::PluginRuntime;
use crate::schedule::Schedule;
use crate::store::Store;
use admission::Admission;
use bytes::Bytes;
use client::HttpClient;
use origins::{Origins, Target};
use shared::SharedShaping;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

pub use outgoing::Outgoing;
pub use shape::{ShapeError, shape_with};

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
    /// Claimed from the schedule, leased until `lease_end_ms`.
    Claimed {
        tenant: TenantId,
        id: DeliveryId,
        lease_end_ms: u64,
    },
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
    /// Where claims, leases and attempts read the time.
    clock: Clock,
    /// The retry policy and timeout of webhooks that name none.
    defaults: WebhookDefaults,
    /// Webhooks without a rate limit whose receivers asked this engine to
    /// wait, until when (see [`pace`]); `holding` counts them, so the
    /// attempt path takes no lock while there are none.
    holds: std::sync::Mutex<std::collections::HashMap<crate::ids::WebhookId, u64>>,
    holding: std::sync::atomic::AtomicUsize,
    /// Each webhook's circuit breaker.
    breakers: breaker::Breakers,
    /// Bytes of a plugin-shaped request body the attempt log keeps.
    log_request_body_bytes: usize,
}

/// How many attempts run at once, and for how long a delivery is leased.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub lease: Duration,
    /// Attempts in flight (`delivery_concurrency`).
    pub concurrency: usize,
    /// Attempts in flight to one origin (`origin_concurrency`).
    pub origin_concurrency: usize,
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn Store>,
        schedule: Arc<dyn Schedule>,
        plugins: Arc<PluginRuntime>,
        client: HttpClient,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Self {
        let Limits {
            lease,
            concurrency,
            origin_concurrency,
        } = limits;
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
            clock: Clock::Wall,
            defaults: WebhookDefaults::default(),
            holds: Default::default(),
            holding: Default::default(),
            breakers: breaker::Breakers::default(),
            log_request_body_bytes: 16 << 10,
        }
    }

    /// The same dispatcher with these engine-wide webhook defaults.
    pub fn with_defaults(mut self, defaults: WebhookDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// The same dispatcher keeping `bytes` of each request body it sends
    /// in the attempt log (`log_request_body_bytes`).
    pub fn logging_request_bodies(mut self, bytes: usize) -> Self {
        self.log_request_body_bytes = bytes;
        self
    }

    /// The same dispatcher with breakers that open by `rule`.
    pub fn with_breakers(mut self, rule: breaker::BreakerRule) -> Self {
        self.breakers = breaker::Breakers::new(rule);
        self
    }

    pub fn breakers(&self) -> &breaker::Breakers {
        &self.breakers
    }

    pub fn defaults(&self) -> &WebhookDefaults {
        &self.defaults
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The same dispatcher reading the time from `clock` (tests pause
    /// tokio's clock with [`Clock::tokio`]).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
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
}
