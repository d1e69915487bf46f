//! Plugins uploaded over the API shape deliveries; the standard-webhooks
//! plugin is byte-for-byte the native default; bad uploads are refused.

use crate::harness::{Backend, TestEngine, TestReceiver, on_both_backends, verify_standard};
use axum::http::StatusCode;
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use wasmhook::delivery::{shape, sign};
use wasmhook::ids::{EventId, TenantId};
use wasmhook::metrics::PluginMetrics;
use wasmhook::model::{Event, PluginVersion, Secret, Webhook};
use wasmhook::plugin::request::{AttemptContext, Shaped};
use wasmhook::plugin::{LoadedPlugin, PluginConfig, PluginRuntime};
use wasmhook_tests::plugins::STANDARD_WEBHOOKS;

async fn uploaded_plugin_shapes_the_delivery(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("plugged").await;
    let bytes = std::fs::read(STANDARD_WEBHOOKS).unwrap();
    let (status, body) = engine
        .upload(&key, "standard-webhooks", bytes.clone(), "application/wasm")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 1);
    let (status, body) = engine
        .upload(&key, "standard-webhooks", bytes, "application/wasm")
        .await;
    assert_eq!(
        (status, body["version"].as_u64()),
        (StatusCode::CREATED, Some(2))
    );
    let (_, list) = engine.get("/api/plugins", &key).await;
    assert_eq!(list["data"][0]["name"], "standard-webhooks");

    let hook = engine
        .webhook(
            &key,
            &receiver.url,
            json!({"plugin": "standard-webhooks", "plugin_config": {"x": 1}}),
        )
        .await;
    engine
        .trigger(&key, "document.signed", json!({"signedBy": "u1"}))
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(60)).await;
    verify_standard(hook["secret"].as_str().unwrap(), &got[0]);
    assert_eq!(got[0].json()["data"]["signedBy"], "u1");
    let d = engine
        .wait_delivery(
            &key,
            hook["id"].as_str().unwrap(),
            got[0].header("webhook-id"),
            Duration::from_secs(60),
            |d| d["status"] == "succeeded",
        )
        .await;
    assert_eq!(d["attempt_log"][0]["plugin"], "standard-webhooks@2");
}

async fn bad_uploads_are_refused_with_the_reason(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let key = engine.tenant("bad-plugins").await;
    let (status, body) = engine
        .upload(&key, "junk", b"not wasm".to_vec(), "application/wasm")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "invalid_plugin");
    // A core module is not a component of the world.
    let core = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    let (status, body) = engine.upload(&key, "core", core, "application/wasm").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // A component that imports something the engine does not grant is
    // refused, naming the import.
    let wants_http = wat::parse_str(
        r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func)))))"#,
    )
    .unwrap();
    let (status, body) = engine
        .upload(&key, "greedy", wants_http, "application/wasm")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("imports the engine does not grant")
            && message.contains("wasi:http/outgoing-handler"),
        "{message}"
    );
    // A component without the `shape` export, and one whose `handle` has
    // another type than the world's, are refused at upload, saying so.
    for (name, wat_text, needle) in [
        ("empty", "(component)", "wasmhook:plugin/shape"),
        (
            "mistyped",
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (instance $shape (export "handle" (func $f)))
                (export "wasmhook:plugin/shape@0.1.0" (instance $shape)))"#,
            "handle",
        ),
    ] {
        let bytes = wat::parse_str(wat_text).unwrap();
        let (status, body) = engine.upload(&key, name, bytes, "application/wasm").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("does not implement the wasmhook:plugin world")
                && message.contains(needle),
            "{name}: {message}"
        );
    }
    let (status, _) = engine
        .upload(&key, "x", b"abc".to_vec(), "text/plain")
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, body) = engine
        .upload(&key, "Bad Name", b"abc".to_vec(), "application/wasm")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, list) = engine.get("/api/plugins", &key).await;
    assert!(list["data"].as_array().unwrap().is_empty());
    // A webhook cannot name a plugin that was never uploaded.
    let (status, body) = engine
        .post(
            "/api/webhooks",
            &key,
            json!({"url": "http://127.0.0.1:1/x", "events": ["*"], "plugin": "nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["message"].as_str().unwrap().contains("nope"));
}

/// A runtime (CPU deadline `timeout`) with the component at `path` compiled
/// and installed as tenant `t`'s plugin `name`, version 1.
fn installed(
    path: &str,
    name: &str,
    timeout: Duration,
) -> (PluginRuntime, Arc<LoadedPlugin>, TenantId) {
    installed_with(path, name, timeout, PluginMetrics::default())
}

/// [`installed`], counting into `metrics`.
fn installed_with(
    path: &str,
    name: &str,
    timeout: Duration,
    metrics: PluginMetrics,
) -> (PluginRuntime, Arc<LoadedPlugin>, TenantId) {
    let config = PluginConfig {
        timeout,
        ..PluginConfig::default()
    };
    let runtime = PluginRuntime::new(config, metrics).unwrap();
    let pre = runtime.compile(&std::fs::read(path).unwrap()).unwrap();
    let tenant = TenantId::from_trusted("t");
    let meta = PluginVersion::unstored(name, 1, "test");
    let plugin = runtime.install(&tenant, &meta, pre);
    (runtime, plugin, tenant)
}

/// An `a.b` event of `tenant` with empty data.
fn empty_event(tenant: &TenantId) -> Event {
    Event {
        id: EventId::from_trusted("evt_1"),
        tenant: tenant.clone(),
        event_type: "a.b".into(),
        data: RawValue::from_string("{}".into()).unwrap(),
        occurred_at_ms: 0,
    }
}

#[test]
fn standard_webhooks_plugin_matches_the_native_default_byte_for_byte() {
    let (runtime, plugin, tenant) = installed(
        STANDARD_WEBHOOKS,
        "standard-webhooks",
        Duration::from_millis(500),
    );
    let webhook = Webhook {
        plugin: Some("standard-webhooks".into()),
        secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        ..Webhook::new(tenant.clone(), "http://127.0.0.1/x", vec!["*".into()], 0)
    };
    let datas = [
        r#"{}"#,
        r#"{"b":1,"a":[1.50,-0,1e400],"s":"\u00e9\"\\ \ud83d\ude00 ☕"}"#,
        r#"{ "spaced" : true , "n": 123456789012345678901234567890 }"#,
    ];
    for (i, data) in datas.iter().enumerate() {
        let event = Event {
            id: EventId::from_trusted("evt_1"),
            tenant: tenant.clone(),
            event_type: format!("type.\"{i}\"é"),
            data: RawValue::from_string(data.to_string()).unwrap(),
            occurred_at_ms: 1_700_000_000_000 + i as u64,
        };
        let ctx = AttemptContext::new("dlv_1", 2, 1_700_000_123_456);
        let Shaped::Deliver(from_plugin) = runtime.call(&plugin, &event, &webhook, &ctx).unwrap()
        else {
            panic!("plugin skipped")
        };
        let native = shape::standard_webhooks(&event, &ctx);
        assert_eq!(from_plugin, native, "data {data}");
        let secrets = webhook.live_secrets(0);
        let spec = native.signature.as_ref().unwrap();
        assert_eq!(
            sign::signature_value(
                from_plugin.signature.as_ref().unwrap(),
                &secrets,
                &from_plugin.body,
                "dlv_1",
                ctx.timestamp
            ),
            sign::signature_value(spec, &secrets, &native.body, "dlv_1", ctx.timestamp),
        );
    }
}

#[test]
fn idle_instances_and_loaded_versions_are_bounded() {
    let metrics = PluginMetrics::default();
    let config = PluginConfig {
        timeout: Duration::from_millis(500),
        idle_instances: 1,
        max_loaded: 1,
        unload_after: Duration::from_secs(60),
        ..PluginConfig::default()
    };
    let runtime = PluginRuntime::new(config, metrics.clone()).unwrap();
    let pre = runtime
        .compile(&std::fs::read(STANDARD_WEBHOOKS).unwrap())
        .unwrap();
    let meta = PluginVersion::unstored("fmt", 1, "test");
    let (ta, tb) = (TenantId::from_trusted("a"), TenantId::from_trusted("b"));
    let a = runtime.install(&ta, &meta, pre.clone());
    // Least recently used goes first: make a strictly older than b.
    std::thread::sleep(Duration::from_millis(5));
    let b = runtime.install(&tb, &meta, pre);
    // At most one version stays loaded: installing b unloaded a.
    assert_eq!(metrics.loaded.get(), 1);
    let call = |plugin: &wasmhook::plugin::LoadedPlugin, tenant: &TenantId| {
        let event = empty_event(tenant);
        let webhook = Webhook::new(tenant.clone(), "http://127.0.0.1/x", vec!["*".into()], 0);
        let ctx = AttemptContext::new("dlv_1", 1, 0);
        runtime.call(plugin, &event, &webhook, &ctx).unwrap();
    };
    // One idle instance across all plugins: b's goes when a's holds the slot.
    call(&a, &ta);
    call(&b, &tb);
    assert_eq!(metrics.idle_instances.get(), 1);
    drop(a);
    assert_eq!(metrics.idle_instances.get(), 0, "a's instance went with it");
    call(&b, &tb);
    assert_eq!(metrics.idle_instances.get(), 1);
    drop(b);
    // Unused for longer than unload_after: unloaded, with its instances.
    assert_eq!(runtime.unload_idle(wasmhook::clock::now_ms() + 61_000), 1);
    assert_eq!(metrics.loaded.get(), 0);
    assert_eq!(metrics.idle_instances.get(), 0);
}

#[test]
fn only_versions_that_proved_quick_run_inline() {
    let (runtime, plugin, tenant) = installed(
        wasmhook_tests::plugins::CHAOS,
        "chaos",
        Duration::from_millis(200),
    );
    let event = empty_event(&tenant);
    let ctx = AttemptContext::new("dlv_1", 1, 0);
    let mut webhook = Webhook::new(tenant.clone(), "http://127.0.0.1/x", vec!["*".into()], 0);
    assert!(
        !plugin.runs_inline(),
        "unknown versions run on blocking threads"
    );
    for _ in 0..16 {
        runtime.call(&plugin, &event, &webhook, &ctx).unwrap();
    }
    assert!(plugin.runs_inline(), "quick calls earn inline runs");
    // A slow call sends the version back to blocking threads until it has
    // made 16 quick calls in a row again.
    let slow = |webhook: &mut Webhook| {
        webhook.plugin_config = json!({"mode": "loop"});
        let err = runtime.call(&plugin, &event, webhook, &ctx).unwrap_err();
        assert!(err.to_string().contains("time limit"), "{err}");
        webhook.plugin_config = json!({"mode": "ok"});
    };
    for strike in 1..=2 {
        slow(&mut webhook);
        assert!(
            !plugin.runs_inline(),
            "a slow call (strike {strike}) ends inline runs"
        );
        for _ in 0..15 {
            runtime.call(&plugin, &event, &webhook, &ctx).unwrap();
        }
        assert!(!plugin.runs_inline(), "15 quick calls are not enough");
        runtime.call(&plugin, &event, &webhook, &ctx).unwrap();
        assert!(
            plugin.runs_inline(),
            "after strike {strike} and 16 quick calls"
        );
    }
    // Calls at the time limit run up a stall debt: past three of them (the
    // burst; 20 s of debt each at 200 ms) quick calls do not bring it back
    // until the debt is paid down. The debt counts the calls' CPU time, which
    // on a busy machine (tests run in parallel) may be well under the wall
    // clock's time limit: eight such calls leave it past the burst even at
    // half a core each.
    for _ in 0..8 {
        slow(&mut webhook);
    }
    for _ in 0..32 {
        runtime.call(&plugin, &event, &webhook, &ctx).unwrap();
    }
    assert!(
        !plugin.runs_inline(),
        "ten calls at the time limit, eight in a row, stay off the workers"
    );
}

/// A trigger's deliveries to several webhooks that use the same plugin are
/// shaped by one plugin call (`handle-many`); each request is still its own:
/// its delivery id, its webhook's secret and headers, and the same bytes as
/// the native format (which the `standard-webhooks` plugin copies).
async fn a_fan_out_to_one_plugin_is_shaped_in_one_call(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("fanned").await;
    engine.install_plugin(&key, "fmt", STANDARD_WEBHOOKS).await;
    let mut hooks = Vec::new();
    for name in ["a", "b", "c"] {
        let spec = json!({"plugin": "fmt", "headers": {"x-hook": name}});
        hooks.push((name, engine.webhook(&key, &receiver.url, spec).await));
    }
    let spec = json!({"headers": {"x-hook": "native"}});
    hooks.push(("native", engine.webhook(&key, &receiver.url, spec).await));

    let answer = engine
        .trigger(&key, "invoice.paid", json!({"invoice_id": "inv_1", "n": 1}))
        .await;
    let got = receiver.wait_for(4, Duration::from_secs(60)).await;
    let by_hook = |name: &str| got.iter().find(|r| r.header("x-hook") == name).unwrap();
    for (name, hook) in &hooks {
        verify_standard(hook["secret"].as_str().unwrap(), by_hook(name));
        assert_eq!(by_hook(name).body, by_hook("native").body, "{name}");
    }
    let mut ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    let mut expected: Vec<&str> = answer["delivery_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);

    engine
        .assert_metrics(&[
            "wasmhook_plugin_calls_total{outcome=\"deliver\"} 3",
            "wasmhook_plugin_shared_calls_total 1",
        ])
        .await;
    let (_, plugin) = engine.get("/api/plugins/fmt", &key).await;
    assert_eq!(plugin["versions"][0]["calls"], 3, "{plugin}");
}

/// A component that implements the `plugin` world alone (no `handle-many`:
/// built without the SDK, or before it had it) still shapes a fan-out, with
/// one call per webhook.
async fn a_component_without_handle_many_is_called_once_per_webhook(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("plain").await;
    engine
        .install_plugin(&key, "plain", wasmhook_tests::plugins::HANDLE_ONLY)
        .await;
    let mut hooks = Vec::new();
    for _ in 0..3 {
        let hook = engine
            .webhook(&key, &receiver.url, json!({"plugin": "plain"}))
            .await;
        hooks.push(hook["id"].as_str().unwrap().to_owned());
    }
    let answer = engine.trigger(&key, "invoice.paid", json!({"n": 1})).await;
    let got = receiver.wait_for(3, Duration::from_secs(60)).await;
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let body = r.json();
            assert_eq!(body["event"], answer["id"], "{body}");
            let field = |k: &str| body[k].as_str().unwrap().to_owned();
            (field("webhook"), field("delivery"))
        })
        .collect();
    seen.sort();
    let mut webhooks: Vec<&String> = seen.iter().map(|(w, _)| w).collect();
    webhooks.dedup();
    assert_eq!(webhooks.len(), 3, "{seen:?}");
    assert!(hooks.iter().all(|h| webhooks.contains(&h)), "{seen:?}");
    for (_, delivery) in &seen {
        assert!(
            answer["delivery_ids"]
                .to_string()
                .contains(delivery.as_str())
        );
    }
    engine
        .assert_metrics(&[
            "wasmhook_plugin_calls_total{outcome=\"deliver\"} 3",
            "wasmhook_plugin_shared_calls_total 0",
        ])
        .await;
}

/// A plugin too slow to shape several attempts within one call's time limit
/// shares half as many after each shared call that ran out of time, down to
/// a call each; every attempt still gets its own outcome.
#[test]
fn shared_calls_shrink_when_they_run_out_of_time() {
    let metrics = PluginMetrics::default();
    let (runtime, plugin, tenant) = installed_with(
        wasmhook_tests::plugins::CHAOS,
        "chaos",
        Duration::from_millis(100),
        metrics.clone(),
    );
    let event = empty_event(&tenant);
    let hook = |mode: &str| Webhook {
        plugin_config: json!({"mode": mode}),
        ..Webhook::new(tenant.clone(), "http://127.0.0.1/x", vec!["*".into()], 0)
    };
    let (ok, slow) = (hook("ok"), hook("loop"));
    let ctx = AttemptContext::new("dlv_1", 1, 0);
    assert_eq!(plugin.shares_up_to(), 16);

    let results = runtime.call_many(&plugin, &event, &[(&ok, &ctx), (&slow, &ctx), (&ok, &ctx)]);
    assert!(matches!(results[0], Ok(Shaped::Deliver(_))), "{results:?}");
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("time limit")
    );
    assert!(matches!(results[2], Ok(Shaped::Deliver(_))), "{results:?}");
    assert_eq!(plugin.shares_up_to(), 8, "one shared call ran out of time");
    for expected in [4, 2, 1, 1] {
        runtime.call_many(&plugin, &event, &[(&slow, &ctx), (&ok, &ctx)]);
        assert_eq!(plugin.shares_up_to(), expected);
    }
    // Down to a call each: quick attempts are no longer shared.
    let shared_before = metrics.shared_calls.get();
    let results = runtime.call_many(&plugin, &event, &[(&ok, &ctx), (&ok, &ctx)]);
    assert!(results.iter().all(|r| matches!(r, Ok(Shaped::Deliver(_)))));
    assert_eq!(metrics.shared_calls.get(), shared_before);
}

on_both_backends!(
    uploaded_plugin_shapes_the_delivery,
    bad_uploads_are_refused_with_the_reason,
    a_fan_out_to_one_plugin_is_shaped_in_one_call,
    a_component_without_handle_many_is_called_once_per_webhook,
);
