//! Retries with backoff, Retry-After, exhausted attempts and manual retry,
//! 410 Gone.

use crate::harness::{Backend, TestEngine, TestReceiver, on_both_backends};
use axum::http::StatusCode;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn failing_receiver_is_retried_with_backoff_until_it_lands(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[500, 503]);
    let key = engine.tenant("backoff").await;
    let hook = engine
        .webhook(&key, &receiver.url, json!({
            "retry_policy": {"strategy": "exponential", "retries": 3, "initial_delay_ms": 300, "jitter": false}
        }))
        .await;
    engine.trigger(&key, "invoice.paid", json!({"n": 1})).await;

    let got = receiver.wait_for(3, WAIT).await;
    let first_gap = got[1].at - got[0].at;
    let second_gap = got[2].at - got[1].at;
    assert!(first_gap >= Duration::from_millis(280), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(580), "{second_gap:?}");
    // Every attempt carries the same delivery id and the same body.
    assert_eq!(got[0].header("webhook-id"), got[2].header("webhook-id"));
    assert_eq!(got[0].json()["data"], got[2].json()["data"]);

    let d = engine
        .wait_delivery(
            &key,
            hook["id"].as_str().unwrap(),
            got[0].header("webhook-id"),
            WAIT,
            |d| d["status"] == "succeeded",
        )
        .await;
    let log = d["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["status_code"], 500);
    assert_eq!(log[0]["outcome"], "http_error");
    assert_eq!(log[1]["status_code"], 503);
    assert_eq!(log[2]["outcome"], "succeeded");
}

async fn exhausted_delivery_fails_and_can_be_retried_by_hand(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[500, 502]);
    let key = engine.tenant("exhaust").await;
    let hook = engine
        .webhook(
            &key,
            &receiver.url,
            json!({
                "retry_policy": {"strategy": "fixed", "retries": 1, "delay_ms": 100}
            }),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    engine
        .trigger(&key, "payment.failed", json!({"n": 1}))
        .await;
    let got = receiver.wait_for(2, WAIT).await;
    let delivery = got[0].header("webhook-id").to_owned();
    let d = engine
        .wait_delivery(&key, hook_id, &delivery, WAIT, |d| d["status"] == "failed")
        .await;
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 2 attempts"),
        "{d}"
    );

    let (_, failed) = engine
        .get(
            &format!("/api/webhooks/{hook_id}/deliveries?status=failed"),
            &key,
        )
        .await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    let (_, stats) = engine
        .get(&format!("/api/webhooks/{hook_id}/stats"), &key)
        .await;
    assert_eq!(stats["failed"], 1);
    assert_eq!(stats["attempts"], 2);

    let (status, body) = engine
        .post(
            &format!("/api/webhooks/{hook_id}/deliveries/{delivery}/retry"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    receiver.wait_for(3, WAIT).await;
    let d = engine
        .wait_delivery(&key, hook_id, &delivery, WAIT, |d| {
            d["status"] == "succeeded"
        })
        .await;
    assert_eq!(d["attempts"], 3);
    let (_, stats) = engine
        .get(&format!("/api/webhooks/{hook_id}/stats"), &key)
        .await;
    assert_eq!(
        (stats["failed"].as_u64(), stats["succeeded"].as_u64()),
        (Some(0), Some(1))
    );

    // A delivery that succeeded is not retried by hand.
    let (status, body) = engine
        .post(
            &format!("/api/webhooks/{hook_id}/deliveries/{delivery}/retry"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

async fn retry_after_is_honoured(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer_with_headers(429, &[("retry-after", "1")]);
    let key = engine.tenant("ratelimited").await;
    engine
        .webhook(
            &key,
            &receiver.url,
            json!({
                "retry_policy": {"strategy": "fixed", "retries": 2, "delay_ms": 50}
            }),
        )
        .await;
    engine.trigger(&key, "x.y", json!({})).await;
    let got = receiver.wait_for(2, WAIT).await;
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "{:?}",
        got[1].at - got[0].at
    );
}

async fn gone_disables_the_webhook(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[410]);
    let key = engine.tenant("gone").await;
    let hook = engine.webhook(&key, &receiver.url, json!({})).await;
    let hook_id = hook["id"].as_str().unwrap();
    engine.trigger(&key, "a.b", json!({})).await;
    let got = receiver.wait_for(1, WAIT).await;
    let d = engine
        .wait_delivery(&key, hook_id, got[0].header("webhook-id"), WAIT, |d| {
            d["status"] == "failed"
        })
        .await;
    assert!(d["reason"].as_str().unwrap().contains("410"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, w) = engine.get(&format!("/api/webhooks/{hook_id}"), &key).await;
        if w["active"] == false {
            assert!(w["disabled_reason"].as_str().unwrap().contains("410"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Disabled webhooks get no new events.
    assert_eq!(
        engine.trigger(&key, "a.b", json!({})).await["deliveries"],
        0
    );
}

/// Every attempt's log holds the request as sent (signature and
/// authorization values redacted) and the answer, headers included.
async fn the_attempt_log_holds_the_request_as_sent_and_the_answer(backend: Backend) {
    let engine = TestEngine::on(backend, |s| s.log_request_body_bytes = 10).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer_with_headers(503, &[("x-why", "busy")]);
    let key = engine.tenant("logs").await;
    let fixed = json!({"strategy": "fixed", "retries": 2, "delay_ms": 100, "jitter": false});
    let hook = engine
        .webhook(
            &key,
            &receiver.url,
            json!({"events": ["invoice.*"], "retry_policy": fixed, "headers": {"authorization": "Bearer s3cret", "x-team": "billing"}}),
        )
        .await;
    engine
        .trigger(&key, "invoice.paid", json!({"amount": 12}))
        .await;
    let got = receiver.wait_for(2, WAIT).await;
    let d = engine
        .wait_delivery(
            &key,
            hook["id"].as_str().unwrap(),
            got[0].header("webhook-id"),
            WAIT,
            |d| d["status"] == "succeeded",
        )
        .await;
    let first = &d["attempt_log"][0];
    let req = &first["request"];
    assert_eq!(req["url"], receiver.url, "{first}");
    assert_eq!(req["method"], "POST");
    assert_eq!(req["headers"]["webhook-signature"], "[redacted]", "{req}");
    assert_eq!(req["headers"]["authorization"], "[redacted]");
    assert_eq!(req["headers"]["x-team"], "billing");
    assert_eq!(req["headers"]["webhook-id"], got[0].header("webhook-id"));
    assert_eq!(
        req["headers"]["webhook-timestamp"],
        got[0].header("webhook-timestamp")
    );
    // The default format's body is shown whole, byte for byte as sent.
    assert_eq!(req["body"], got[0].text(), "{req}");
    assert_eq!(req["body_truncated"], false);
    assert_eq!(first["response"]["status"], 503);
    assert_eq!(first["response"]["headers"]["x-why"], "busy", "{first}");
    assert_eq!(d["attempt_log"][1]["response"]["status"], 200);
    assert!(!d.to_string().contains("s3cret"), "{d}");

    // Without custom headers, the default format's headers are rebuilt
    // from the delivery id and the signed time: the same as sent.
    let plain = engine
        .webhook(&key, &receiver.url, json!({"events": ["doc.*"]}))
        .await;
    let doc = engine.trigger(&key, "doc.signed", json!({"doc": 1})).await;
    let sent = receiver.wait_for(3, WAIT).await;
    let d = engine
        .wait_delivery(
            &key,
            plain["id"].as_str().unwrap(),
            doc["delivery_ids"][0].as_str().unwrap(),
            WAIT,
            |d| d["status"] == "succeeded",
        )
        .await;
    let req = &d["attempt_log"][0]["request"];
    for name in [
        "webhook-id",
        "webhook-timestamp",
        "content-type",
        "user-agent",
    ] {
        assert_eq!(req["headers"][name], sent[2].header(name), "{name}: {req}");
    }
    assert_eq!(req["headers"]["webhook-signature"], "[redacted]");
    assert_eq!(req["body"], sent[2].text());

    // A plugin's body is kept up to log_request_body_bytes.
    engine
        .install_plugin(&key, "fmt", wasmhook_tests::plugins::GESTIQCLOUD)
        .await;
    let plugged = engine
        .webhook(
            &key,
            &receiver.url,
            json!({"plugin": "fmt", "events": ["order.*"]}),
        )
        .await;
    let order = engine
        .trigger(&key, "order.created", json!({"id": "o-1"}))
        .await;
    let got = receiver.wait_for(4, WAIT).await;
    let id = order["delivery_ids"][0].as_str().unwrap();
    let d = engine
        .wait_delivery(&key, plugged["id"].as_str().unwrap(), id, WAIT, |d| {
            d["status"] == "succeeded"
        })
        .await;
    let req = &d["attempt_log"][0]["request"];
    assert_eq!(req["body"], &got[3].text()[..10], "{req}");
    assert_eq!(req["body_bytes"], got[3].body.len());
    assert_eq!(req["body_truncated"], true);
}

/// Seed 002's views: a webhook's failed events, and a retry by event id.
async fn failed_events_are_listed_and_retried_by_event_id(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[500]);
    let key = engine.tenant("seed002").await;
    let once = json!({"strategy": "fixed", "retries": 0, "delay_ms": 0});
    let hook = engine
        .webhook(&key, &receiver.url, json!({"retry_policy": once}))
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let failed = engine
        .trigger(&key, "low-stock-alert", json!({"sku": "A-1"}))
        .await;
    receiver.wait_for(1, WAIT).await;
    let ok = engine
        .trigger(&key, "low-stock-alert", json!({"sku": "B-2"}))
        .await;
    receiver.wait_for(2, WAIT).await;
    let failed_id = failed["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let list = loop {
        let (status, list) = engine
            .get(
                &format!("/api/webhooks/{hook_id}/events?status=failed"),
                &key,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        if !list["data"].as_array().unwrap().is_empty() {
            break list;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let events = list["data"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{list}");
    assert_eq!(events[0]["id"], failed_id);
    assert_eq!(events[0]["type"], "low-stock-alert");
    assert_eq!(events[0]["data"], json!({"sku": "A-1"}));
    assert_eq!(events[0]["delivery"]["status"], "failed");
    let (_, all) = engine
        .get(&format!("/api/webhooks/{hook_id}/events"), &key)
        .await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2, "{all}");

    let (status, retried) = engine
        .post(
            &format!("/api/webhooks/{hook_id}/events/{failed_id}/retry"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
    let got = receiver.wait_for(3, WAIT).await;
    assert_eq!(got[2].json()["data"], json!({"sku": "A-1"}));
    let (status, body) = engine
        .post(
            &format!(
                "/api/webhooks/{hook_id}/events/{}/retry",
                ok["id"].as_str().unwrap()
            ),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = engine
        .post(
            &format!("/api/webhooks/{hook_id}/events/evt_nope/retry"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

on_both_backends!(
    the_attempt_log_holds_the_request_as_sent_and_the_answer,
    failed_events_are_listed_and_retried_by_event_id,
    failing_receiver_is_retried_with_backoff_until_it_lands,
    exhausted_delivery_fails_and_can_be_retried_by_hand,
    retry_after_is_honoured,
    gone_disables_the_webhook,
);
