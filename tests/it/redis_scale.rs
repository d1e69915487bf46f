//! Several engines on one Redis: shared work, hot reload reaching every
//! engine, an engine killed with SIGKILL mid-run, Redis restarted mid-run.

use crate::harness::{ADMIN, TestEngine, TestReceiver};
use crate::redis_server::RedisServer;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use wasmhook_tests::plugins;

#[tokio::test]
async fn engines_share_state_work_and_plugin_versions() {
    let redis = RedisServer::start().await;
    let a = TestEngine::spawn_redis(&redis.url(), "shared").await;
    let b = TestEngine::spawn_redis(&redis.url(), "shared").await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[500]);
    let key = a.tenant("acme").await;
    // The tenant, key and webhook made on A are visible on B.
    let hook = b
        .webhook(
            &key,
            &receiver.url,
            json!({"retry_policy": {"strategy": "fixed", "retries": 0, "delay_ms": 10}}),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let answer = a.trigger(&key, "invoice.paid", json!({"n": 1})).await;
    let delivery = answer["delivery_ids"][0].as_str().unwrap();
    let failed = b
        .wait_delivery(&key, hook_id, delivery, Duration::from_secs(10), |d| {
            d["status"] == "failed"
        })
        .await;
    assert_eq!(failed["attempts"], 1);
    // A manual retry on B is picked up at once (by whichever engine claims it).
    let (status, _) = b
        .post(
            &format!("/api/webhooks/{hook_id}/deliveries/{delivery}/retry"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, 202);
    a.wait_delivery(&key, hook_id, delivery, Duration::from_secs(5), |d| {
        d["status"] == "succeeded"
    })
    .await;

    // A plugin version uploaded on A is what B uses within a second.
    a.install_plugin(&key, "fmt", plugins::STANDARD_WEBHOOKS)
        .await;
    b.call(
        reqwest::Method::PATCH,
        &format!("/api/webhooks/{hook_id}"),
        &key,
        Some(json!({"plugin": "fmt"})),
    )
    .await;
    let first = b.trigger(&key, "invoice.paid", json!({"n": 2})).await;
    let d = b
        .wait_delivery(
            &key,
            hook_id,
            first["delivery_ids"][0].as_str().unwrap(),
            Duration::from_secs(60),
            |d| d["status"] == "succeeded",
        )
        .await;
    assert_eq!(d["attempt_log"][0]["plugin"], "fmt@1");
    a.install_plugin(&key, "fmt", plugins::STANDARD_WEBHOOKS)
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = b.trigger(&key, "invoice.paid", json!({"n": 3})).await;
    let d = b
        .wait_delivery(
            &key,
            hook_id,
            second["delivery_ids"][0].as_str().unwrap(),
            Duration::from_secs(60),
            |d| d["status"] == "succeeded",
        )
        .await;
    assert_eq!(d["attempt_log"][0]["plugin"], "fmt@2");

    // A rollback on A is a new version too: B uses it within a second.
    let (status, rolled) = a
        .post("/api/plugins/fmt/rollback", &key, json!({"version": 1}))
        .await;
    assert_eq!(status, axum::http::StatusCode::CREATED, "{rolled}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let third = b.trigger(&key, "invoice.paid", json!({"n": 4})).await;
    let d = b
        .wait_delivery(
            &key,
            hook_id,
            third["delivery_ids"][0].as_str().unwrap(),
            Duration::from_secs(60),
            |d| d["status"] == "succeeded",
        )
        .await;
    assert_eq!(d["attempt_log"][0]["plugin"], "fmt@3");
}

/// An engine process running from this test binary (see `child_engine`).
struct ChildEngine {
    child: Child,
    url: String,
}

impl ChildEngine {
    async fn spawn(redis_url: &str, prefix: &str) -> ChildEngine {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_engine",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("WH_TEST_CHILD", "1")
            .env("WASMHOOK_LISTEN", format!("127.0.0.1:{port}"))
            .env("WASMHOOK_REDIS_URL", redis_url)
            .env("WASMHOOK_REDIS_PREFIX", prefix)
            .env("WASMHOOK_ADMIN_TOKEN", ADMIN)
            .env("WASMHOOK_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8")
            .env("WASMHOOK_LEASE_MS", "10000")
            .env("WASMHOOK_SCHEDULE_PARTITIONS", "4")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{url}/health")).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "child engine did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ChildEngine { child, url }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ChildEngine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Triggers `n` events on `url`, 16 at a time; returns the delivery ids of
/// the triggers that were accepted (answered 202).
async fn trigger_many(url: String, key: String, n: usize, tag: &'static str) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        set.spawn(async move {
            let resp = http
                .post(format!("{url}/api/events"))
                .bearer_auth(&key)
                .json(&json!({"type": "order.created", "data": {"n": i, "from": tag}}))
                .send()
                .await
                .ok()?;
            if resp.status() != 202 {
                return None;
            }
            let body: Value = resp.json().await.ok()?;
            Some(body["delivery_ids"][0].as_str()?.to_owned())
        });
        while set.len() >= 16 {
            if let Some(Ok(Some(id))) = set.join_next().await {
                accepted.push(id);
            }
        }
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Some(id)) = r {
            accepted.push(id);
        }
    }
    accepted
}

async fn wait_all_seen(
    receiver: &TestReceiver,
    accepted: &HashSet<String>,
    within: Duration,
) -> HashMap<String, usize> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in receiver.received() {
            *seen.entry(r.header("webhook-id").to_owned()).or_default() += 1;
        }
        let missing = accepted.iter().filter(|id| !seen.contains_key(*id)).count();
        if missing == 0 {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} accepted deliveries never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_engine_killed_mid_run_loses_nothing() {
    let redis = RedisServer::start().await;
    let mut a = ChildEngine::spawn(&redis.url(), "crash").await;
    let mut b = ChildEngine::spawn(&redis.url(), "crash").await;
    let receiver = TestReceiver::spawn().await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/api/tenants", a.url))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "crash", "name": "crash"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let resp = http
        .post(format!("{}/api/webhooks", a.url))
        .bearer_auth(&key)
        .json(&json!({"url": receiver.url, "events": ["*"], "retry_policy": {"strategy": "fixed", "retries": 20, "delay_ms": 200}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    const N: usize = 1500;
    let on_a = tokio::spawn(trigger_many(a.url.clone(), key.clone(), N, "a"));
    let on_b = tokio::spawn(trigger_many(b.url.clone(), key.clone(), N, "b"));
    // Kill B once it has accepted part of its share and has deliveries in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while receiver.received().len() < N / 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.kill();
    let mut accepted: HashSet<String> = on_a.await.unwrap().into_iter().collect();
    let from_b = on_b.await.unwrap();
    assert!(
        !from_b.is_empty() && from_b.len() < N,
        "B was killed mid-run ({} accepted)",
        from_b.len()
    );
    accepted.extend(from_b);

    let seen = wait_all_seen(&receiver, &accepted, Duration::from_secs(90)).await;
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    eprintln!(
        "crash test: {} accepted, {} arrived, {duplicates} duplicates",
        accepted.len(),
        seen.len()
    );
    // Only attempts in flight on B when it died can repeat: at most its concurrency (16 triggers at a time here).
    assert!(duplicates <= 64, "{duplicates} duplicates");
    assert!(seen.keys().all(|id| id.starts_with("dlv_")));
    a.kill();
}

#[tokio::test]
async fn engines_reconnect_after_redis_restarts() {
    let mut redis = RedisServer::start_durable().await;
    let engine = TestEngine::spawn_redis(&redis.url(), "restart").await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("restart").await;
    engine
        .webhook(
            &key,
            &receiver.url,
            json!({"retry_policy": {"strategy": "fixed", "retries": 30, "delay_ms": 300}}),
        )
        .await;
    let before: HashSet<String> = trigger_many(engine.url.clone(), key.clone(), 200, "before")
        .await
        .into_iter()
        .collect();
    assert_eq!(before.len(), 200);
    redis.restart().await;
    // Once Redis is back the engine serves again (the first calls may fail while it reconnects).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut after = HashSet::new();
    while after.len() < 200 {
        after.extend(trigger_many(engine.url.clone(), key.clone(), 50, "after").await);
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine did not recover after the Redis restart"
        );
    }
    let all: HashSet<String> = before.union(&after).cloned().collect();
    wait_all_seen(&receiver, &all, Duration::from_secs(60)).await;
    // The embedded store's commit metrics are not shown for Redis.
    assert!(!engine.metrics().await.contains("wasmhook_store_"));
}
