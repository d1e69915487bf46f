//! Tenant isolation and the admin token.

use crate::harness::{ADMIN, Backend, TestEngine, TestReceiver, on_both_backends};
use axum::http::StatusCode;
use serde_json::json;
use std::time::Duration;

async fn tenants_see_only_their_own_data(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let a = engine.tenant("firm-a").await;
    let b = engine.tenant("firm-b").await;
    let hook = engine.webhook(&a, &receiver.url, json!({})).await;
    let hook_id = hook["id"].as_str().unwrap();
    let event = engine
        .trigger(&a, "invoice.paid", json!({"secret-ish": 1}))
        .await;
    let event_id = event["id"].as_str().unwrap();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let delivery = got[0].header("webhook-id");

    for path in [
        format!("/api/webhooks/{hook_id}"),
        format!("/api/webhooks/{hook_id}/secret"),
        format!("/api/webhooks/{hook_id}/deliveries"),
        format!("/api/webhooks/{hook_id}/deliveries/{delivery}"),
        format!("/api/events/{event_id}"),
    ] {
        let (status, body) = engine.get(&path, &b).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(engine.get(&path, &a).await.0, StatusCode::OK, "{path}");
    }
    let (_, list) = engine.get("/api/webhooks", &b).await;
    assert!(list["data"].as_array().unwrap().is_empty());
    // B's events never reach A's webhooks.
    assert_eq!(
        engine.trigger(&b, "invoice.paid", json!({})).await["deliveries"],
        0
    );
    // The same event id in two tenants is two events.
    let body = json!({"type": "t", "data": {}, "id": "shared-id"});
    assert_eq!(
        engine.post("/api/events", &a, body.clone()).await.0,
        StatusCode::ACCEPTED
    );
    let (status, ans) = engine.post("/api/events", &b, body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(ans["deliveries"], 0);
}

async fn admin_token_acts_for_any_tenant_and_keys_are_checked(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let a = engine.tenant("firm-admin").await;
    let (status, hook) = engine
        .post(
            "/api/tenants/firm-admin/webhooks",
            ADMIN,
            json!({"url": receiver.url, "events": ["*"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let (status, list) = engine.get("/api/webhooks", &a).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"][0]["id"], hook["id"]);
    let (status, _) = engine
        .post(
            "/api/tenants/firm-admin/events",
            ADMIN,
            json!({"type": "a", "data": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    receiver.wait_for(1, Duration::from_secs(10)).await;

    // Tenant keys are not admin tokens, and vice versa.
    assert_eq!(
        engine.get("/api/tenants/firm-admin/webhooks", &a).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        engine.get("/api/webhooks", ADMIN).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        engine.get("/api/webhooks", "whk_wrong").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = engine
        .post("/api/tenants", &a, json!({"id": "x", "name": "x"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        engine.get("/api/tenants/nobody/webhooks", ADMIN).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = engine
        .post(
            "/api/tenants",
            ADMIN,
            json!({"id": "firm-admin", "name": "again"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let resp = engine
        .http
        .get(format!("{}/api/webhooks", engine.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

on_both_backends!(
    tenants_see_only_their_own_data,
    admin_token_acts_for_any_tenant_and_keys_are_checked,
);
