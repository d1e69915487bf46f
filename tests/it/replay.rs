//! Sending events again: one event to one or all of its webhooks, whatever
//! its deliveries' status, as new deliveries linked to the originals.

use crate::harness::{Backend, TestEngine, TestReceiver, on_both_backends};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn an_event_is_resent_to_its_webhooks_whatever_their_status(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let (a, b) = (TestReceiver::spawn().await, TestReceiver::spawn().await);
    let key = engine.tenant("resend").await;
    let hook_a = engine.webhook(&key, &a.url, json!({})).await;
    engine.webhook(&key, &b.url, json!({})).await;
    let event = engine
        .trigger(&key, "document.signed", json!({"doc": 7}))
        .await;
    let event_id = event["id"].as_str().unwrap();
    let first_a = a.wait_for(1, WAIT).await;
    b.wait_for(1, WAIT).await;

    let (status, resent) = engine
        .post(&format!("/api/events/{event_id}/resend"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resent}");
    assert_eq!(resent["deliveries"], 2, "{resent}");
    let again_a = a.wait_for(2, WAIT).await;
    b.wait_for(2, WAIT).await;
    assert_eq!(again_a[1].json()["data"], json!({"doc": 7}));
    assert_ne!(
        again_a[1].header("webhook-id"),
        first_a[0].header("webhook-id")
    );

    // Only to one webhook: linked to the latest delivery there.
    let (status, one) = engine
        .post(
            &format!("/api/events/{event_id}/resend"),
            &key,
            json!({"webhook_id": hook_a["id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{one}");
    assert_eq!(one["deliveries"], 1);
    a.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.received().len(), 2);

    let deadline = tokio::time::Instant::now() + WAIT;
    let deliveries = loop {
        let (_, body) = engine.get(&format!("/api/events/{event_id}"), &key).await;
        let list = body["deliveries"].as_array().unwrap().clone();
        if list.len() == 5 && list.iter().all(|d| d["status"] == "succeeded") {
            break list;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let to_a: Vec<&Value> = deliveries
        .iter()
        .filter(|d| d["webhook_id"] == hook_a["id"])
        .collect();
    assert_eq!(to_a.len(), 3);
    assert_eq!(to_a[0]["replay_of"], Value::Null);
    assert_eq!(to_a[1]["replay_of"], to_a[0]["id"]);
    assert_eq!(to_a[2]["replay_of"], to_a[1]["id"]);
    assert_eq!(to_a[2]["id"], one["delivery_ids"][0]);

    let (status, body) = engine
        .post(
            &format!("/api/events/{event_id}/resend"),
            &key,
            json!({"webhook_id": "wh_nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = engine
        .post("/api/events/evt_nope/resend", &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

on_both_backends!(an_event_is_resent_to_its_webhooks_whatever_their_status);
