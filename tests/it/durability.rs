//! Restart durability, on both backends: deliveries pending when the
//! engine stops complete after it starts again on the same store; accepted
//! events and final outcomes survive a stop. The embedded store's commit
//! metrics.

use crate::harness::{Backend, TestEngine, TestReceiver, on_both_backends, sample};
use serde_json::json;
use std::time::Duration;

async fn pending_deliveries_complete_after_a_restart(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[503, 503, 503]);
    let key = engine.tenant("durable").await;
    let hook = engine
        .webhook(&key, &receiver.url, json!({
            "retry_policy": {"strategy": "fixed", "retries": 5, "delay_ms": 1500, "jitter": false}
        }))
        .await;
    for n in 0..3 {
        engine.trigger(&key, "case.updated", json!({"n": n})).await;
    }
    // Each delivery failed once and is now waiting for its retry.
    receiver.wait_for(3, Duration::from_secs(10)).await;
    let engine = engine.restart().await;
    let got = receiver.wait_for(6, Duration::from_secs(15)).await;
    let mut ns: Vec<i64> = got[3..]
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, [0, 1, 2]);
    let hook_id = hook["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, stats) = engine
            .get(&format!("/api/webhooks/{hook_id}/stats"), &key)
            .await;
        if stats["succeeded"] == 3 {
            assert_eq!(stats["pending"], 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.stop().await;
}

async fn accepted_events_survive_a_restart(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let key = engine.tenant("persist").await;
    let answer = engine
        .trigger(&key, "client.created", json!({"firstName": "Ada"}))
        .await;
    let engine = engine.restart().await;
    let (status, event) = engine
        .get(
            &format!("/api/events/{}", answer["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["data"]["firstName"], "Ada");
    engine.stop().await;
}

/// The embedded store counts its group commits, the writes they held and
/// how long each took.
#[tokio::test]
async fn the_embedded_store_counts_its_commits() {
    let engine = TestEngine::spawn().await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("commits").await;
    engine.webhook(&key, &receiver.url, json!({})).await;
    let before = engine.metric("wasmhook_store_writes_total").await.unwrap();
    for n in 0..10 {
        engine.trigger(&key, "case.updated", json!({"n": n})).await;
    }
    receiver.wait_for(10, Duration::from_secs(10)).await;
    // Each delivery's result is written after the receiver has answered.
    // One scrape per look, so that its samples agree with each other.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = engine.metrics().await;
        let writes = sample(&metrics, "wasmhook_store_writes_total").unwrap();
        if writes - before >= 20.0 {
            break metrics;
        }
        assert!(tokio::time::Instant::now() < deadline, "{writes} writes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let value = |name| sample(&metrics, name).unwrap();
    let (writes, commits) = (
        value("wasmhook_store_writes_total"),
        value("wasmhook_store_commits_total"),
    );
    assert!(
        commits >= 1.0 && commits <= writes,
        "{commits} commits of {writes} writes"
    );
    assert_eq!(
        value("wasmhook_store_commit_duration_seconds_count"),
        commits,
        "every commit is timed"
    );
    assert_eq!(value("wasmhook_store_commit_failures_total"), 0.0);
}

/// A delivery whose outcome is final does not wait for its record to be
/// durable (`Store::finish_final`). Stopping the engine right after the
/// receiver has them all still writes every record, so after a restart each
/// delivery is `succeeded` and none is sent again.
async fn final_outcomes_recorded_just_before_a_stop_survive_it(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("final").await;
    let hook = engine.webhook(&key, &receiver.url, json!({})).await;
    for n in 0..20 {
        engine.trigger(&key, "case.updated", json!({"n": n})).await;
    }
    receiver.wait_for(20, Duration::from_secs(10)).await;
    let engine = engine.restart().await;
    let hook_id = hook["id"].as_str().unwrap();
    let (_, stats) = engine
        .get(&format!("/api/webhooks/{hook_id}/stats"), &key)
        .await;
    assert_eq!(stats["succeeded"], 20, "{stats}");
    assert_eq!(stats["pending"], 0, "{stats}");
    // Nothing comes due again after the restart.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 20);
    engine.stop().await;
}

on_both_backends!(
    pending_deliveries_complete_after_a_restart,
    accepted_events_survive_a_restart,
    final_outcomes_recorded_just_before_a_stop_survive_it,
);
