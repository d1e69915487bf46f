//! The plugin sandbox: plugins that loop, hog memory, trap, return errors or
//! forbidden headers fail only their own attempt, with the reason recorded
//! and counted per version, while another tenant's deliveries go on; a fixed
//! version uploaded meanwhile is used by the retry; clocks are frozen;
//! instances are reused between calls.

use crate::harness::{Backend, TestEngine, TestReceiver, on_both_backends, verify_standard};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use wasmhook_tests::plugins::{CHAOS, STANDARD_WEBHOOKS};

const WAIT: Duration = Duration::from_secs(90);

/// The delivery `trigger` created for its only webhook.
fn only_delivery(answer: &Value) -> String {
    answer["delivery_ids"][0].as_str().unwrap().to_owned()
}

async fn misbehaving_plugins_fail_only_their_own_attempts(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let bad = engine.tenant("chaotic").await;
    let good = engine.tenant("wellbehaved").await;
    engine.install_plugin(&bad, "chaos", CHAOS).await;
    engine.install_plugin(&good, "fmt", STANDARD_WEBHOOKS).await;
    let good_hook = engine
        .webhook(&good, &receiver.url, json!({"plugin": "fmt"}))
        .await;

    // mode → what the recorded error must say.
    let cases = [
        ("loop", "time limit"),
        ("hog", "trapped"),
        ("trap", "trapped"),
        ("error", "chaos: error on purpose"),
        ("host-header", "set by the engine"),
        ("crlf-header", "invalid value"),
        ("signature-header", "signature header"),
        ("sleep", "may not wait"),
    ];
    let mut pending = Vec::new();
    for (mode, expected) in cases {
        let hook = engine
            .webhook(
                &bad,
                &receiver.url,
                json!({
                    "events": [format!("chaos.{mode}")],
                    "plugin": "chaos",
                    "plugin_config": {"mode": mode},
                    "retry_policy": {"strategy": "fixed", "retries": 3, "delay_ms": 60_000, "jitter": false}
                }),
            )
            .await;
        let answer = engine
            .trigger(&bad, &format!("chaos.{mode}"), json!({"n": 1}))
            .await;
        pending.push((
            hook["id"].as_str().unwrap().to_owned(),
            only_delivery(&answer),
            mode,
            expected,
        ));
    }
    // The other tenant's deliveries go on meanwhile.
    for i in 0..20 {
        engine
            .trigger(&good, "order.created", json!({"i": i}))
            .await;
    }

    for (hook, delivery, mode, expected) in &pending {
        let d = engine
            .wait_delivery(&bad, hook, delivery, WAIT, |d| d["attempts"] == 1)
            .await;
        let attempt = &d["attempt_log"][0];
        assert_eq!(attempt["outcome"], "plugin_error", "{mode}: {d}");
        assert_eq!(attempt["plugin"], "chaos@1", "{mode}: {d}");
        let error = attempt["error"].as_str().unwrap();
        assert!(error.contains(expected), "{mode}: {error}");
        // Retried on the webhook's schedule like any failure.
        assert_eq!(d["status"], "pending", "{mode}: {d}");
        assert!(d["next_attempt_at"].is_string(), "{mode}: {d}");
    }
    let got = receiver.wait_for(20, WAIT).await;
    for r in &got {
        verify_standard(good_hook["secret"].as_str().unwrap(), r);
    }
    assert_eq!(got.len(), 20, "no chaos request may reach the receiver");

    // Failures are counted per version.
    let (status, plugin) = engine.get("/api/plugins/chaos", &bad).await;
    assert_eq!(status, StatusCode::OK, "{plugin}");
    let v1 = &plugin["versions"][0];
    assert_eq!(
        (v1["version"].as_u64(), v1["current"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(v1["failures"], 8, "{plugin}");
    assert_eq!(v1["calls"], 8, "{plugin}");
    engine
        .assert_metrics(&[
            "wasmhook_plugin_calls_total{outcome=\"timeout\"} 1",
            "wasmhook_plugin_calls_total{outcome=\"invalid\"} 3",
        ])
        .await;
}

async fn a_fixed_version_uploaded_meanwhile_serves_the_retry(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("fixer").await;
    engine.install_plugin(&key, "fmt", CHAOS).await;
    let hook = engine
        .webhook(
            &key,
            &receiver.url,
            json!({
                "plugin": "fmt",
                "plugin_config": {"mode": "trap"},
                "retry_policy": {"strategy": "fixed", "retries": 3, "delay_ms": 2000, "jitter": false}
            }),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let delivery = only_delivery(&engine.trigger(&key, "doc.signed", json!({"x": 1})).await);
    engine
        .wait_delivery(&key, hook_id, &delivery, WAIT, |d| d["attempts"] == 1)
        .await;
    // The fix: a version that ignores the mode.
    engine.install_plugin(&key, "fmt", STANDARD_WEBHOOKS).await;
    let d = engine
        .wait_delivery(&key, hook_id, &delivery, WAIT, |d| {
            d["status"] == "succeeded"
        })
        .await;
    assert_eq!(d["attempt_log"][0]["plugin"], "fmt@1");
    assert_eq!(d["attempt_log"][1]["plugin"], "fmt@2");
    verify_standard(hook["secret"].as_str().unwrap(), &receiver.received()[0]);
}

async fn clocks_are_frozen_output_is_captured_and_instances_are_reused(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("observer").await;
    engine.install_plugin(&key, "chaos", CHAOS).await;
    for mode in ["clock", "print", "count"] {
        engine
            .webhook(
                &key,
                &receiver.url,
                json!({"events": [format!("m.{mode}")], "plugin": "chaos", "plugin_config": {"mode": mode}}),
            )
            .await;
    }
    engine.trigger(&key, "m.clock", json!({})).await;
    engine.trigger(&key, "m.print", json!({})).await;
    let got = receiver.wait_for(2, WAIT).await;
    let clock = got
        .iter()
        .map(|r| r.json())
        .find(|b| b.get("wall_clock").is_some())
        .unwrap();
    // The guest's wall clock reads the delivery's timestamp, nothing finer.
    assert_eq!(clock["wall_clock"], clock["timestamp"], "{clock}");
    // Printing does not break the call (the output goes to the engine's log).
    assert!(got.iter().any(|r| r.json()["mode"] == "ok"));

    // One after another, calls land on a warm instance.
    for i in 0..5 {
        engine.trigger(&key, "m.count", json!({"i": i})).await;
        receiver.wait_for(3 + i, WAIT).await;
    }
    let counts: Vec<u64> = receiver
        .received()
        .iter()
        .filter_map(|r| r.json()["calls"].as_u64())
        .collect();
    assert_eq!(counts.len(), 5);
    assert!(
        counts.iter().any(|c| *c >= 2),
        "no instance was reused: {counts:?}"
    );
}

/// A shared call (one plugin call for a fan-out) that traps fails no
/// attempt by itself: each attempt is shaped again on its own, so only the
/// webhook whose config makes the plugin trap fails, with the trap recorded.
async fn a_trap_in_a_shared_call_fails_only_its_own_webhook(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("sharing").await;
    engine.install_plugin(&key, "chaos", CHAOS).await;
    let mut hooks = Vec::new();
    for mode in ["ok", "trap", "ok"] {
        let spec = json!({
            "plugin": "chaos",
            "plugin_config": {"mode": mode},
            "retry_policy": {"strategy": "fixed", "retries": 3, "delay_ms": 60_000, "jitter": false}
        });
        hooks.push((mode, engine.webhook(&key, &receiver.url, spec).await));
    }
    let answer = engine.trigger(&key, "doc.signed", json!({"n": 1})).await;
    let got = receiver.wait_for(2, WAIT).await;
    assert!(got.iter().all(|r| r.json()["mode"] == "ok"));
    for (mode, hook) in &hooks {
        let hook_id = hook["id"].as_str().unwrap();
        let (_, list) = engine
            .get(&format!("/api/webhooks/{hook_id}/deliveries"), &key)
            .await;
        let delivery = list["data"][0]["id"].as_str().unwrap().to_owned();
        assert!(answer["delivery_ids"].to_string().contains(&delivery));
        let d = engine
            .wait_delivery(&key, hook_id, &delivery, WAIT, |d| d["attempts"] == 1)
            .await;
        let attempt = &d["attempt_log"][0];
        assert_eq!(attempt["plugin"], "chaos@1", "{mode}: {d}");
        match *mode {
            "trap" => {
                assert_eq!(attempt["outcome"], "plugin_error", "{d}");
                assert!(
                    attempt["error"].as_str().unwrap().contains("trapped"),
                    "{d}"
                );
            }
            _ => assert_eq!(attempt["outcome"], "succeeded", "{mode}: {d}"),
        }
    }
    // The shared call trapped; then one call each: two delivered, one trap.
    engine
        .assert_metrics(&[
            "wasmhook_plugin_calls_total{outcome=\"deliver\"} 2",
            "wasmhook_plugin_calls_total{outcome=\"trap\"} 1",
            "wasmhook_plugin_shared_calls_total 0",
        ])
        .await;
}

/// A version that proved quick runs on the async workers; a guest that then
/// prints (or traps, which prints its panic) must still end its attempt as
/// recorded, never as a panicked task that leaves the delivery pending with
/// no attempt and the in-flight gauge one higher.
async fn printing_or_trapping_on_the_async_workers_ends_as_a_recorded_attempt(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("inline").await;
    engine.install_plugin(&key, "chaos", CHAOS).await;
    let hook = engine
        .webhook(
            &key,
            &receiver.url,
            json!({
                "plugin": "chaos",
                "plugin_config": {"mode": "ok"},
                "retry_policy": {"strategy": "fixed", "retries": 3, "delay_ms": 60_000, "jitter": false}
            }),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    // Enough quick calls for the version to run inline.
    for i in 0..20 {
        engine.trigger(&key, "doc.signed", json!({"i": i})).await;
    }
    receiver.wait_for(20, WAIT).await;
    for (n, mode) in ["print", "trap", "sleep"].into_iter().enumerate() {
        let (status, _) = engine
            .call(
                axum::http::Method::PATCH,
                &format!("/api/webhooks/{hook_id}"),
                &key,
                Some(json!({"plugin_config": {"mode": mode}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let delivery = only_delivery(&engine.trigger(&key, "doc.signed", json!({"m": mode})).await);
        let d = engine
            .wait_delivery(&key, hook_id, &delivery, Duration::from_secs(20), |d| {
                d["attempts"] == 1
            })
            .await;
        let attempt = &d["attempt_log"][0];
        match mode {
            "print" => {
                assert_eq!(d["status"], "succeeded", "{d}");
                assert_eq!(receiver.wait_for(21 + n, WAIT).await.len(), 21);
            }
            "trap" => {
                assert_eq!(attempt["outcome"], "plugin_error", "{d}");
                assert!(
                    attempt["error"].as_str().unwrap().contains("trapped"),
                    "{d}"
                );
            }
            _ => assert!(
                attempt["error"].as_str().unwrap().contains("may not wait"),
                "{d}"
            ),
        }
    }
    engine
        .assert_metrics(&["wasmhook_deliveries_in_flight 0"])
        .await;
}

on_both_backends!(
    misbehaving_plugins_fail_only_their_own_attempts,
    a_fixed_version_uploaded_meanwhile_serves_the_retry,
    clocks_are_frozen_output_is_captured_and_instances_are_reused,
    a_trap_in_a_shared_call_fails_only_its_own_webhook,
    printing_or_trapping_on_the_async_workers_ends_as_a_recorded_attempt,
);
