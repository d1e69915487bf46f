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
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod schedule;
pub mod store;

use config::Settings;
use delivery::Deliverer;
use delivery::client::HttpClient;
use metrics::Metrics;
use plugin::PluginRuntime;
use schedule::Schedule;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use store::{EmbeddedStore, Store};
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
}

/// Runs the engine on `listener` until `shutdown` resolves: serves the API,
/// delivers, then drains attempts in flight and closes the store.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let embedded = Arc::new(EmbeddedStore::open(&settings.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the store in {}: {e}",
            settings.data_dir.display()
        )
    })?);
    let closed = Arc::downgrade(&embedded);
    let store: Arc<dyn Store> = embedded.clone();
    let schedule: Arc<dyn Schedule> = embedded;
    let plugins = Arc::new(
        PluginRuntime::new(settings.plugin_timeout, settings.plugin_memory_bytes)
            .map_err(|e| anyhow::anyhow!("cannot start the plugin runtime: {e}"))?,
    );
    let metrics = Arc::new(Metrics::default());
    let deliverer = Arc::new(Deliverer::new(
        store.clone(),
        schedule,
        plugins.clone(),
        HttpClient::new(&settings.allow_private_targets),
        metrics.clone(),
        settings.lease,
        settings.delivery_concurrency,
    ));
    let app = Arc::new(App {
        settings,
        store,
        plugins,
        deliverer: deliverer.clone(),
        metrics,
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(deliverer.run(stop_rx));
    tracing::info!(addr = %listener.local_addr()?, "wasmhook listening");
    axum::serve(listener, api::router(app.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    let _ = stop_tx.send(true);
    worker.await?;
    drop(app);
    // The store closes when its last user lets go; wait for that so the next
    // run (or a test restarting the engine) can open the file again.
    for _ in 0..500 {
        if closed.strong_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!("wasmhook stopped");
    Ok(())
}
