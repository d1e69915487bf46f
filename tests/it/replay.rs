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

async fn a_bulk_replay_sends_what_failed_during_an_outage(backend: Backend) {
    let engine = TestEngine::on(backend, |s| s.origin_concurrency = 1).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("outage").await;
    let once = json!({"strategy": "fixed", "retries": 0, "delay_ms": 0});
    let hook = engine
        .webhook(&key, &receiver.url, json!({"retry_policy": once}))
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    engine
        .trigger(&key, "order.created", json!({"n": "before"}))
        .await;
    receiver.wait_for(1, WAIT).await;
    let since = wasmhook::clock::rfc3339_ms(wasmhook::clock::now_ms() - 60_000);
    // The receiver is down: five events fail.
    receiver.answer(&[503; 5]);
    for n in 0..5 {
        engine.trigger(&key, "order.created", json!({"n": n})).await;
    }
    receiver.wait_for(6, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, failed) = engine
            .get(
                &format!("/api/webhooks/{hook_id}/deliveries?status=failed"),
                &key,
            )
            .await;
        if failed["data"].as_array().unwrap().len() == 5 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{failed}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Back up: replay what failed.
    let replay = |key: String| {
        let engine = &engine;
        let since = since.clone();
        async move {
            let resp = engine
                .http
                .post(format!("{}/api/webhooks/{hook_id}/replay", engine.url))
                .bearer_auth(&key)
                .header("idempotency-key", "outage-2026-12-04")
                .json(&json!({"since": since, "status": "failed"}))
                .send()
                .await
                .unwrap();
            let replayed = resp.headers().get("idempotent-replayed").is_some();
            (
                resp.status().as_u16(),
                replayed,
                resp.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, replayed, body) = replay(key.clone()).await;
    assert_eq!((status, replayed), (202, false), "{body}");
    assert_eq!(body["events"], 5, "{body}");
    let got = receiver.wait_for(11, WAIT).await;
    let order: Vec<Value> = got[6..]
        .iter()
        .map(|r| r.json()["data"]["n"].clone())
        .collect();
    assert_eq!(
        order,
        (0..5).map(|n| json!(n)).collect::<Vec<_>>(),
        "oldest first"
    );
    let id = body["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, now) = engine
            .get(&format!("/api/webhooks/{hook_id}/replays/{id}"), &key)
            .await;
        assert_eq!(status, StatusCode::OK, "{now}");
        if now["done"] == true {
            assert_eq!(now["deliveries"]["succeeded"], 5, "{now}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The same request again sends nothing and answers the first replay.
    let (status, replayed, again) = replay(key.clone()).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["id"], body["id"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 11);

    for (input, needle) in [
        (json!({"since": "yesterday"}), "RFC 3339"),
        (
            json!({"since": since, "status": "pending"}),
            "go out on their own",
        ),
        (json!({"since": since, "until": since}), "after since"),
    ] {
        let (status, body) = engine
            .post(&format!("/api/webhooks/{hook_id}/replay"), &key, input)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
}

on_both_backends!(
    an_event_is_resent_to_its_webhooks_whatever_their_status,
    a_bulk_replay_sends_what_failed_during_an_outage,
);
