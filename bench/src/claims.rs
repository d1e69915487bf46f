//! The retry path: claims per second when thousands of deliveries come due
//! at once, one claimer and four concurrent claimers (as four engines), on
//! both backends; also checks nothing is claimed twice while leased.

use crate::harness::RedisServer;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmhook::ids::{EventId, TenantId};
use wasmhook::model::{Tenant, Webhook};
use wasmhook::schedule::Schedule;
use wasmhook::store::{EmbeddedStore, Ingested, NewEvent, RedisStore, Store};

const FAN_OUT: usize = 10;
const BATCH: usize = 256;
const LEASE_MS: u64 = 600_000;

/// Fills the schedule with `n` deliveries due now (events fanned out to 10
/// webhooks), each as a retry: its first attempt recorded as failed with the
/// next one due at once, so that every delivery has its own entry as
/// retries do (a trigger's fresh deliveries share their event's lease).
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
            .put_webhook(Webhook::new(
                t.clone(),
                "http://127.0.0.1:9/x",
                vec!["*".into()],
                0,
            ))
            .await?;
    }
    let mut inserts = tokio::task::JoinSet::new();
    let store_events = n / FAN_OUT;
    let data = RawValue::from_string(r#"{"amount": 12.5}"#.into())?;
    for i in 0..store_events {
        let (store, t, data) = (store.clone(), t.clone(), data.clone());
        inserts.spawn(async move {
            let created = store
                .insert_event(NewEvent {
                    id: EventId::from_trusted(format!("e{i}")),
                    tenant: t,
                    event_type: "bench.due".into(),
                    data,
                    occurred_at_ms: 1,
                    idempotency_key: None,
                    fingerprint: i.to_string(),
                    only_webhook: None,
                    due_at_ms: wasmhook::clock::now_ms() + LEASE_MS,
                })
                .await?;
            let Ingested::Created { deliveries, .. } = created else {
                anyhow::bail!("event not created");
            };
            for mut d in deliveries {
                d.attempts = 1;
                d.next_attempt_at_ms = Some(1);
                store.finish_attempt(d, None).await?;
            }
            anyhow::Ok(())
        });
        while inserts.len() >= 64 {
            inserts.join_next().await.expect("tasks")??;
        }
    }
    while let Some(r) = inserts.join_next().await {
        r??;
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

pub async fn run(n: usize) -> anyhow::Result<()> {
    println!("### Retry path: claims per second\n");
    println!("| backend | claimers | deliveries | claims/s | claimed twice |");
    println!("| --- | --- | --- | --- | --- |");
    for claimers in [1, 4] {
        let dir = tempfile::tempdir()?;
        let defaults = wasmhook::config::RawConfig::default().validate()?;
        let embedded = Arc::new(EmbeddedStore::open(
            dir.path(),
            Duration::from_secs(86_400),
            defaults.store_cache_bytes,
        )?);
        fill(embedded.clone(), n).await?;
        let (rate, dup) = claim_all(embedded.clone(), n, claimers).await?;
        println!("| embedded | {claimers} | {n} | {rate:.0} | {dup} |");

        let redis_dir = tempfile::tempdir()?;
        let server = RedisServer::start(redis_dir.path()).await?;
        let url = server.url();
        let redis =
            Arc::new(RedisStore::connect(&url, "bench", 16, Duration::from_secs(86_400)).await?);
        fill(redis.clone(), n).await?;
        let (rate, dup) = claim_all(redis.clone(), n, claimers).await?;
        println!("| redis (16 partitions) | {claimers} | {n} | {rate:.0} | {dup} |");
    }
    Ok(())
}
