//! The README walkthrough, fan-out, wildcards, idempotent and batch
//! triggers, payload fidelity, the per-origin limit.

use crate::harness::{
    Backend, Received, TestEngine, TestReceiver, on_both_backends, verify_standard,
};
use axum::http::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn readme_walkthrough_delivers_a_signed_event(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("acme-law").await;
    let hook = engine
        .webhook(
            &key,
            &receiver.url,
            json!({"events": ["invoice.paid"], "description": "billing"}),
        )
        .await;
    let secret = hook["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));

    let answer = engine
        .trigger(
            &key,
            "invoice.paid",
            json!({"invoiceNumber": "INV-1", "totalAmount": 1250.5}),
        )
        .await;
    assert_eq!(answer["deliveries"], 1);

    let got = receiver.wait_for(1, WAIT).await;
    let req = &got[0];
    verify_standard(secret, req);
    assert_eq!(req.header("content-type"), "application/json");
    let body = req.json();
    assert_eq!(body["type"], "invoice.paid");
    assert_eq!(body["data"]["invoiceNumber"], "INV-1");
    assert!(req.header("webhook-id").starts_with("dlv_"));

    // The delivery is visible with its attempt.
    let event_id = answer["id"].as_str().unwrap();
    let hook_id = hook["id"].as_str().unwrap();
    let delivery_id = req.header("webhook-id").to_owned();
    let d = engine
        .wait_delivery(&key, hook_id, &delivery_id, WAIT, |d| {
            d["status"] == "succeeded"
        })
        .await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["attempt_log"][0]["status_code"], 200);
    assert_eq!(d["attempt_log"][0]["response_body"], "received");
    let (status, event) = engine.get(&format!("/api/events/{event_id}"), &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["deliveries"][0]["id"], delivery_id.as_str());
    assert_eq!(event["data"]["totalAmount"], 1250.5);
}

/// The default format's body is made once per event and shared by its
/// deliveries; each is still signed with its own webhook's secret, over
/// its own delivery id.
async fn an_events_default_deliveries_share_one_body_each_signed_for_its_webhook(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let key = engine.tenant("erp").await;
    let receivers = [
        TestReceiver::spawn().await,
        TestReceiver::spawn().await,
        TestReceiver::spawn().await,
    ];
    let mut secrets = Vec::new();
    for rx in &receivers {
        let hook = engine
            .webhook(&key, &rx.url, json!({"events": ["invoice.paid"]}))
            .await;
        secrets.push(hook["secret"].as_str().unwrap().to_owned());
    }
    let answer = engine
        .trigger(
            &key,
            "invoice.paid",
            json!({"total": 1250.5, "lines": [1, 2]}),
        )
        .await;
    assert_eq!(answer["deliveries"], 3);
    let mut bodies = Vec::new();
    let mut ids = Vec::new();
    for (rx, secret) in receivers.iter().zip(&secrets) {
        let got = rx.wait_for(1, WAIT).await;
        verify_standard(secret, &got[0]);
        for other in secrets.iter().filter(|s| *s != secret) {
            let with_other = standardwebhooks::Webhook::new(other).unwrap();
            assert!(
                with_other.verify(&got[0].body, &got[0].headers).is_err(),
                "signed with another webhook's secret"
            );
        }
        assert_eq!(got[0].json()["data"]["total"], 1250.5);
        bodies.push(got[0].body.clone());
        ids.push(got[0].header("webhook-id").to_owned());
    }
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "one body for the event"
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each delivery has its own id");
}

async fn fan_out_follows_subscriptions_and_wildcards(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let key = engine.tenant("erp").await;
    let exact = TestReceiver::spawn().await;
    let prefix = TestReceiver::spawn().await;
    let all = TestReceiver::spawn().await;
    let other = TestReceiver::spawn().await;
    let inactive = TestReceiver::spawn().await;
    engine
        .webhook(&key, &exact.url, json!({"events": ["invoice.paid"]}))
        .await;
    engine
        .webhook(&key, &prefix.url, json!({"events": ["invoice.*"]}))
        .await;
    engine
        .webhook(&key, &all.url, json!({"events": ["*"]}))
        .await;
    engine
        .webhook(&key, &other.url, json!({"events": ["low-stock-alert"]}))
        .await;
    engine
        .webhook(
            &key,
            &inactive.url,
            json!({"events": ["*"], "active": false}),
        )
        .await;

    assert_eq!(
        engine.trigger(&key, "invoice.paid", json!({"n": 1})).await["deliveries"],
        3
    );
    assert_eq!(
        engine.trigger(&key, "invoice.sent", json!({"n": 2})).await["deliveries"],
        2
    );
    assert_eq!(
        engine
            .trigger(&key, "low-stock-alert", json!({"n": 3}))
            .await["deliveries"],
        2
    );

    assert_eq!(exact.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(prefix.wait_for(2, WAIT).await.len(), 2);
    assert_eq!(all.wait_for(3, WAIT).await.len(), 3);
    assert_eq!(
        other.wait_for(1, WAIT).await[0].json()["type"],
        "low-stock-alert"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exact.received().len(), 1);
    assert!(inactive.received().is_empty());

    let (_, types) = engine.get("/api/webhooks/events", &key).await;
    let names: Vec<_> = types["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["invoice.paid", "invoice.sent", "low-stock-alert"]);
}

async fn idempotent_triggers_are_no_ops(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("shop").await;
    engine.webhook(&key, &receiver.url, json!({})).await;

    let send = |headers: Vec<(&'static str, &'static str)>, body: serde_json::Value| {
        let mut req = engine
            .http
            .post(format!("{}/api/events", engine.url))
            .bearer_auth(&key)
            .json(&body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let body = json!({"type": "order.created", "data": {"order": 7}});
    let first = send(vec![("Idempotency-Key", "order-7")], body.clone())
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send(vec![("Idempotency-Key", "order-7")], body.clone())
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["deliveries"], 1);

    // Same key, different request: a conflict, not a silent replay.
    let other = send(
        vec![("Idempotency-Key", "order-7")],
        json!({"type": "order.created", "data": {"order": 8}}),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 409);

    // A caller-given event id works the same way.
    let with_id = json!({"type": "order.paid", "data": {"order": 7}, "id": "order-7-paid"});
    let a: serde_json::Value = send(vec![], with_id.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b = send(vec![], with_id).await.unwrap();
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    assert_eq!(a["id"], "order-7-paid");

    receiver.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2, "each event delivered once");
}

async fn batch_triggers_are_checked_whole_and_replayed_per_event(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("bulk").await;
    engine.webhook(&key, &receiver.url, json!({})).await;
    let send = |key_header: Option<&'static str>, body: serde_json::Value| {
        let mut req = engine
            .http
            .post(format!("{}/api/events/batch", engine.url))
            .bearer_auth(&key)
            .json(&body);
        if let Some(k) = key_header {
            req = req.header("Idempotency-Key", k);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let batch = |second_total: u32| {
        json!({"events": [
            {"type": "invoice.paid", "data": {"n": 1}},
            {"type": "invoice.paid", "data": {"n": 2, "total": second_total}},
            {"type": "invoice.void", "data": {"n": 3}, "id": "inv-3-void"},
        ]})
    };

    let (status, first) = send(Some("import-7"), batch(10)).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["accepted"], 3);
    let events = first["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .all(|e| e["status"] == "accepted" && e["deliveries"] == 1)
    );
    assert_eq!(events[2]["id"], "inv-3-void");
    let got = receiver.wait_for(3, WAIT).await;
    let mut ns: Vec<i64> = got
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, [1, 2, 3]);

    // The same batch again: every event replayed, nothing sent twice.
    let (status, again) = send(Some("import-7"), batch(10)).await;
    assert_eq!(status, 202);
    assert_eq!(again["replayed"], 3);
    for i in 0..3 {
        assert_eq!(again["events"][i]["status"], "replayed");
        assert_eq!(again["events"][i]["id"], first["events"][i]["id"]);
    }
    // One event changed under the same key: that one is a conflict.
    let (status, changed) = send(Some("import-7"), batch(11)).await;
    assert_eq!(status, 202);
    assert_eq!(changed["conflicts"], 1);
    assert_eq!(changed["replayed"], 2);
    assert_eq!(changed["events"][1]["status"], "conflict");
    assert_eq!(
        changed["events"][1]["error"]["code"],
        "idempotency_conflict"
    );

    // One bad event: nothing of the batch is written, and the error says which.
    let (status, bad) = send(
        None,
        json!({"events": [
            {"type": "ok.event", "data": {}, "id": "never-stored"},
            {"type": "bad type!", "data": {}},
        ]}),
    )
    .await;
    assert_eq!(status, 422, "{bad}");
    let message = bad["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("events[1].type:"), "{message}");
    let (status, _) = engine.get("/api/events/never-stored", &key).await;
    assert_eq!(status, 404);
    for events in [
        json!([]),
        json!(vec![json!({"type": "x", "data": {}}); 101]),
    ] {
        let (status, body) = send(None, json!({"events": events})).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["code"], "validation_failed");
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 3, "each event delivered once");
}

async fn event_data_arrives_byte_for_byte(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("fidelity").await;
    engine.webhook(&key, &receiver.url, json!({})).await;
    let data = r#"{"zeta":1,"alpha":12345678901234567890123.4500,"tiny":1e-7,"text":"caf\u00e9 ☕ \"q\"","nested":{"b":[1,2.0,null],"a":true}}"#;
    let raw = format!(r#"{{"type":"fidelity.check","data":{data}}}"#);
    let resp = engine
        .http
        .post(format!("{}/api/events", engine.url))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let got = receiver.wait_for(1, WAIT).await;
    let body = got[0].text();
    assert!(body.ends_with(&format!(r#","data":{data}}}"#)), "{body}");
}

async fn payload_filters_decide_before_any_plugin(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("filters").await;
    engine
        .webhook(&key, &receiver.url, json!({
            "events": ["invoice.*"],
            "filter": {"totalAmount": {"$gte": 1000}, "$or": [{"currency": "EUR"}, {"client.vip": true}]}
        }))
        .await;
    let big = engine
        .trigger(
            &key,
            "invoice.paid",
            json!({"totalAmount": 1500.00, "currency": "EUR"}),
        )
        .await;
    assert_eq!(
        (big["deliveries"].as_u64(), big["filtered"].as_u64()),
        (Some(1), Some(0))
    );
    let small = engine
        .trigger(
            &key,
            "invoice.paid",
            json!({"totalAmount": 10, "currency": "EUR"}),
        )
        .await;
    assert_eq!(
        (small["deliveries"].as_u64(), small["filtered"].as_u64()),
        (Some(0), Some(1))
    );
    let vip = engine
        .trigger(
            &key,
            "invoice.sent",
            json!({"totalAmount": 2000, "currency": "USD", "client": {"vip": true}}),
        )
        .await;
    assert_eq!(vip["deliveries"], 1);
    let got = receiver.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 2);
    assert_eq!(got[0].json()["data"]["currency"], "EUR");

    let (status, body) = engine
        .post("/api/webhooks", &key, json!({"url": receiver.url, "events": ["*"], "filter": {"amount": {"$between": [1, 2]}}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$between"),
        "{body}"
    );
}

/// A receiver that takes `delay` to answer and notes the most requests it
/// ever had in flight at once, and how many it answered.
async fn slow_receiver(delay: Duration) -> (String, Arc<(AtomicUsize, AtomicUsize, AtomicUsize)>) {
    failing_then_slow_receiver(0, delay).await
}

/// [`slow_receiver`], but the first `failing` requests are answered `500`
/// at once (and not counted as answered).
async fn failing_then_slow_receiver(
    failing: usize,
    delay: Duration,
) -> (String, Arc<(AtomicUsize, AtomicUsize, AtomicUsize)>) {
    // (in flight now, most in flight at once, answered)
    let counts = Arc::new((
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ));
    let c = counts.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback(move || {
        let (c, seen) = (c.clone(), seen.clone());
        async move {
            if seen.fetch_add(1, Ordering::SeqCst) < failing {
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            let now = c.0.fetch_add(1, Ordering::SeqCst) + 1;
            c.1.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            c.0.fetch_sub(1, Ordering::SeqCst);
            c.2.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, counts)
}

/// One `order.created` webhook per path under `base` (one origin).
async fn hooks_on_one_origin(engine: &TestEngine, key: &str, base: &str, paths: &[&str]) {
    for path in paths {
        engine
            .webhook(
                key,
                &format!("{base}/{path}"),
                json!({"events": ["order.created"]}),
            )
            .await;
    }
}

async fn one_origin_gets_at_most_origin_concurrency_attempts_at_once(backend: Backend) {
    let engine = TestEngine::on(backend, |s| s.origin_concurrency = 2).await;
    let key = engine.tenant("acme").await;
    let (slow, counts) = slow_receiver(Duration::from_millis(300)).await;
    // Three webhooks on one origin (different paths), two events: six deliveries.
    hooks_on_one_origin(&engine, &key, &slow, &["a", "b", "c"]).await;
    let other = TestReceiver::spawn().await;
    engine
        .webhook(&key, &other.url, json!({"events": ["ping"]}))
        .await;
    for i in 0..2 {
        engine.trigger(&key, "order.created", json!({"n": i})).await;
    }
    // Another origin is not held up behind the busy one.
    let sent = tokio::time::Instant::now();
    engine.trigger(&key, "ping", json!({})).await;
    other.wait_for(1, WAIT).await;
    assert!(
        sent.elapsed() < Duration::from_millis(300),
        "the other origin waited {:?}",
        sent.elapsed()
    );

    wait_answered(&counts, 6).await;
    assert_eq!(counts.1.load(Ordering::SeqCst), 2, "most in flight at once");
    let waits = engine
        .metric("wasmhook_origin_waits_total")
        .await
        .expect("origin waits are counted");
    assert!(waits >= 4.0, "{waits} attempts waited");
}

/// Waits until `n` deliveries wait for admission to their origin.
async fn wait_for_admission_queue(engine: &TestEngine, n: f64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let waiting = engine
            .metric("wasmhook_deliveries_waiting_for_origin")
            .await;
        if waiting == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiting for admission: {waiting:?}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a receiver counted `n` requests answered.
async fn wait_answered(counts: &(AtomicUsize, AtomicUsize, AtomicUsize), n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while counts.2.load(Ordering::SeqCst) < n {
        assert!(tokio::time::Instant::now() < deadline, "not all delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every delivery of `event` (a trigger's answer) is `done`;
/// answers them.
async fn wait_event_deliveries(
    engine: &TestEngine,
    key: &str,
    event: &serde_json::Value,
    done: impl Fn(&serde_json::Value) -> bool + Copy,
) -> Vec<serde_json::Value> {
    let (_, listed) = engine
        .get(
            &format!("/api/events/{}", event["id"].as_str().unwrap()),
            key,
        )
        .await;
    let mut out = Vec::new();
    for d in listed["deliveries"].as_array().unwrap() {
        let webhook = d["webhook_id"].as_str().unwrap();
        let id = d["id"].as_str().unwrap();
        out.push(engine.wait_delivery(key, webhook, id, WAIT, done).await);
    }
    out
}

/// A burst to one origin beyond twice `origin_concurrency` waits as queued
/// jobs (counted in `wasmhook_deliveries_waiting_for_origin`), each started
/// as an attempt before it ends: every delivery arrives once, and the
/// origin never has more than its limit in flight.
async fn a_burst_to_one_origin_waits_for_admission_and_all_arrive(backend: Backend) {
    let engine = TestEngine::on(backend, |s| s.origin_concurrency = 1).await;
    let key = engine.tenant("acme").await;
    let (slow, counts) = slow_receiver(Duration::from_millis(500)).await;
    hooks_on_one_origin(&engine, &key, &slow, &["a", "b", "c", "d"]).await;
    let event = engine.trigger(&key, "order.created", json!({})).await;
    assert_eq!(event["deliveries"], 4);
    // Two are admitted (one sending, one waiting for the slot); two wait.
    wait_for_admission_queue(&engine, 2.0, Duration::from_millis(450)).await;
    wait_answered(&counts, 4).await;
    assert_eq!(counts.1.load(Ordering::SeqCst), 1, "most in flight at once");
    wait_for_admission_queue(&engine, 0.0, WAIT).await;
    for d in wait_event_deliveries(&engine, &key, &event, |d| d["status"] == "succeeded").await {
        assert_eq!(d["attempts"], 1, "{d}");
    }
    assert_eq!(counts.2.load(Ordering::SeqCst), 4, "each sent once");
}

/// Retries that come due together are admitted to their origin like fresh
/// deliveries: once read back, those beyond twice `origin_concurrency` wait
/// as queued jobs, each keeping the permit its claim took, so no more are
/// claimed than `delivery_concurrency`; all of them land.
async fn a_burst_of_retries_to_one_origin_waits_for_admission(backend: Backend) {
    let engine = TestEngine::on(backend, |s| {
        s.origin_concurrency = 1;
        s.delivery_concurrency = 4;
    })
    .await;
    let key = engine.tenant("acme").await;
    // The first attempts fail at once; the retries take 300 ms each.
    let (url, counts) = failing_then_slow_receiver(8, Duration::from_millis(300)).await;
    for path in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        engine
            .webhook(
                &key,
                &format!("{url}/{path}"),
                json!({
                    "events": ["order.created"],
                    "retry_policy": {"strategy": "fixed", "retries": 3, "delay_ms": 1000, "jitter": false}
                }),
            )
            .await;
    }
    let event = engine.trigger(&key, "order.created", json!({})).await;
    assert_eq!(event["deliveries"], 8);
    // Every first attempt is recorded (failed, a retry due in a second)
    // before any retry is claimed: whatever waits from now on is a retry.
    wait_event_deliveries(&engine, &key, &event, |d| d["attempts"] == 1).await;
    // Two admitted (one sending, one waiting for the slot), and two more
    // claimed and waiting: four permits.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut most = 0.0_f64;
    while counts.2.load(Ordering::SeqCst) < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all delivered: {} of 8 ({} waiting most)",
            counts.2.load(Ordering::SeqCst),
            most
        );
        let waiting = engine
            .metric("wasmhook_deliveries_waiting_for_origin")
            .await
            .unwrap_or_default();
        most = most.max(waiting);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most, 2.0, "most retries waiting for admission at once");
    assert_eq!(counts.1.load(Ordering::SeqCst), 1, "most in flight at once");
    for d in wait_event_deliveries(&engine, &key, &event, |d| d["status"] == "succeeded").await {
        assert_eq!(d["attempts"], 2, "{d}");
    }
}

/// With no time left in the lease to wait for a slot, the attempt is not
/// sent: it is recorded as a timeout naming the origin (not the path), and
/// the delivery goes out on its retry.
async fn a_delivery_that_gets_no_slot_in_its_lease_is_retried(backend: Backend) {
    // Lease 2 s, webhook timeout 1 s: the attempt may not wait at all.
    let engine = TestEngine::on(backend, |s| {
        s.origin_concurrency = 1;
        s.lease = Duration::from_millis(2_000);
    })
    .await;
    let key = engine.tenant("acme").await;
    let (slow, counts) = slow_receiver(Duration::from_millis(600)).await;
    let spec = json!({
        "timeout_ms": 1000,
        "retry_policy": {"strategy": "fixed", "retries": 3, "delay_ms": 1000, "jitter": false}
    });
    let first = engine
        .webhook(&key, &format!("{slow}/a"), spec.clone())
        .await;
    let second = engine
        .webhook(&key, &format!("{slow}/secret-b"), spec)
        .await;
    let event = engine.trigger(&key, "order.created", json!({})).await;
    assert_eq!(event["deliveries"], 2);

    let mut waited = None;
    for hook in [&first, &second] {
        let hook = hook["id"].as_str().unwrap();
        let (_, list) = engine
            .get(&format!("/api/webhooks/{hook}/deliveries"), &key)
            .await;
        let id = list["data"][0]["id"].as_str().unwrap().to_owned();
        let d = engine
            .wait_delivery(&key, hook, &id, WAIT, |d| d["status"] == "succeeded")
            .await;
        if d["attempts"] == 2 {
            waited = Some(d);
        }
    }
    let d = waited.expect("one of the two found the origin busy");
    let log = &d["attempt_log"];
    assert_eq!(log[0]["outcome"], "timeout", "{d}");
    let error = log[0]["error"].as_str().unwrap();
    assert!(
        error.contains("http://127.0.0.1:") && error.contains("origin_concurrency limit (1)"),
        "{error}"
    );
    assert!(!error.contains("secret-b"), "{error}");
    assert_eq!(log[1]["outcome"], "succeeded", "{d}");
    assert_eq!(counts.2.load(Ordering::SeqCst), 2, "each sent once");
}

/// An engine with one slot per origin, a tenant (its key) with the
/// `standard-webhooks` plugin as `fmt`, and a receiver that holds the first
/// request it gets for 2.5 s.
async fn one_slot_with_fmt(backend: Backend) -> (TestEngine, String, TestReceiver) {
    let engine = TestEngine::on(backend, |s| s.origin_concurrency = 1).await;
    let key = engine.tenant("acme").await;
    let receiver = TestReceiver::spawn().await;
    receiver.hold_next(Duration::from_millis(2_500));
    engine
        .install_plugin(&key, "fmt", wasmhook_tests::plugins::STANDARD_WEBHOOKS)
        .await;
    (engine, key, receiver)
}

/// Request `i` arrived within a second of the timestamp it signs.
fn assert_signed_fresh(i: usize, req: &Received) {
    let arrived = (std::time::SystemTime::now() - req.at.elapsed())
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed: u64 = req
        .header("webhook-timestamp")
        .parse()
        .unwrap_or_else(|_| panic!("request {i} is not Standard Webhooks: {}", req.text()));
    assert!(
        arrived.saturating_sub(signed) <= 1,
        "request {i} arrived at {arrived} signed at {signed}"
    );
}

/// A fan-out's deliveries with one plugin are shaped by one call, made when
/// the first of them needs it. One that then waited for admission to its
/// origin is shaped again before it is sent if that call is over a second
/// old, even when it gets its slot at once.
async fn a_request_shaped_by_its_group_before_admission_is_signed_fresh(backend: Backend) {
    // One slot, so two attempts admitted; the third waits for admission.
    let (engine, key, receiver) = one_slot_with_fmt(backend).await;
    let mut secrets = Vec::new();
    for path in ["a", "b", "c"] {
        let hook = engine
            .webhook(
                &key,
                &format!("{}/{path}", receiver.url),
                json!({"events": ["order.created"], "plugin": "fmt"}),
            )
            .await;
        secrets.push(hook["secret"].as_str().unwrap().to_owned());
    }
    engine.trigger(&key, "order.created", json!({})).await;
    let got = receiver.wait_for(3, WAIT).await;
    for (i, req) in got.iter().enumerate() {
        assert_signed_fresh(i, req);
        // Each verifies with its own webhook's secret.
        assert!(
            secrets.iter().any(|secret| {
                standardwebhooks::Webhook::new(secret)
                    .unwrap()
                    .verify(&req.body, &req.headers)
                    .is_ok()
            }),
            "request {i} does not verify"
        );
    }
}

/// A request shaped before a long wait for its origin's slot would carry an
/// old timestamp; it is shaped again once it has the slot, so what it signs
/// is fresh when it is sent (and still verifies), by the plugin version it
/// started with although a new one was uploaded while it waited.
async fn a_request_that_waited_for_its_slot_is_signed_fresh(backend: Backend) {
    let (engine, key, receiver) = one_slot_with_fmt(backend).await;
    let hook = engine
        .webhook(
            &key,
            &receiver.url,
            json!({"events": ["order.created"], "plugin": "fmt"}),
        )
        .await;
    let secret = hook["secret"].as_str().unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        let answer = engine.trigger(&key, "order.created", json!({"n": i})).await;
        ids.push(answer["delivery_ids"][0].as_str().unwrap().to_owned());
    }
    // While the second waits for the slot, a different format becomes
    // the current version of `fmt`.
    receiver.wait_for(1, WAIT).await;
    engine
        .install_plugin(&key, "fmt", wasmhook_tests::plugins::GESTIQCLOUD)
        .await;
    let got = receiver.wait_for(2, WAIT).await;
    for (i, req) in got.iter().enumerate() {
        assert_signed_fresh(i, req);
        verify_standard(secret, req);
    }
    let metrics = engine.metrics().await;
    assert!(
        metrics.contains("wasmhook_origin_waits_total 1"),
        "the second request waited for the slot"
    );
    let hook = hook["id"].as_str().unwrap();
    for id in &ids {
        let d = engine
            .wait_delivery(&key, hook, id, WAIT, |d| d["status"] == "succeeded")
            .await;
        assert_eq!(d["attempt_log"][0]["plugin"], "fmt@1", "{d}");
    }
}

on_both_backends!(
    readme_walkthrough_delivers_a_signed_event,
    an_events_default_deliveries_share_one_body_each_signed_for_its_webhook,
    fan_out_follows_subscriptions_and_wildcards,
    idempotent_triggers_are_no_ops,
    batch_triggers_are_checked_whole_and_replayed_per_event,
    event_data_arrives_byte_for_byte,
    payload_filters_decide_before_any_plugin,
    one_origin_gets_at_most_origin_concurrency_attempts_at_once,
    a_burst_to_one_origin_waits_for_admission_and_all_arrive,
    a_burst_of_retries_to_one_origin_waits_for_admission,
    a_delivery_that_gets_no_slot_in_its_lease_is_retried,
    a_request_shaped_by_its_group_before_admission_is_signed_fresh,
    a_request_that_waited_for_its_slot_is_signed_fresh,
);
