//! Bad input gets a status code and a JSON body saying what is wrong.

use crate::harness::{Backend, TestEngine, on_both_backends};
use axum::http::StatusCode;
use serde_json::{Value, json};

fn message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
}

async fn bad_input_is_answered_clearly(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let key = engine.tenant("errors").await;
    let raw = |path: &str, body: &'static str| {
        engine
            .http
            .post(format!("{}{path}", engine.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let resp = raw("/api/events", "{\"type\": ").await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");

    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "/api/events",
            json!({"type": "a", "data": {}, "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `extra`",
        ),
        (
            "/api/events",
            json!({"type": "a"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing field `data`",
        ),
        (
            "/api/events",
            json!({"type": "a b", "data": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "type",
        ),
        (
            "/api/events",
            json!({"type": "a", "data": [1]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "data: must be a JSON object",
        ),
        (
            "/api/webhooks",
            json!({"url": "ftp://x", "events": ["*"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "http://",
        ),
        (
            "/api/webhooks",
            json!({"url": "not a url", "events": ["*"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "url",
        ),
        (
            "/api/webhooks",
            json!({"url": "http://10.0.0.8/x", "events": ["*"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "private",
        ),
        (
            "/api/webhooks",
            json!({"url": "http://u:p@example.com/x", "events": ["*"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "credentials",
        ),
        (
            "/api/webhooks",
            json!({"events": ["*"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "url: required",
        ),
        (
            "/api/webhooks",
            json!({"url": "https://example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events: required",
        ),
        (
            "/api/webhooks",
            json!({"url": "https://example.com", "events": ["in*voice"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "in*voice",
        ),
        (
            "/api/webhooks",
            json!({"url": "https://example.com", "events": ["*"], "timeout_ms": 10}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "timeout_ms",
        ),
        (
            "/api/webhooks",
            json!({"url": "https://example.com", "events": ["*"], "headers": {"Host": "x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Host",
        ),
        (
            "/api/webhooks",
            json!({"url": "https://example.com", "events": ["*"], "retry_policy": {"strategy": "sometimes"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "sometimes",
        ),
        (
            "/api/webhooks",
            json!({"url": "https://example.com", "events": ["*"], "retry_policy": {"strategy": "fixed", "retries": 999, "delay_ms": 1}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "retries",
        ),
        (
            "/api/webhooks",
            json!({"url": "https://example.com", "events": ["*"], "secret": "short"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "secret",
        ),
    ];
    for (path, body, status, needle) in cases {
        let (got, answer) = engine.post(path, &key, body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(message(&answer).contains(needle), "{body} -> {answer}");
    }

    // Oversized bodies.
    let big = format!(r#"{{"type":"a","data":{{"x":"{}"}}}}"#, "y".repeat(2 << 20));
    let resp = engine
        .http
        .post(format!("{}/api/events", engine.url))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Not JSON at all, unknown routes and methods, unknown ids.
    let resp = engine
        .http
        .post(format!("{}/api/events", engine.url))
        .bearer_auth(&key)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let (status, body) = engine.get("/api/nothing-here", &key).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = engine
        .call(reqwest::Method::DELETE, "/api/events", &key, None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (status, _) = engine.get("/api/webhooks/wh_missing", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = engine
        .get("/api/webhooks/wh_missing/deliveries?status=lost", &key)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

async fn webhook_lifecycle_routes(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let key = engine.tenant("lifecycle").await;
    let hook = engine
        .webhook(
            &key,
            "http://127.0.0.1:9/hook",
            json!({"secret": "my-webhook-secret-12345678", "events": ["invoice.*"]}),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    assert_eq!(hook["secret"], "my-webhook-secret-12345678");
    assert!(
        engine
            .get(&format!("/api/webhooks/{id}"), &key)
            .await
            .1
            .get("secret")
            .is_none()
    );
    let (_, secret) = engine
        .get(&format!("/api/webhooks/{id}/secret"), &key)
        .await;
    assert_eq!(secret["secret"], "my-webhook-secret-12345678");

    let (status, updated) = engine
        .call(
            reqwest::Method::PUT,
            &format!("/api/webhooks/{id}"),
            &key,
            Some(json!({"description": "new", "timeout_ms": 5000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            updated["description"].as_str(),
            updated["timeout_ms"].as_u64()
        ),
        (Some("new"), Some(5000))
    );
    assert_eq!(updated["events"], json!(["invoice.*"]));

    let (_, d) = engine
        .post(&format!("/api/webhooks/{id}/disable"), &key, json!({}))
        .await;
    assert_eq!(d["active"], false);
    let (_, e) = engine
        .post(&format!("/api/webhooks/{id}/enable"), &key, json!({}))
        .await;
    assert_eq!(e["active"], true);

    let (status, regen) = engine
        .post(
            &format!("/api/webhooks/{id}/regenerate-secret"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(regen["secret"].as_str().unwrap().starts_with("whsec_"));
    assert!(regen["previous_secret_valid_until"].is_string());

    let (_, stats) = engine.get("/api/webhooks/stats", &key).await;
    assert_eq!(stats["webhooks"]["total"], 1);

    let (status, _) = engine
        .call(
            reqwest::Method::DELETE,
            &format!("/api/webhooks/{id}"),
            &key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        engine.get(&format!("/api/webhooks/{id}"), &key).await.0,
        StatusCode::NOT_FOUND
    );
}

on_both_backends!(bad_input_is_answered_clearly, webhook_lifecycle_routes,);
