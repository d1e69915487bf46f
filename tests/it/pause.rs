//! Pausing without loss: a disabled webhook's pending deliveries wait
//! (through a restart) and go out, oldest first, when it is enabled;
//! deleting a webhook fails its pending deliveries.

use crate::harness::{Backend, TestEngine, TestReceiver, on_both_backends};
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn event_deliveries(engine: &TestEngine, key: &str, event: &Value) -> Vec<Value> {
    let (status, body) = engine
        .get(
            &format!("/api/events/{}", event["id"].as_str().unwrap()),
            key,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

/// Polls until every delivery of `events` satisfies `done`.
async fn wait_all(engine: &TestEngine, key: &str, events: &[Value], done: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    'poll: loop {
        for e in events {
            for d in event_deliveries(engine, key, e).await {
                if !done(&d) {
                    assert!(tokio::time::Instant::now() < deadline, "never: {d}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'poll;
                }
            }
        }
        return;
    }
}

async fn a_disabled_webhooks_deliveries_wait_and_go_out_when_it_is_enabled(backend: Backend) {
    let mut engine = TestEngine::on(backend, |s| s.origin_concurrency = 1).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[500, 500, 500]);
    let key = engine.tenant("pause").await;
    let retry = json!({"strategy": "fixed", "retries": 5, "delay_ms": 1000, "jitter": false});
    let hook = engine
        .webhook(&key, &receiver.url, json!({"retry_policy": retry}))
        .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    let mut events = Vec::new();
    for n in 0..3 {
        events.push(engine.trigger(&key, "order.created", json!({"n": n})).await);
    }
    receiver.wait_for(3, WAIT).await;
    let (status, _) = engine
        .post(&format!("/api/webhooks/{id}/disable"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Their retries come due, find the webhook disabled, and wait.
    wait_all(&engine, &key, &events, |d| d["waiting_for_webhook"] == true).await;
    for e in &events {
        let d = &event_deliveries(&engine, &key, e).await[0];
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(d["attempts"], 1, "no attempt used: {d}");
        assert_eq!(d["next_attempt_at"], Value::Null);
        assert_eq!(d["reason"], "waiting for its webhook to be enabled");
    }
    engine.assert_metrics(&["wasmhook_schedule_paused 3"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.received().len(),
        3,
        "nothing is sent while disabled"
    );

    // They survive a restart.
    engine = engine.restart().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    wait_all(&engine, &key, &events, |d| d["waiting_for_webhook"] == true).await;
    assert_eq!(receiver.received().len(), 3);

    let (status, enabled) = engine
        .post(&format!("/api/webhooks/{id}/enable"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert_eq!(enabled["resumed_deliveries"], 3, "{enabled}");
    let got = receiver.wait_for(6, WAIT).await;
    let order: Vec<Value> = got[3..]
        .iter()
        .map(|r| r.json()["data"]["n"].clone())
        .collect();
    assert_eq!(order, [json!(0), json!(1), json!(2)], "oldest first");
    wait_all(&engine, &key, &events, |d| {
        d["status"] == "succeeded" && d["attempts"] == 2
    })
    .await;
    engine.assert_metrics(&["wasmhook_schedule_paused 0"]).await;
}

async fn deleting_a_webhook_fails_its_pending_deliveries(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[500]);
    let key = engine.tenant("delete").await;
    let later = json!({"strategy": "fixed", "retries": 3, "delay_ms": 600000});
    let hook = engine
        .webhook(&key, &receiver.url, json!({"retry_policy": later}))
        .await;
    let event = engine.trigger(&key, "order.created", json!({})).await;
    receiver.wait_for(1, WAIT).await;
    wait_all(&engine, &key, std::slice::from_ref(&event), |d| {
        d["attempts"] == 1
    })
    .await;
    let (status, _) = engine
        .call(
            Method::DELETE,
            &format!("/api/webhooks/{}", hook["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let d = &event_deliveries(&engine, &key, &event).await[0];
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["reason"], "webhook was deleted");
}

on_both_backends!(
    a_disabled_webhooks_deliveries_wait_and_go_out_when_it_is_enabled,
    deleting_a_webhook_fails_its_pending_deliveries,
);
