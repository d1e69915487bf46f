//! Limits that protect the engine and receivers: the per-tenant ingest
//! limit (`tenant_events_per_second`), on both backends and across two
//! engines on one Redis.

use crate::harness::{Backend, TestEngine, on_both_backends};
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
