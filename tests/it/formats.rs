//! The five seed formats, delivered through the running engine by their
//! plugins to receivers written as the seed documents show them (run in
//! Node.js), with real events from the seeds and data that tests
//! `JSON.stringify` round trips.

use crate::harness::TestEngine;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use wasmhook_tests::plugins;

const SECRET: &str = "my-webhook-secret-12345678";

/// The Node.js receivers of `tests/receivers/seeds.js`, killed on drop.
struct SeedReceivers {
    child: Child,
    base: String,
}

impl SeedReceivers {
    fn spawn() -> SeedReceivers {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/receivers/seeds.js");
        let mut child = Command::new("node")
            .arg(script)
            .env("WEBHOOK_SECRET", SECRET)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (Node.js) must be installed to run the seed receivers");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .expect("receiver did not start");
        SeedReceivers {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for SeedReceivers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Data no naive serialiser gets through `JSON.stringify` unchanged.
fn tricky() -> Value {
    serde_json::from_str(
        r#"{"totalAmount": 1500.00, "rate": 1e21, "tiny": 1.0e-7, "big": 12345678901234567890,
            "2": "indexed key", "10": "another", "note": "café \"quoted\" \u2028 line\nbreak\t\u0001 😀",
            "nested": {"b": [1, 2.50, null, -0], "a": true}}"#,
    )
    .unwrap()
}

fn with(mut base: Value, extra: &Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

struct Case {
    path: &'static str,
    plugin: &'static str,
    component: &'static str,
    events: Vec<(&'static str, Value)>,
    config: Value,
}

#[tokio::test]
async fn every_seed_format_verifies_with_its_documents_receiver() {
    let node = SeedReceivers::spawn();
    let engine = TestEngine::spawn().await;
    let t = tricky();
    let cases = vec![
        Case {
            path: "/000",
            plugin: "lawfirm",
            component: plugins::LAWFIRM,
            config: Value::Null,
            events: vec![
                (
                    "invoice.created",
                    json!({"_id": "inv_1", "invoiceNumber": "INV-2024-001", "clientId": "c1", "totalAmount": 1250.5, "dueDate": "2026-12-01", "status": "draft"}),
                ),
                (
                    "invoice.paid",
                    with(
                        json!({"_id": "inv_1", "amountPaid": 1250.50, "balanceDue": 0, "payment": {"_id": "p1", "amount": 1250.5, "paymentMethod": "card"}}),
                        &t,
                    ),
                ),
                (
                    "document.signed",
                    json!({"_id": "d1", "fileName": "engagement.pdf", "signedBy": "u1", "signatures": []}),
                ),
            ],
        },
        Case {
            path: "/001",
            plugin: "gestiqcloud",
            component: plugins::GESTIQCLOUD,
            config: json!({"source": "gestiqcloud", "version": "1.0"}),
            events: vec![
                (
                    "invoice.created",
                    json!({"invoice_id": "inv-123", "invoice_number": "INV-2024-001", "amount": "1500.00", "currency": "USD", "customer_name": "Acme Corp", "status": "draft"}),
                ),
                ("payment.received", with(json!({"payment_id": "pay-9"}), &t)),
            ],
        },
        Case {
            path: "/002",
            plugin: "jossiedb",
            component: plugins::JOSSIEDB,
            config: Value::Null,
            events: vec![
                (
                    "item-created",
                    json!({"item_id": "i1", "name": "Drill", "location_id": "loc-123", "category_id": "cat-456", "quantity": 10}),
                ),
                (
                    "low-stock-alert",
                    with(
                        json!({"item_id": "i1", "quantity": 2, "min_quantity": 5}),
                        &t,
                    ),
                ),
                (
                    "transfer-approved",
                    json!({"transfer_id": "t1", "from": "loc-1", "to": "loc-2"}),
                ),
            ],
        },
        Case {
            path: "/003",
            plugin: "esign",
            component: plugins::ESIGN,
            config: Value::Null,
            events: vec![
                (
                    "document.signed",
                    json!({"document_id": "document123", "signed_by": "user456"}),
                ),
                (
                    "document.completed",
                    with(json!({"document_id": "document123"}), &t),
                ),
            ],
        },
        Case {
            path: "/004",
            plugin: "corp-astro",
            component: plugins::CORP_ASTRO,
            config: Value::Null,
            events: vec![
                (
                    "user.created",
                    json!({"userId": "u1", "email": "a@example.com"}),
                ),
                (
                    "business.analysis_completed",
                    with(json!({"businessId": "b1", "score": 87.50}), &t),
                ),
            ],
        },
    ];

    let mut expected = Vec::new();
    for case in &cases {
        let key = engine.tenant(&format!("seed{}", &case.path[1..])).await;
        engine
            .install_plugin(&key, case.plugin, case.component)
            .await;
        let events: Vec<&str> = case.events.iter().map(|(t, _)| *t).collect();
        let hook = engine
            .webhook(&key, &format!("{}{}", node.base, case.path), json!({
                "events": events, "plugin": case.plugin, "plugin_config": case.config, "secret": SECRET,
            }))
            .await;
        for (event_type, data) in &case.events {
            engine.trigger(&key, event_type, data.clone()).await;
        }
        expected.push((case, key, hook["id"].as_str().unwrap().to_owned()));
    }

    // Generous: each tenant compiles its plugin, slow in debug builds on a loaded machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stats = node.stats().await;
        let done = cases
            .iter()
            .all(|c| stats[c.path]["ok"].as_u64() == Some(c.events.len() as u64));
        for c in &cases {
            assert_eq!(
                stats[c.path]["bad"], 0,
                "{} deliveries failed verification: {stats}",
                c.plugin
            );
        }
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all deliveries arrived: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The receiver has them all; the engine records each answer just after.
    for (case, key, hook) in &expected {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, s) = engine
                .get(&format!("/api/webhooks/{hook}/stats"), key)
                .await;
            if s["succeeded"] == case.events.len() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: {s}",
                case.plugin
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[tokio::test]
async fn jossiedb_filters_skip_and_record_the_reason() {
    let node = SeedReceivers::spawn();
    let engine = TestEngine::spawn().await;
    let key = engine.tenant("jossie").await;
    engine
        .install_plugin(&key, "jossiedb", plugins::JOSSIEDB)
        .await;
    let hook = engine
        .webhook(
            &key,
            &format!("{}/002", node.base),
            json!({
                "events": ["low-stock-alert"], "plugin": "jossiedb", "secret": SECRET,
                "plugin_config": {"filters": {"locations": ["loc-123"], "minStockThreshold": 5}},
            }),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let low = engine
        .trigger(
            &key,
            "low-stock-alert",
            json!({"item_id": "a", "quantity": 2, "location_id": "loc-123"}),
        )
        .await;
    let high = engine
        .trigger(
            &key,
            "low-stock-alert",
            json!({"item_id": "b", "quantity": 9, "location_id": "loc-123"}),
        )
        .await;
    let elsewhere = engine
        .trigger(
            &key,
            "low-stock-alert",
            json!({"item_id": "c", "quantity": 1, "location_id": "loc-9"}),
        )
        .await;

    let status_of = |answer: &Value| answer["delivery_ids"][0].as_str().unwrap().to_owned();
    let sent = engine
        .wait_delivery(
            &key,
            hook_id,
            &status_of(&low),
            Duration::from_secs(60),
            |d| d["status"] != "pending",
        )
        .await;
    assert_eq!(sent["status"], "succeeded", "{sent}");
    let skipped = engine
        .wait_delivery(
            &key,
            hook_id,
            &status_of(&high),
            Duration::from_secs(60),
            |d| d["status"] != "pending",
        )
        .await;
    assert_eq!(skipped["status"], "skipped");
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap()
            .contains("minStockThreshold"),
        "{skipped}"
    );
    assert_eq!(skipped["attempt_log"][0]["plugin"], "jossiedb@1");
    let other = engine
        .wait_delivery(
            &key,
            hook_id,
            &status_of(&elsewhere),
            Duration::from_secs(60),
            |d| d["status"] != "pending",
        )
        .await;
    assert!(
        other["reason"].as_str().unwrap().contains("location"),
        "{other}"
    );
    let (_, stats) = engine
        .get(&format!("/api/webhooks/{hook_id}/stats"), &key)
        .await;
    assert_eq!(
        (stats["succeeded"].as_u64(), stats["skipped"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(node.stats().await["/002"]["ok"], 1);
}
