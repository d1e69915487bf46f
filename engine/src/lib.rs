//! wasmhook: a webhook delivery engine whose per-app part is a WASM component
//! per tenant.
//!
//! # Layout
//! - [`api`]: the HTTP API (trigger, webhooks, deliveries, plugins, tenants).
//! - [`store`]: durable state behind the `Store` trait (embedded redb backend).
//! - [`schedule`]: the retry schedule (sorted by due time) and retry timing.
//! - [`delivery`]: shaping, signing, sending and recording attempts.
//! - [`plugin`]: compiling, sandboxing and calling tenant plugins.
//! - [`config`], [`metrics`], [`model`], [`ids`], [`clock`].
//!
//! [`run`] takes its settings, listener and shutdown signal, so tests boot the
//! real engine on port 0.

pub mod api;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod devkit;
pub mod filter;
pub mod ids;
pub mod jobs;
pub mod limit;
pub mod metrics;
pub mod model;
pub mod operational;
pub mod payload;
pub mod plugin;
pub mod remote;
pub mod schedule;
pub mod store;

use config::Settings;
use delivery::Deliverer;
use delivery::client::HttpClient;
use metrics::{Metrics, StoreMetrics};
use plugin::PluginRuntime;
use schedule::Schedule;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use store::redis::Notice;
use store::{EmbeddedStore, RedisStore, Store};
use tokio::net::TcpListener;

/// Resolves (changes to `true`) when the engine is asked to stop.
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

/// Everything a request handler or the worker needs.
pub struct App {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub plugins: Arc<PluginRuntime>,
    pub deliverer: Arc<Deliverer>,
    pub metrics: Arc<Metrics>,
    /// Tenants of API keys already seen, so a trigger reads nothing to
    /// authenticate.
    pub known_keys: api::KnownKeys,
    /// Held while a webhook is created, so the per-tenant cap holds.
    pub webhook_creates: tokio::sync::Mutex<()>,
    /// Plugin uploads, rollbacks and dry runs in progress (see `api::plugins`).
    pub plugin_work: api::PluginWork,
    /// The retry schedule, for its gauges.
    pub schedule: Arc<dyn Schedule>,
    /// The periodic jobs: which run here now.
    pub jobs: jobs::Jobs,
}

/// Runs the engine on `listener` until `shutdown` resolves: serves the API,
/// delivers, then drains attempts in flight and closes the store.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The store closes when its last user lets go; `closed` lets `run` wait for
    // that so the next run (or a test restarting the engine) can open it again.
    let store_metrics = StoreMetrics::default();
    let (store, schedule, redis, closed): (Arc<dyn Store>, Arc<dyn Schedule>, _, _) =
        match &settings.redis_url {
            Some(url) => {
                let redis = Arc::new(
                    RedisStore::connect(
                        url,
                        &settings.redis_prefix,
                        settings.schedule_partitions,
                        settings.retention,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to Redis: {e}"))?,
                );
                (redis.clone(), redis.clone(), Some(redis), None)
            }
            None => {
                let embedded = Arc::new(
                    EmbeddedStore::open_with_metrics(
                        &settings.data_dir,
                        settings.retention,
                        settings.store_cache_bytes,
                        store_metrics.clone(),
                    )
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot open the store in {}: {e}",
                            settings.data_dir.display()
                        )
                    })?,
                );
                let closed = Arc::downgrade(&embedded);
                (embedded.clone(), embedded, None, Some(closed))
            }
        };
    // The store's metrics are shown only when it is the embedded one.
    let shown = settings.redis_url.is_none().then_some(&store_metrics);
    let metrics = Arc::new(Metrics::new(shown, settings.metrics_bound));
    let plugins = Arc::new(
        PluginRuntime::new(settings.plugins.clone(), metrics.plugins.clone())
            .map_err(|e| anyhow::anyhow!("cannot start the plugin runtime: {e}"))?,
    );
    let deliverer = Arc::new(
        Deliverer::new(
            store.clone(),
            schedule.clone(),
            plugins.clone(),
            HttpClient::new(&settings.allow_private_targets)
                .keeping(settings.log_response_body_bytes),
            metrics.clone(),
            delivery::Limits {
                lease: settings.lease,
                concurrency: settings.delivery_concurrency,
                origin_concurrency: settings.origin_concurrency,
            },
        )
        .with_defaults(settings.webhook_defaults.clone())
        .with_breakers(settings.breakers)
        .logging_request_bodies(settings.log_request_body_bytes),
    );
    let app = Arc::new(App {
        settings,
        store,
        plugins,
        deliverer: deliverer.clone(),
        metrics,
        known_keys: Default::default(),
        webhook_creates: Default::default(),
        plugin_work: Default::default(),
        schedule,
        jobs: jobs::Jobs::default(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(deliverer.clone().run(stop_rx.clone()));
    if let Some(redis) = redis {
        tokio::spawn(follow_notices(redis, app.clone(), stop_rx.clone()));
    }
    for job in jobs::Job::ALL {
        tokio::spawn(jobs::run_on_schedule(app.clone(), job, stop_rx.clone()));
    }
    if let Some(dir) = app.settings.plugins_dir.clone() {
        tokio::spawn(plugin::watch::run(
            app.plugins.clone(),
            app.store.clone(),
            dir,
            stop_rx,
        ));
    }
    tracing::info!(addr = %listener.local_addr()?, "wasmhook listening");
    api::serve::serve(listener, api::router(app.clone()), &app.settings, shutdown).await?;
    let _ = stop_tx.send(true);
    worker.await?;
    drop((app, deliverer));
    // The store closes when its last user lets go; wait for that so the next
    // run (or a test restarting the engine) can open the file again.
    let released = || closed.as_ref().is_none_or(|c| c.strong_count() == 0);
    for _ in 0..500 {
        if released() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !released() {
        // Something still holds the store (an attempt that outlived the
        // drain, or a bug): its file stays locked until the process exits.
        anyhow::bail!("stopped, but the store is still in use after 5 s");
    }
    tracing::info!("wasmhook stopped");
    Ok(())
}

/// Acts on what other engines sharing the Redis announce: wake the dispatcher
/// for deliveries due now, drop a plugin version another engine replaced.
/// Resubscribes after a lost connection.
async fn follow_notices(redis: Arc<RedisStore>, app: Arc<App>, mut stop: Shutdown) {
    use futures_util::StreamExt;
    loop {
        match redis.notices().await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        notice = stream.next() => match notice {
                            Some(Notice::Wake) => app.deliverer.wake(),
                            Some(Notice::Breaker { webhook, open_until }) => {
                                app.deliverer.breakers().apply(&webhook, open_until)
                            }
                            Some(Notice::Plugin { tenant, name, version }) => {
                                app.plugins.forget_older(&tenant, &name, version)
                            }
                            None => break,
                        },
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis notices; retrying"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
