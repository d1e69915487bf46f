//! Tenant-wide lists of events and deliveries, with their filters and
//! cursors, and the same filters on one webhook's list.

use crate::harness::{Backend, TestEngine, TestReceiver, on_both_backends};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn ids(list: &Value, field: &str) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[field].as_str().unwrap().to_owned())
        .collect()
}

async fn events_and_deliveries_are_listed_tenant_wide_with_filters(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let (a, b) = (TestReceiver::spawn().await, TestReceiver::spawn().await);
    a.answer(&[500]);
    let key = engine.tenant("lists").await;
    // A's first delivery fails and waits for a retry far away (pending).
    let later = json!({"strategy": "fixed", "retries": 3, "delay_ms": 600000});
    let hook_a = engine
        .webhook(
            &key,
            &a.url,
            json!({"events": ["invoice.*"], "retry_policy": later}),
        )
        .await;
    engine.webhook(&key, &b.url, json!({})).await;
    let e1 = engine.trigger(&key, "invoice.paid", json!({"n": 1})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after_e1 = wasmhook::clock::rfc3339_ms(wasmhook::clock::now_ms());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e2 = engine.trigger(&key, "stock.low", json!({"n": 2})).await;
    let e3 = engine.trigger(&key, "invoice.sent", json!({"n": 3})).await;
    a.wait_for(2, WAIT).await;
    b.wait_for(3, WAIT).await;
    let id = |e: &Value| e["id"].as_str().unwrap().to_owned();

    let (status, all) = engine.get("/api/events", &key).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(ids(&all, "id"), [id(&e3), id(&e2), id(&e1)], "newest first");
    assert_eq!(all["data"][2]["data"], json!({"n": 1}));
    let (_, paid) = engine.get("/api/events?type=invoice.paid", &key).await;
    assert_eq!(ids(&paid, "id"), [id(&e1)]);
    let (_, first) = engine.get("/api/events?limit=2", &key).await;
    assert_eq!(ids(&first, "id"), [id(&e3), id(&e2)]);
    let cursor = first["next_before"].as_str().unwrap();
    let (_, rest) = engine
        .get(&format!("/api/events?limit=2&before={cursor}"), &key)
        .await;
    assert_eq!(ids(&rest, "id"), [id(&e1)], "{rest}");
    assert_eq!(rest["next_before"], Value::Null);
    let (_, recent) = engine
        .get(&format!("/api/events?since={after_e1}"), &key)
        .await;
    assert_eq!(ids(&recent, "id"), [id(&e3), id(&e2)]);
    let (_, older) = engine
        .get(&format!("/api/events?until={after_e1}"), &key)
        .await;
    assert_eq!(ids(&older, "id"), [id(&e1)]);

    // Deliveries: five in all; A's first one waits for its retry.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, list) = engine.get("/api/deliveries?status=succeeded", &key).await;
        if list["data"].as_array().unwrap().len() == 4 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, all) = engine.get("/api/deliveries", &key).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 5, "{all}");
    let (_, pending) = engine.get("/api/deliveries?status=pending", &key).await;
    assert_eq!(ids(&pending, "event_id"), [id(&e1)], "{pending}");
    let hook_a_id = hook_a["id"].as_str().unwrap();
    let (_, to_a) = engine
        .get(&format!("/api/deliveries?webhook_id={hook_a_id}"), &key)
        .await;
    assert_eq!(ids(&to_a, "event_id"), [id(&e3), id(&e1)]);
    let (_, stock) = engine.get("/api/deliveries?type=stock.low", &key).await;
    assert_eq!(ids(&stock, "event_id"), [id(&e2)]);
    // The per-webhook list takes the same filters.
    let (_, sent) = engine
        .get(
            &format!("/api/webhooks/{hook_a_id}/deliveries?type=invoice.sent"),
            &key,
        )
        .await;
    assert_eq!(ids(&sent, "event_id"), [id(&e3)], "{sent}");
    let (_, since) = engine
        .get(
            &format!("/api/webhooks/{hook_a_id}/deliveries?since={after_e1}"),
            &key,
        )
        .await;
    assert_eq!(ids(&since, "event_id"), [id(&e3)], "{since}");

    for bad in [
        "/api/events?since=yesterday",
        "/api/deliveries?status=lost",
        "/api/events?before=x",
    ] {
        let (status, body) = engine.get(bad, &key).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query");
    }
}

on_both_backends!(events_and_deliveries_are_listed_tenant_wide_with_filters);
