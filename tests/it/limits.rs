//! Limits that protect the engine and receivers: the per-tenant ingest
//! limit (`tenant_events_per_second`), on both backends and across two
//! engines on one Redis.

use crate::harness::{Backend, TestEngine, TestReceiver, on_both_backends};
use axum::http::StatusCode;
use serde_json::json;
use std::time::Duration;

fn two_per_second_bursts_of_five(s: &mut wasmhook::config::Settings) {
    s.tenant_events = Some(wasmhook::limit::Rate {
        per_second: 2.0,
        burst: 5,
    });
}

async fn raw_trigger(engine: &TestEngine, key: &str) -> reqwest::Response {
    engine
        .http
        .post(format!("{}/api/events", engine.url))
        .bearer_auth(key)
        .json(&json!({"type": "stock.low", "data": {}}))
        .send()
        .await
        .unwrap()
}

async fn a_tenant_past_its_ingest_limit_is_told_when_to_come_back(backend: Backend) {
    let engine = TestEngine::on(backend, two_per_second_bursts_of_five).await;
    let key = engine.tenant("busy").await;
    let other = engine.tenant("calm").await;
    for _ in 0..5 {
        engine.trigger(&key, "stock.low", json!({})).await;
    }
    let resp = raw_trigger(&engine, &key).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 events per second"),
        "{body}"
    );
    // Another tenant has its own allowance.
    engine.trigger(&other, "stock.low", json!({})).await;
    // A batch counts each event; one over the burst is refused outright.
    let (status, body) = engine
        .post(
            "/api/events/batch",
            &other,
            json!({"events": (0..6).map(|i| json!({"type": "x", "data": {"i": i}})).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("burst of 5"),
        "{body}"
    );
    // A refused request takes nothing: after half a second, one more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    engine.trigger(&key, "stock.low", json!({})).await;
    assert_eq!(raw_trigger(&engine, &key).await.status().as_u16(), 429);
}

on_both_backends!(a_tenant_past_its_ingest_limit_is_told_when_to_come_back);

#[tokio::test]
async fn with_redis_the_ingest_limit_holds_across_engines() {
    let server = crate::redis_server::RedisServer::start().await;
    let a =
        TestEngine::spawn_redis_tuned(&server.url(), "limits", two_per_second_bursts_of_five).await;
    let b =
        TestEngine::spawn_redis_tuned(&server.url(), "limits", two_per_second_bursts_of_five).await;
    let key = a.tenant("shared").await;
    for engine in [&a, &b, &a, &b, &a] {
        engine.trigger(&key, "stock.low", json!({})).await;
    }
    assert_eq!(raw_trigger(&b, &key).await.status().as_u16(), 429);
    assert_eq!(raw_trigger(&a, &key).await.status().as_u16(), 429);
}

const WAIT: Duration = Duration::from_secs(20);

async fn batch(engine: &TestEngine, key: &str, n: usize) {
    let events: Vec<_> = (0..n)
        .map(|i| json!({"type": "stock.low", "data": {"i": i}}))
        .collect();
    let (status, body) = engine
        .post("/api/events/batch", key, json!({"events": events}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

async fn a_rate_limited_webhook_gets_its_deliveries_at_its_pace(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("paced").await;
    let hook = engine
        .webhook(&key, &receiver.url, json!({"rate_limit": 5}))
        .await;
    assert_eq!(hook["rate_limit"], 5.0);
    batch(&engine, &key, 15).await;
    let got = receiver.wait_for(15, WAIT).await;
    // A burst of 5, then 5 a second: the last ten take about two seconds.
    let span = got[14].at - got[0].at;
    assert!(span >= Duration::from_millis(1600), "{span:?}");
    let early = got
        .iter()
        .filter(|r| r.at - got[0].at < Duration::from_millis(500))
        .count();
    assert!(early <= 7, "{early} in the first half second");
    // Nothing was failed or used an attempt to wait.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, list) = engine
            .get(
                &format!("/api/webhooks/{}/deliveries", hook["id"].as_str().unwrap()),
                &key,
            )
            .await;
        let list = list["data"].as_array().unwrap();
        assert_eq!(list.len(), 15);
        if list.iter().all(|d| d["status"] == "succeeded") {
            assert!(list.iter().all(|d| d["attempts"] == 1), "{list:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_receivers_retry_after_holds_the_whole_webhook(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer_with_headers(429, &[("retry-after", "2")]);
    let key = engine.tenant("held").await;
    let hook = engine.webhook(&key, &receiver.url, json!({})).await;
    let hook_id = hook["id"].as_str().unwrap();
    engine.trigger(&key, "stock.low", json!({"n": 1})).await;
    let first = receiver.wait_for(1, WAIT).await;
    // Once the 429 is recorded, the webhook is held.
    engine
        .wait_delivery(&key, hook_id, first[0].header("webhook-id"), WAIT, |d| {
            d["attempts"] == 1
        })
        .await;
    engine.trigger(&key, "stock.low", json!({"n": 2})).await;
    let got = receiver.wait_for(3, WAIT).await;
    // The second event waited out the receiver's two seconds as well.
    for r in &got[1..] {
        let after = r.at - first[0].at;
        assert!(after >= Duration::from_millis(1800), "{after:?}");
    }
}

fn breaker_after_three(s: &mut wasmhook::config::Settings) {
    s.breakers = wasmhook::delivery::breaker::BreakerRule {
        failures: 3,
        cooldown_ms: 1500,
    };
}

async fn a_failing_receivers_breaker_opens_and_one_probe_closes_it(backend: Backend) {
    let engine = TestEngine::on(backend, breaker_after_three).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[500; 6]);
    let key = engine.tenant("breaker").await;
    let retry = json!({"strategy": "fixed", "retries": 5, "delay_ms": 100, "jitter": false});
    let hook = engine
        .webhook(&key, &receiver.url, json!({"retry_policy": retry}))
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    assert_eq!(hook["breaker"]["state"], "closed");
    batch(&engine, &key, 6).await;
    receiver.wait_for(6, WAIT).await;
    // Three failures in a row open it; the retries of all six wait.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, w) = engine.get(&format!("/api/webhooks/{hook_id}"), &key).await;
        if w["breaker"]["state"] == "open" {
            assert!(
                w["breaker"]["consecutive_failures"].as_u64().unwrap() >= 3,
                "{w}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{w}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.received().len(),
        6,
        "nothing goes while it is open"
    );
    engine
        .assert_metrics(&[
            "wasmhook_breakers_opened_total 1",
            "wasmhook_breakers_open 1",
        ])
        .await;
    // After the cool-down one probe succeeds (the receiver is back) and
    // everything goes, each delivery's attempts untouched by the wait.
    let got = receiver.wait_for(12, WAIT).await;
    assert!(
        got[6].at - got[5].at >= Duration::from_millis(1200),
        "the probe waited"
    );
    let (_, w) = engine.get(&format!("/api/webhooks/{hook_id}"), &key).await;
    assert_eq!(w["breaker"]["state"], "closed", "{w}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, list) = engine
            .get(&format!("/api/webhooks/{hook_id}/deliveries"), &key)
            .await;
        let list = list["data"].as_array().unwrap().clone();
        if list.iter().all(|d| d["status"] == "succeeded") {
            let attempts: u64 = list.iter().map(|d| d["attempts"].as_u64().unwrap()).sum();
            assert_eq!(attempts, 12, "{list:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_backends!(
    a_failing_receivers_breaker_opens_and_one_probe_closes_it,
    a_rate_limited_webhook_gets_its_deliveries_at_its_pace,
    a_receivers_retry_after_holds_the_whole_webhook,
);

#[tokio::test]
async fn with_redis_a_webhooks_rate_limit_holds_across_engines() {
    let server = crate::redis_server::RedisServer::start().await;
    let a = TestEngine::spawn_redis_tuned(&server.url(), "paced", |_| {}).await;
    let b = TestEngine::spawn_redis_tuned(&server.url(), "paced", |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = a.tenant("shared").await;
    a.webhook(&key, &receiver.url, json!({"rate_limit": 4}))
        .await;
    tokio::join!(batch(&a, &key, 6), batch(&b, &key, 6));
    let got = receiver.wait_for(12, WAIT).await;
    // Together, not each: a burst of 4, then 4 a second.
    let span = got[11].at - got[0].at;
    assert!(span >= Duration::from_millis(1600), "{span:?}");
}

#[tokio::test]
async fn with_redis_an_open_breaker_holds_on_every_engine() {
    let server = crate::redis_server::RedisServer::start().await;
    let a = TestEngine::spawn_redis_tuned(&server.url(), "breakers", breaker_after_three).await;
    let b = TestEngine::spawn_redis_tuned(&server.url(), "breakers", breaker_after_three).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[500; 3]);
    let key = a.tenant("shared").await;
    let retry = json!({"strategy": "fixed", "retries": 5, "delay_ms": 100, "jitter": false});
    let hook = a
        .webhook(&key, &receiver.url, json!({"retry_policy": retry}))
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    batch(&a, &key, 3).await;
    receiver.wait_for(3, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, w) = b.get(&format!("/api/webhooks/{hook_id}"), &key).await;
        if w["breaker"]["state"] == "open" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{w}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A trigger through the other engine waits too.
    batch(&b, &key, 2).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.received().len(), 3);
    receiver.wait_for(8, WAIT).await;
}
