//! `wasmhook-bench`: measures the engine on this machine. Scenarios so far:
//!
//! - `claims`: the retry path — how many due deliveries per second the
//!   schedule hands out when thousands come due at once, with one claimer and
//!   with four concurrent claimers (as four engines would), on the embedded
//!   store and on a real Redis it starts itself. Also checks that no delivery
//!   is claimed twice while its lease holds.

use clap::{Parser, Subcommand};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmhook::ids::{EventId, TenantId, WebhookId};
use wasmhook::model::{Secret, Tenant, Webhook};
use wasmhook::schedule::Schedule;
use wasmhook::schedule::policy::RetryPolicy;
use wasmhook::store::{EmbeddedStore, Ingested, NewEvent, RedisStore, Store};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Claims per second from the schedule (both backends).
    Claims {
        /// Deliveries made due at once.
        #[arg(long, default_value_t = 20_000)]
        deliveries: usize,
    },
}

const FAN_OUT: usize = 10;
const BATCH: usize = 256;
const LEASE_MS: u64 = 600_000;

struct RedisServer(Child, u16);

impl RedisServer {
    async fn start(dir: &std::path::Path) -> anyhow::Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(RedisServer(child, port));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("redis-server did not start")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fills the schedule with `n` deliveries due now (events fanned out to 10 webhooks).
async fn fill(store: Arc<dyn Store>, n: usize) -> anyhow::Result<()> {
    let t = TenantId::from_trusted("bench");
    store
        .create_tenant(
            Tenant {
                id: t.clone(),
                name: "bench".into(),
                created_at_ms: 0,
            },
            "bench-key".into(),
        )
        .await?;
    for _ in 0..FAN_OUT {
        store
            .put_webhook(Webhook {
                id: WebhookId::generate(),
                tenant: t.clone(),
                url: "http://127.0.0.1:9/x".into(),
                events: vec!["*".into()],
                active: true,
                disabled_reason: None,
                description: String::new(),
                headers: BTreeMap::new(),
                metadata: BTreeMap::new(),
                plugin: None,
                plugin_config: serde_json::Value::Null,
                filter: None,
                retry_policy: RetryPolicy::default(),
                timeout_ms: 1000,
                secret: Secret::generate(),
                retired_secrets: vec![],
                created_at_ms: 0,
                updated_at_ms: 0,
            })
            .await?;
    }
    let mut inserts = tokio::task::JoinSet::new();
    let store_events = n / FAN_OUT;
    let data = RawValue::from_string(r#"{"amount": 12.5}"#.into())?;
    for i in 0..store_events {
        let (store, t, data) = (store.clone(), t.clone(), data.clone());
        inserts.spawn(async move {
            store
                .insert_event(NewEvent {
                    id: EventId::from_trusted(format!("e{i}")),
                    tenant: t,
                    event_type: "bench.due".into(),
                    data,
                    occurred_at_ms: 1,
                    idempotency_key: None,
                    fingerprint: i.to_string(),
                    only_webhook: None,
                    due_at_ms: 1,
                })
                .await
        });
        while inserts.len() >= 64 {
            let r = inserts.join_next().await.expect("tasks")??;
            anyhow::ensure!(matches!(r, Ingested::Created { .. }));
        }
    }
    while let Some(r) = inserts.join_next().await {
        anyhow::ensure!(matches!(r??, Ingested::Created { .. }));
    }
    Ok(())
}

/// Claims everything due with `claimers` concurrent claimers; returns (claims/s, duplicates).
async fn claim_all(
    schedule: Arc<dyn Schedule>,
    n: usize,
    claimers: usize,
) -> anyhow::Result<(f64, usize)> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..claimers {
        let schedule = schedule.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = schedule
                    .claim_due(wasmhook::clock::now_ms(), BATCH, LEASE_MS)
                    .await?;
                if batch.is_empty() {
                    return anyhow::Ok(got);
                }
                got.extend(batch.into_iter().map(|(_, d)| d));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let unique: HashSet<_> = all.iter().collect();
    anyhow::ensure!(unique.len() == n, "claimed {} of {n}", unique.len());
    Ok((n as f64 / elapsed, all.len() - unique.len()))
}

async fn claims(n: usize) -> anyhow::Result<()> {
    println!("| backend | claimers | deliveries | claims/s | claimed twice |");
    println!("| --- | --- | --- | --- | --- |");
    for claimers in [1, 4] {
        let dir = tempfile::tempdir()?;
        let embedded = Arc::new(EmbeddedStore::open(
            dir.path(),
            Duration::from_secs(86_400),
        )?);
        fill(embedded.clone(), n).await?;
        let (rate, dup) = claim_all(embedded.clone(), n, claimers).await?;
        println!("| embedded | {claimers} | {n} | {rate:.0} | {dup} |");

        let redis_dir = tempfile::tempdir()?;
        let server = RedisServer::start(redis_dir.path()).await?;
        let url = format!("redis://127.0.0.1:{}/", server.1);
        let redis =
            Arc::new(RedisStore::connect(&url, "bench", 16, Duration::from_secs(86_400)).await?);
        fill(redis.clone(), n).await?;
        let (rate, dup) = claim_all(redis.clone(), n, claimers).await?;
        println!("| redis (16 partitions) | {claimers} | {n} | {rate:.0} | {dup} |");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.scenario {
            Scenario::Claims { deliveries } => claims(deliveries).await,
        }
    })
}
