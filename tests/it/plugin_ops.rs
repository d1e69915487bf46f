//! Plugin operations: hot reload under load loses nothing, versions and
//! rollback, the watched plugins directory, the on-disk compiled cache (and
//! that uploads can never smuggle a precompiled artifact in), dry runs.

use crate::harness::{ADMIN, Backend, TestEngine, TestReceiver, on_both_backends, verify_standard};
use axum::http::{Method, StatusCode};
use base64::Engine as _;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use wasmhook::config::Settings;
use wasmhook_tests::plugins::{CHAOS, STANDARD_WEBHOOKS};

const WAIT: Duration = Duration::from_secs(90);

/// Polls the tenant's stats until nothing is pending.
async fn settled(engine: &TestEngine, key: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, stats) = engine.get("/api/webhooks/stats", key).await;
        if stats["deliveries"]["pending"] == 0 {
            return stats["deliveries"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn hot_reload_under_load_fails_no_delivery(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("reloader").await;
    engine.install_plugin(&key, "fmt", STANDARD_WEBHOOKS).await;
    engine
        .webhook(
            &key,
            &receiver.url,
            json!({"plugin": "fmt", "retry_policy": {"strategy": "fixed", "retries": 0, "delay_ms": 10}}),
        )
        .await;
    // No retries: any attempt a swap broke would show as a failed delivery.
    // The load runs until every swap is done.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let load = {
        let (url, http, key) = (engine.url.clone(), engine.http.clone(), key.clone());
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !*stopped.borrow_and_update() {
                let i = sent;
                sent += 1;
                let resp = http
                    .post(format!("{url}/api/events"))
                    .bearer_auth(&key)
                    .json(&json!({"type": "order.created", "data": {"i": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 202);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    let swaps = [CHAOS, STANDARD_WEBHOOKS, CHAOS];
    for path in swaps {
        tokio::time::sleep(Duration::from_millis(300)).await;
        engine.install_plugin(&key, "fmt", path).await;
    }
    let (status, rolled) = engine
        .post("/api/plugins/fmt/rollback", &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rolled}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    let n = load.await.unwrap();

    let stats = settled(&engine, &key).await;
    assert_eq!(
        (stats["succeeded"].as_u64(), stats["failed"].as_u64()),
        (Some(n), Some(0)),
        "{stats}"
    );
    let got = receiver.wait_for(n as usize, WAIT).await;
    let (standard, chaos) = got.iter().fold((0, 0), |(s, c), r| {
        if r.json()["mode"] == "ok" {
            (s, c + 1)
        } else {
            (s + 1, c)
        }
    });
    assert!(
        standard > 0 && chaos > 0,
        "both versions served: {standard} / {chaos}"
    );
}

async fn versions_are_listed_and_rollback_brings_one_back(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("roller").await;
    let (status, body) = engine
        .post("/api/plugins/fmt/rollback", &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    engine.install_plugin(&key, "fmt", STANDARD_WEBHOOKS).await;
    let (status, body) = engine
        .post("/api/plugins/fmt/rollback", &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "nothing_to_roll_back_to");
    engine.install_plugin(&key, "fmt", CHAOS).await;

    // Default: back to the newest earlier version with a different component.
    let (status, v3) = engine
        .post("/api/plugins/fmt/rollback", &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v3}");
    assert_eq!(
        (v3["version"].as_u64(), v3["restored_from"].as_u64()),
        (Some(3), Some(1))
    );
    let hook = engine
        .webhook(&key, &receiver.url, json!({"plugin": "fmt"}))
        .await;
    engine.trigger(&key, "a.b", json!({"k": 1})).await;
    let got = receiver.wait_for(1, WAIT).await;
    verify_standard(hook["secret"].as_str().unwrap(), &got[0]);

    // A named version; with the admin token acting for the tenant.
    let (status, v4) = engine
        .post(
            "/api/tenants/roller/plugins/fmt/rollback",
            ADMIN,
            json!({"version": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v4}");
    assert_eq!(
        (v4["restored_from"].as_u64(), v4["uploaded_by"].as_str()),
        (Some(2), Some("admin"))
    );
    let (status, body) = engine
        .post("/api/plugins/fmt/rollback", &key, json!({"version": 42}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = engine
        .post("/api/plugins/fmt/rollback", &key, json!({"version": "two"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, plugin) = engine.get("/api/plugins/fmt", &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(plugin["version"], 4);
    let versions: Vec<(u64, bool)> = plugin["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(versions, [(4, true), (3, false), (2, false), (1, false)]);
    assert_eq!(plugin["versions"][1]["calls"], 1, "{plugin}");
    assert_eq!(
        plugin["versions"][0]["sha256"],
        plugin["versions"][2]["sha256"]
    );
}

fn drop_file(dir: &Path, tenant: &str, name: &str, bytes: &[u8]) {
    let tenant_dir = dir.join(tenant);
    std::fs::create_dir_all(&tenant_dir).unwrap();
    let tmp = tenant_dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, tenant_dir.join(format!("{name}.wasm"))).unwrap();
}

async fn wait_version(engine: &TestEngine, key: &str, name: &str, version: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = engine.get(&format!("/api/plugins/{name}"), key).await;
        if status == StatusCode::OK && body["version"] == version {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "version {version} never came: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn plugins_dropped_in_the_directory_are_picked_up() {
    let data = tempfile::tempdir().unwrap();
    let drops = tempfile::tempdir().unwrap();
    let settings = || {
        let mut s = Settings::for_tests(data.path().to_path_buf(), ADMIN);
        s.plugins_dir = Some(drops.path().to_path_buf());
        s
    };
    let engine = TestEngine::spawn_with(settings()).await;
    let key = engine.tenant("dropper").await;
    drop_file(
        drops.path(),
        "dropper",
        "fmt",
        &std::fs::read(STANDARD_WEBHOOKS).unwrap(),
    );
    let v1 = wait_version(&engine, &key, "fmt", 1).await;
    assert_eq!(v1["uploaded_by"], "plugins_dir");
    // A changed file is a new version; a bad file and an unknown tenant are
    // refused without touching anything.
    drop_file(drops.path(), "dropper", "bad", b"not a component");
    drop_file(
        drops.path(),
        "nobody",
        "fmt",
        &std::fs::read(CHAOS).unwrap(),
    );
    drop_file(
        drops.path(),
        "dropper",
        "fmt",
        &std::fs::read(CHAOS).unwrap(),
    );
    wait_version(&engine, &key, "fmt", 2).await;
    let (status, _) = engine.get("/api/plugins/bad", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A restart finds the directory unchanged: no new version.
    let (_, _) = engine.stop().await;
    let engine = TestEngine::spawn_with(settings()).await;
    tokio::time::sleep(wasmhook::plugin::watch::POLL * 3).await;
    let (_, plugin) = engine.get("/api/plugins/fmt", &key).await;
    assert_eq!(plugin["version"], 2, "{plugin}");
    engine.stop().await;
}

async fn compiled_plugins_are_cached_on_disk_and_never_accepted_as_uploads(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("cached").await;
    engine.install_plugin(&key, "fmt", STANDARD_WEBHOOKS).await;
    engine
        .webhook(&key, &receiver.url, json!({"plugin": "fmt"}))
        .await;
    let data_dir = engine.data_dir().to_path_buf();

    // After a restart the first delivery loads the component from the cache.
    let engine = engine.restart().await;
    engine.trigger(&key, "a.b", json!({})).await;
    receiver.wait_for(1, WAIT).await;
    let text = engine.metrics().await;
    assert!(
        text.contains("wasmhook_plugin_loads_total{source=\"disk\"} 1"),
        "{text}"
    );
    assert!(!text.contains("source=\"compiled\""), "{text}");

    // The cached artifact is native code: uploading it is refused.
    let artifact = std::fs::read_dir(data_dir.join("compiled"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .expect("a cached artifact");
    let (status, body) = engine
        .upload(
            &key,
            "smuggled",
            std::fs::read(artifact.path()).unwrap(),
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_plugin");
    engine.stop().await;
}

async fn dry_run_shows_current_and_candidate_side_by_side(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("dryrunner").await;
    engine.install_plugin(&key, "fmt", STANDARD_WEBHOOKS).await;
    let dry_run = |body: Vec<u8>, content_type: &'static str| {
        let req = engine
            .http
            .post(format!("{}/api/plugins/fmt/dry-run", engine.url))
            .bearer_auth(&key)
            .header("content-type", content_type)
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let chaos = std::fs::read(CHAOS).unwrap();
    let (status, body) = dry_run(chaos.clone(), "application/wasm").await;
    assert_eq!(status, 422, "no webhook uses it yet: {body}");

    let hook = engine
        .webhook(
            &key,
            &receiver.url,
            json!({"plugin": "fmt", "events": ["invoice.*"]}),
        )
        .await;
    for i in 0..3 {
        engine.trigger(&key, "invoice.paid", json!({"i": i})).await;
    }
    receiver.wait_for(3, WAIT).await;

    // Recent events, candidate as the body.
    let (status, body) = dry_run(chaos.clone(), "application/wasm").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["runs"].as_u64(), body["changed"].as_u64()),
        (Some(3), Some(3)),
        "{body}"
    );
    let first = &body["results"][0];
    assert_eq!(first["current"]["version"], 1);
    assert_eq!(first["current"]["outcome"], "deliver");
    assert!(
        first["current"]["request"]["headers"]["webhook-signature"].is_string(),
        "{first}"
    );
    let candidate: Value =
        serde_json::from_str(first["candidate"]["request"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(candidate["mode"], "ok");
    assert_eq!(candidate["event"], first["event_id"]);

    // Given events, candidate in JSON: the same component changes nothing;
    // events the webhook does not subscribe to are not run, nor are those a
    // webhook's payload filter stops (as at fan-out). A disabled webhook
    // still shows what it would get.
    let (status, _) = engine
        .call(
            Method::PATCH,
            &format!("/api/webhooks/{}", hook["id"].as_str().unwrap()),
            &key,
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(status, 200);
    engine
        .webhook(
            &key,
            &receiver.url,
            json!({"plugin": "fmt", "events": ["invoice.*"], "filter": {"n": {"$gte": 2}}}),
        )
        .await;
    let same =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(STANDARD_WEBHOOKS).unwrap());
    let request = json!({"component": same, "events": [
        {"type": "invoice.sent", "data": {"n": 1}},
        {"type": "order.created", "data": {"n": 2}}
    ]});
    let (status, body) = dry_run(request.to_string().into_bytes(), "application/json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["runs"].as_u64(),
            body["changed"].as_u64(),
            body["filtered"].as_u64()
        ),
        (Some(1), Some(0), Some(1)),
        "{body}"
    );

    // A bad query string is a JSON error like everywhere else.
    let resp = engine
        .http
        .post(format!("{}/api/plugins/fmt/dry-run?limit=many", engine.url))
        .bearer_auth(&key)
        .header("content-type", "application/wasm")
        .body(chaos.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_query", "{body}");

    let (status, body) = dry_run(b"junk".to_vec(), "application/wasm").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_plugin");
    let (status, body) = dry_run(b"{\"component\": \"%%%\"}".to_vec(), "application/json").await;
    assert_eq!(status, 422, "{body}");

    // Nothing was delivered or stored by the dry runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 3);
    let (_, plugin) = engine.get("/api/plugins/fmt", &key).await;
    assert_eq!(plugin["version"], 1);
    // Only the three real deliveries count as the live version's calls.
    assert_eq!(plugin["versions"][0]["calls"], 3, "{plugin}");
}

on_both_backends!(
    hot_reload_under_load_fails_no_delivery,
    versions_are_listed_and_rollback_brings_one_back,
    compiled_plugins_are_cached_on_disk_and_never_accepted_as_uploads,
    dry_run_shows_current_and_candidate_side_by_side,
);
