//! Operations as the seed documents run them: seed 001's metrics (checked
//! by promtool and queried through a real Prometheus), the alert rules, the
//! health job and operational events, jobs by API and command line,
//! engine-wide defaults, stats, readiness.

use crate::harness::{
    ADMIN, Backend, TestEngine, TestReceiver, on_both_backends, sample, verify_standard,
};
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A URL nothing listens on (connections are refused at once).
fn refused_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/hook")
}

fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is needed: apt-get install -y prometheus"
    );
    Command::new("promtool")
}

/// Polls `/metrics` until `line` is in it.
async fn wait_metric(engine: &TestEngine, line: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = engine.metrics().await;
        if text.contains(line) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing {line} in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deliveries of a webhook once each is no longer pending.
async fn finished(engine: &TestEngine, key: &str, hook: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = engine
            .get(&format!("/api/webhooks/{hook}/deliveries"), key)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let list = body["data"].as_array().unwrap().clone();
        if list.len() >= n && list.iter().all(|d| d["status"] != "pending") {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries never finished: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn seed_metrics_count_outcomes_retries_statuses_and_durations(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    receiver.answer(&[503, 429]);
    let key = engine.tenant("seedmetrics").await;
    let fixed = json!({"strategy": "fixed", "retries": 2, "delay_ms": 100, "jitter": false});
    engine
        .webhook(&key, &receiver.url, json!({"retry_policy": fixed}))
        .await;
    let once = json!({"strategy": "fixed", "retries": 1, "delay_ms": 100, "jitter": false});
    engine
        .webhook(&key, &refused_url(), json!({"retry_policy": once}))
        .await;
    engine
        .trigger(&key, "invoice.created", json!({"n": 1}))
        .await;
    let t = r#"event="invoice.created",tenant_id="seedmetrics""#;
    wait_metric(
        &engine,
        &format!("webhook_deliveries_total{{{t},status=\"failed\"}} 1"),
    )
    .await;
    let text = wait_metric(
        &engine,
        &format!("webhook_deliveries_total{{{t},status=\"delivered\"}} 1"),
    )
    .await;
    for line in [
        format!("webhook_retries_total{{{t},reason=\"server_error\"}} 1"),
        format!("webhook_retries_total{{{t},reason=\"rate_limited\"}} 1"),
        format!("webhook_retries_total{{{t},reason=\"connection_error\"}} 1"),
        r#"webhook_delivery_http_status_total{event="invoice.created",status_code="503"} 1"#.into(),
        r#"webhook_delivery_http_status_total{event="invoice.created",status_code="429"} 1"#.into(),
        r#"webhook_delivery_http_status_total{event="invoice.created",status_code="200"} 1"#.into(),
        // Three answered attempts; refused connections got no answer.
        format!("webhook_delivery_duration_seconds_count{{{t}}} 3"),
        format!("webhook_delivery_duration_seconds_bucket{{le=\"10.0\",{t}}} 3"),
        "# TYPE webhook_delivery_duration_seconds histogram".into(),
        "# TYPE webhook_deliveries_total counter".into(),
        "# TYPE webhook_delivery_http_status_total counter".into(),
        // The failed delivery used up its attempts: the tenant is told.
        r#"wasmhook_operational_events_total{event_type="wasmhook.delivery.exhausted"} 1"#.into(),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    for le in ["0.1", "0.5", "1.0", "2.0", "5.0", "10.0", "+Inf"] {
        assert!(text.contains(&format!(
            "webhook_delivery_duration_seconds_bucket{{le=\"{le}\",{t}}}"
        )));
    }
    assert!(!text.contains("le=\"0.25\""), "only the seed's buckets");
    // A scraper asking for OpenMetrics (as Prometheus does) gets it.
    let open = engine
        .http
        .get(format!("{}/metrics", engine.url))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        open.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let open = open.text().await.unwrap();
    assert!(open.contains("# TYPE webhook_deliveries counter"), "{open}");
    assert!(open.ends_with("# EOF\n"), "{open}");

    // The schedule gauges are there (and nothing is due once all is done).
    for name in [
        "wasmhook_schedule_due",
        "wasmhook_schedule_later",
        "wasmhook_schedule_oldest_due_age_seconds",
    ] {
        assert!(sample(&text, name).is_some(), "missing {name} in\n{text}");
    }

    // promtool reads the exposition as Prometheus does and lints it.
    let mut check = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn label_sets_are_capped_and_tenant_labels_can_be_dropped(backend: Backend) {
    let engine = TestEngine::on(backend, |s| s.metrics_bound.max_label_sets = 2).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("capped").await;
    engine.webhook(&key, &receiver.url, json!({})).await;
    for event in ["a.one", "a.two", "a.three", "a.four"] {
        engine.trigger(&key, event, json!({})).await;
    }
    receiver.wait_for(4, WAIT).await;
    let text = wait_metric(
        &engine,
        r#"webhook_deliveries_total{event="other",tenant_id="capped",status="delivered"} 2"#,
    )
    .await;
    assert!(
        text.contains(r#"{event="a.one",tenant_id="capped",status="delivered"} 1"#)
            || text.contains(r#"{event="a.two""#),
        "{text}"
    );
    assert_eq!(
        text.matches("webhook_deliveries_total{").count(),
        3,
        "{text}"
    );

    let engine = TestEngine::on(backend, |s| s.metrics_bound.tenant_labels = false).await;
    let key = engine.tenant("unlabelled").await;
    engine.webhook(&key, &receiver.url, json!({})).await;
    engine.trigger(&key, "b.one", json!({})).await;
    engine.trigger(&key, "b.two", json!({})).await;
    let text = wait_metric(&engine, r#"webhook_deliveries_total{status="delivered"} 2"#).await;
    assert!(!text.contains("tenant_id="), "{text}");
}

#[test]
fn the_alert_rules_pass_promtool() {
    let docs = format!("{REPO}/docs");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = promtool().args(args).current_dir(&docs).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A `prometheus` server scraping `target` every second with the alert
/// rules loaded, in a temporary directory, stopped on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            format!("{REPO}/docs/alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .unwrap();
        let host = target.trim_start_matches("http://");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nscrape_configs:\n  - job_name: wasmhook\n    static_configs:\n      - targets: ['{host}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is needed: apt-get install -y prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The result of an instant query once it has at least one series.
    async fn query(&self, http: &reqwest::Client, promql: &str) -> Vec<Value> {
        self.query_until(http, promql, |_| true).await
    }

    /// The result of an instant query once it has a series and `done`
    /// says so of the result.
    async fn query_until(
        &self,
        http: &reqwest::Client,
        promql: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = http
                .get(format!("{}/api/v1/query", self.url))
                .query(&[("query", promql)])
                .send()
                .await;
            if let Ok(resp) = answer
                && let Ok(body) = resp.json::<Value>().await
            {
                assert_ne!(body["status"], "error", "{promql}: {body}");
                let result = body["data"]["result"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !result.is_empty() && done(&result) {
                    return result;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus never answered {promql}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn a_real_prometheus_answers_the_seeds_queries(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let receiver = TestReceiver::spawn().await;
    let key = engine.tenant("promq").await;
    engine.webhook(&key, &receiver.url, json!({})).await;
    let fixed = json!({"strategy": "fixed", "retries": 1, "delay_ms": 50, "jitter": false});
    engine
        .webhook(&key, &refused_url(), json!({"retry_policy": fixed}))
        .await;
    let prometheus = Prometheus::start(&engine.url).await;
    let http = reqwest::Client::new();
    prometheus.query(&http, r#"up{job="wasmhook"} == 1"#).await;
    // Deliveries keep coming while Prometheus scrapes, so rates have two
    // different samples to work with.
    for i in 0..12 {
        engine
            .trigger(&key, "invoice.created", json!({"i": i}))
            .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let all = prometheus.query(&http, "webhook_deliveries_total").await;
    assert!(
        all.iter().any(|s| s["metric"]["status"] == "delivered"),
        "{all:?}"
    );
    let rate = prometheus
        .query(
            &http,
            r#"webhook_deliveries_total{status="delivered", event="invoice.created"} / webhook_deliveries_total{event="invoice.created"}"#,
        )
        .await;
    assert_eq!(rate[0]["metric"]["tenant_id"], "promq", "{rate:?}");
    let retries = prometheus.query(&http, "webhook_retries_total").await;
    assert_eq!(
        retries[0]["metric"]["reason"], "connection_error",
        "{retries:?}"
    );
    let seconds = |r: &[Value]| -> f64 { r[0]["value"][1].as_str().unwrap().parse().unwrap() };
    let average = prometheus
        .query_until(
            &http,
            "rate(webhook_delivery_duration_seconds_sum[5m]) / rate(webhook_delivery_duration_seconds_count[5m])",
            |r| seconds(r).is_finite(),
        )
        .await;
    assert!(seconds(&average) < 1.0, "{average:?}");
    let failed = prometheus
        .query(&http, r#"webhook_deliveries_total{status="failed"}"#)
        .await;
    assert_eq!(failed[0]["metric"]["event"], "invoice.created");
    // The rules loaded, and seed 001's failure-rate rule sees the failures.
    let pending = prometheus
        .query(&http, r#"ALERTS{alertname="WebhookDeliveryFailureRate"}"#)
        .await;
    assert_eq!(pending[0]["metric"]["tenant_id"], "promq", "{pending:?}");
    let rules: Value = http
        .get(format!("{}/api/v1/rules", prometheus.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rules: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 7);
    assert!(rules.iter().all(|r| r["health"] != "err"), "{rules:?}");
}

async fn the_health_job_disables_a_failing_webhook_and_tells_the_tenant(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let failing = TestReceiver::spawn().await;
    failing.answer(&[500; 12]);
    let watcher = TestReceiver::spawn().await;
    let everything = TestReceiver::spawn().await;
    let key = engine.tenant("health").await;
    let no_retries = json!({"strategy": "fixed", "retries": 0, "delay_ms": 0});
    let bad = engine
        .webhook(
            &key,
            &failing.url,
            json!({"events": ["order.*"], "retry_policy": no_retries, "description": "orders"}),
        )
        .await;
    let bad_id = bad["id"].as_str().unwrap();
    let told = engine
        .webhook(
            &key,
            &watcher.url,
            json!({"events": ["wasmhook.webhook.disabled"]}),
        )
        .await;
    engine
        .webhook(&key, &everything.url, json!({"events": ["*"]}))
        .await;
    // Nine failures are too few to judge (seed 000: at least 10).
    for i in 0..9 {
        engine.trigger(&key, "order.created", json!({"i": i})).await;
    }
    finished(&engine, &key, bad_id, 9).await;
    let (status, ran) = engine
        .post("/api/admin/jobs/health/run", ADMIN, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert_eq!(
        ran["runs"][0]["detail"], "checked 3 active webhooks, disabled 0",
        "{ran}"
    );

    engine.trigger(&key, "order.created", json!({"i": 9})).await;
    finished(&engine, &key, bad_id, 10).await;
    let (status, ran) = engine
        .post("/api/admin/jobs/health/run", ADMIN, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert_eq!(ran["runs"][0]["outcome"], "ok", "{ran}");
    assert_eq!(
        ran["runs"][0]["detail"], "checked 3 active webhooks, disabled 1",
        "{ran}"
    );

    let (_, hook) = engine.get(&format!("/api/webhooks/{bad_id}"), &key).await;
    assert_eq!(hook["active"], false, "{hook}");
    let reason = hook["disabled_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("failure rate 100% (10 of 10 finished deliveries"),
        "{reason}"
    );
    assert!(
        hook["disabled_at"].as_str().unwrap().ends_with('Z'),
        "{hook}"
    );

    // The subscribed webhook gets the event, signed like any other.
    let got = watcher.wait_for(1, WAIT).await;
    verify_standard(told["secret"].as_str().unwrap(), &got[0]);
    let event = got[0].json();
    assert_eq!(event["type"], "wasmhook.webhook.disabled", "{event}");
    assert_eq!(event["data"]["webhook_id"], bad_id);
    assert_eq!(event["data"]["cause"], "failure_rate");
    assert_eq!(event["data"]["description"], "orders");
    assert!(
        event["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("health threshold of 80%")
    );
    // `*` does not take the engine's own events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = everything.received();
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|r| r.json()["type"] == "order.created"));
    engine
        .assert_metrics(&[r#"wasmhook_webhooks_disabled_total{reason="failure_rate"} 1"#])
        .await;
    // Run again: nothing left to disable, and no second event.
    let (_, ran) = engine
        .post("/api/admin/jobs/health/run", ADMIN, json!({}))
        .await;
    assert_eq!(
        ran["runs"][0]["detail"],
        "checked 2 active webhooks, disabled 0"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(watcher.received().len(), 1);
}

async fn an_exhausted_delivery_is_told_and_operational_events_cause_none(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let failing = TestReceiver::spawn().await;
    failing.answer(&[500; 4]);
    let key = engine.tenant("exhausted").await;
    let no_retries = json!({"strategy": "fixed", "retries": 0, "delay_ms": 0});
    let bad = engine
        .webhook(
            &key,
            &failing.url,
            json!({"events": ["payment.*"], "retry_policy": no_retries}),
        )
        .await;
    // The watcher fails too: its exhausted delivery of the operational
    // event must not make another one.
    let watcher = TestReceiver::spawn().await;
    watcher.answer(&[500; 4]);
    engine
        .webhook(
            &key,
            &watcher.url,
            json!({"events": ["wasmhook.*"], "retry_policy": no_retries}),
        )
        .await;
    let trigger = engine
        .trigger(&key, "payment.failed", json!({"n": 1}))
        .await;
    let got = watcher.wait_for(1, WAIT).await;
    let event = got[0].json();
    assert_eq!(event["type"], "wasmhook.delivery.exhausted", "{event}");
    assert_eq!(event["data"]["webhook_id"], bad["id"]);
    assert_eq!(event["data"]["delivery_id"], trigger["delivery_ids"][0]);
    assert_eq!(event["data"]["event_type"], "payment.failed");
    assert_eq!(event["data"]["attempts"], 1);
    assert_eq!(event["data"]["last_status_code"], 500);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(watcher.received().len(), 1);
    engine
        .assert_metrics(&[
            r#"wasmhook_operational_events_total{event_type="wasmhook.delivery.exhausted"} 1"#,
        ])
        .await;

    // Tenants cannot trigger the engine's own types.
    let (status, body) = engine
        .post(
            "/api/events",
            &key,
            json!({"type": "wasmhook.webhook.disabled", "data": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reserved"),
        "{body}"
    );
}

async fn a_gone_receiver_disables_its_webhook_and_the_tenant_is_told(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let gone = TestReceiver::spawn().await;
    gone.answer(&[410]);
    let watcher = TestReceiver::spawn().await;
    let key = engine.tenant("gone").await;
    let hook = engine
        .webhook(&key, &gone.url, json!({"events": ["doc.*"]}))
        .await;
    engine
        .webhook(
            &key,
            &watcher.url,
            json!({"events": ["wasmhook.webhook.disabled"]}),
        )
        .await;
    engine.trigger(&key, "doc.signed", json!({})).await;
    let got = watcher.wait_for(1, WAIT).await;
    let event = got[0].json();
    assert_eq!(event["data"]["webhook_id"], hook["id"], "{event}");
    assert_eq!(event["data"]["cause"], "gone");
    assert_eq!(event["data"]["reason"], "receiver answered 410 Gone");
    let (_, now) = engine
        .get(
            &format!("/api/webhooks/{}", hook["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(now["active"], false);
    assert!(now["disabled_at"].is_string(), "{now}");
    engine
        .assert_metrics(&[r#"wasmhook_webhooks_disabled_total{reason="gone"} 1"#])
        .await;
}

async fn jobs_are_listed_and_run_by_api_and_command_line(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let key = engine.tenant("jobs").await;
    let (status, list) = engine.get("/api/admin/jobs", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let jobs = list["data"].as_array().unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["cleanup", "health", "plugin-unload", "plugin-cache-prune"]
    );
    assert_eq!(jobs[0]["schedule"], "0 2 * * *");
    assert_eq!(jobs[1]["schedule"], "0 */6 * * *");
    assert!(
        jobs[0]["next_run"]
            .as_str()
            .unwrap()
            .ends_with("T02:00:00.000Z"),
        "{list}"
    );
    assert_eq!(jobs[0]["last_run"], Value::Null);

    let (status, body) = engine.get("/api/admin/jobs", &key).await;
    assert!(
        status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED,
        "{body}"
    );
    let (status, body) = engine
        .post("/api/admin/jobs/nope/run", ADMIN, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cleanup, health"),
        "{body}"
    );

    // A plugin is cached compiled; files no current version uses are pruned.
    engine
        .install_plugin(&key, "erp", wasmhook_tests::plugins::GESTIQCLOUD)
        .await;
    let compiled = engine.data_dir().join("compiled");
    let ours: Vec<String> = std::fs::read_dir(&compiled)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let compat = ours[0].split_once('-').unwrap().1.to_owned();
    let stale = format!("{}-{compat}", "ab".repeat(32));
    std::fs::write(compiled.join(&stale), b"old").unwrap();
    std::fs::write(
        compiled.join(format!("{}-0000000000000000.cwasm", "cd".repeat(32))),
        b"other build",
    )
    .unwrap();

    let (status, ran) = engine
        .post("/api/admin/jobs/all/run", ADMIN, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    let runs = ran["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{ran}");
    assert!(
        runs.iter()
            .all(|r| r["outcome"] == "ok" && r["started"] == "manual"),
        "{ran}"
    );
    assert_eq!(
        runs[3]["detail"],
        "removed 2 compiled plugins no current version uses"
    );
    let left: Vec<String> = std::fs::read_dir(&compiled)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ours);

    // The command line says the same (the `wasmhook jobs` subcommands).
    let listed = wasmhook::remote::list_jobs(&engine.url, ADMIN)
        .await
        .unwrap();
    assert!(listed.starts_with("JOB"), "{listed}");
    let health_line = listed.lines().find(|l| l.starts_with("health ")).unwrap();
    assert!(
        health_line.contains("0 */6 * * *") && health_line.contains(" ok "),
        "{listed}"
    );
    let ran = wasmhook::remote::run_job(&engine.url, ADMIN, "cleanup")
        .await
        .unwrap();
    assert!(ran.starts_with("cleanup: ok in "), "{ran}");
    let err = wasmhook::remote::run_job(&engine.url, ADMIN, "nope")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let err = wasmhook::remote::list_jobs(&engine.url, "wrong-token")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert!(!err.to_string().contains("wrong-token"), "{err}");
}

async fn scheduled_jobs_run_on_time(backend: Backend) {
    let engine = TestEngine::on(backend, |s| {
        s.jobs.cleanup = wasmhook::config::parse_cron("* * * * * *").unwrap();
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, list) = engine.get("/api/admin/jobs", ADMIN).await;
    let cleanup = &list["data"][0];
    assert_eq!(cleanup["schedule"], "* * * * * *");
    assert_eq!(cleanup["last_run"]["started"], "schedule", "{list}");
    let runs = engine
        .metric(r#"wasmhook_job_runs_total{job="cleanup",outcome="ok"}"#)
        .await
        .unwrap();
    assert!((1.0..=4.0).contains(&runs), "{runs}");
}

async fn engine_wide_defaults_apply_to_webhooks_that_name_none(backend: Backend) {
    let engine = TestEngine::on(backend, |s| {
        s.webhook_defaults.retry_policy = serde_json::from_value(
            json!({"strategy": "fixed", "retries": 2, "delay_ms": 100, "jitter": false}),
        )
        .unwrap();
        s.webhook_defaults.timeout_ms = 1000;
    })
    .await;
    let receiver = TestReceiver::spawn().await;
    receiver.hold_next(Duration::from_millis(2500));
    receiver.answer(&[500]);
    let key = engine.tenant("defaults").await;
    let hook = engine.webhook(&key, &receiver.url, json!({})).await;
    let id = hook["id"].as_str().unwrap();
    assert_eq!(hook["retry_policy"]["strategy"], "fixed", "{hook}");
    assert_eq!(hook["retry_policy_is_default"], true);
    assert_eq!(hook["timeout_ms"], 1000);
    assert_eq!(hook["timeout_ms_is_default"], true);

    engine.trigger(&key, "invoice.paid", json!({})).await;
    let got = receiver.wait_for(3, WAIT).await;
    let d = engine
        .wait_delivery(&key, id, got[0].header("webhook-id"), WAIT, |d| {
            d["status"] == "succeeded"
        })
        .await;
    let log = d["attempt_log"].as_array().unwrap();
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["timeout", "http_error", "succeeded"], "{d}");

    // Its own policy wins; null goes back to the default.
    let own = json!({"strategy": "exponential", "retries": 3, "initial_delay_ms": 1000});
    let (status, changed) = engine
        .call(
            Method::PATCH,
            &format!("/api/webhooks/{id}"),
            &key,
            Some(json!({"retry_policy": own, "timeout_ms": 10000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["retry_policy"]["strategy"], "exponential");
    assert_eq!(changed["retry_policy_is_default"], false);
    assert_eq!(changed["timeout_ms"], 10000);
    let (_, back) = engine
        .call(
            Method::PATCH,
            &format!("/api/webhooks/{id}"),
            &key,
            Some(json!({"retry_policy": null, "timeout_ms": null})),
        )
        .await;
    assert_eq!(back["retry_policy"]["strategy"], "fixed", "{back}");
    assert_eq!(back["retry_policy_is_default"], true);
    assert_eq!(back["timeout_ms"], 1000);
}

async fn stats_carry_last_times_and_seed_000s_totals(backend: Backend) {
    let engine = TestEngine::on(backend, |_| {}).await;
    let ok = TestReceiver::spawn().await;
    let failing = TestReceiver::spawn().await;
    failing.answer(&[503; 4]);
    let key = engine.tenant("stats").await;
    let no_retries = json!({"strategy": "fixed", "retries": 0, "delay_ms": 0});
    let good = engine.webhook(&key, &ok.url, json!({})).await;
    let bad = engine
        .webhook(&key, &failing.url, json!({"retry_policy": no_retries}))
        .await;
    let gone = engine.webhook(&key, &ok.url, json!({})).await;
    for i in 0..2 {
        engine.trigger(&key, "stock.low", json!({"i": i})).await;
    }
    for hook in [&good, &bad, &gone] {
        finished(&engine, &key, hook["id"].as_str().unwrap(), 2).await;
    }
    let (status, _) = engine
        .call(
            Method::DELETE,
            &format!("/api/webhooks/{}", gone["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    engine
        .post(
            &format!("/api/webhooks/{}/disable", bad["id"].as_str().unwrap()),
            &key,
            json!({}),
        )
        .await;

    let (_, s) = engine
        .get(
            &format!("/api/webhooks/{}/stats", good["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(
        (s["total"].as_u64(), s["succeeded"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert!(
        s["last_delivery_at"].as_str().unwrap().ends_with('Z'),
        "{s}"
    );
    assert_eq!(s["last_success_at"], s["last_delivery_at"], "{s}");
    assert_eq!(s["last_failure_at"], Value::Null);
    assert_eq!(s["last_error"], Value::Null);
    let (_, s) = engine
        .get(
            &format!("/api/webhooks/{}/stats", bad["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(s["failed"], 2, "{s}");
    assert_eq!(s["last_success_at"], Value::Null);
    assert_eq!(s["last_failure_at"], s["last_delivery_at"], "{s}");
    assert_eq!(s["last_error"], "receiver answered 503", "{s}");

    let (_, t) = engine.get("/api/webhooks/stats", &key).await;
    assert_eq!(
        t["webhooks"],
        json!({"total": 2, "active": 1, "inactive": 1, "total_deliveries": 4,
               "succeeded_deliveries": 2, "failed_deliveries": 2}),
        "{t}"
    );
    let d = &t["deliveries"];
    assert_eq!(
        (
            d["total"].as_u64(),
            d["succeeded"].as_u64(),
            d["failed"].as_u64(),
            d["pending"].as_u64()
        ),
        (Some(6), Some(4), Some(2), Some(0)),
        "{t}"
    );
    assert!(d["average_attempt_ms"].is_u64(), "{t}");
    assert_eq!(d["last_error"], "receiver answered 503", "{t}");
}

async fn ready_answers_503_while_the_store_cannot_be_written(backend: Backend) {
    let mut engine = TestEngine::on(backend, |_| {}).await;
    let (status, body) = engine.get("/ready", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    let fault = engine
        .data_dir()
        .join(wasmhook::store::embedded::UNWRITABLE_FAULT);
    match backend {
        Backend::Embedded => std::fs::write(&fault, b"").unwrap(),
        Backend::Redis => engine.redis_server().unwrap().kill(),
    }
    let (status, body) = engine.get("/ready", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["reason"].as_str().unwrap().starts_with("the store"),
        "{body}"
    );
    // Liveness stays up.
    let (status, _) = engine.get("/health", "").await;
    assert_eq!(status, StatusCode::OK);
    match backend {
        Backend::Embedded => std::fs::remove_file(&fault).unwrap(),
        Backend::Redis => engine.redis_server().unwrap().restart().await,
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = engine.get("/ready", "").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

on_both_backends!(
    seed_metrics_count_outcomes_retries_statuses_and_durations,
    label_sets_are_capped_and_tenant_labels_can_be_dropped,
    a_real_prometheus_answers_the_seeds_queries,
    the_health_job_disables_a_failing_webhook_and_tells_the_tenant,
    an_exhausted_delivery_is_told_and_operational_events_cause_none,
    a_gone_receiver_disables_its_webhook_and_the_tenant_is_told,
    jobs_are_listed_and_run_by_api_and_command_line,
    scheduled_jobs_run_on_time,
    engine_wide_defaults_apply_to_webhooks_that_name_none,
    stats_carry_last_times_and_seed_000s_totals,
    ready_answers_503_while_the_store_cannot_be_written,
);

/// Several engines on one Redis: each scheduled time of a job is run by one
/// of them, a run holds the job's lease, and any engine reports the runs.
#[tokio::test]
async fn with_redis_a_job_runs_on_one_engine_at_a_time() {
    let server = crate::redis_server::RedisServer::start().await;
    let every_second = |s: &mut wasmhook::config::Settings| {
        s.jobs.cleanup = wasmhook::config::parse_cron("* * * * * *").unwrap();
    };
    let a = TestEngine::spawn_redis_tuned(&server.url(), "jobs2", every_second).await;
    let b = TestEngine::spawn_redis_tuned(&server.url(), "jobs2", every_second).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let runs = |text: &str, outcome: &str| {
        sample(
            text,
            &format!(r#"wasmhook_job_runs_total{{job="cleanup",outcome="{outcome}"}}"#),
        )
        .unwrap_or(0.0)
    };
    let (ta, tb) = (a.metrics().await, b.metrics().await);
    let ran = runs(&ta, "ok") + runs(&tb, "ok");
    let skipped = runs(&ta, "skipped") + runs(&tb, "skipped");
    // About three seconds passed: each was run once, by one engine.
    assert!((2.0..=5.0).contains(&ran), "ran {ran}, skipped {skipped}");
    assert!((ran - skipped).abs() <= 1.0, "ran {ran}, skipped {skipped}");

    // A run on one engine is reported by the other.
    let (status, run) = a.post("/api/admin/jobs/health/run", ADMIN, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    let (_, list) = b.get("/api/admin/jobs", ADMIN).await;
    assert_eq!(list["data"][1]["name"], "health");
    assert_eq!(
        list["data"][1]["last_run"]["engine"], run["runs"][0]["engine"],
        "{list}"
    );
    assert_eq!(list["data"][1]["last_run"]["started"], "manual");

    // While another holder has the lease, the job does not run here.
    let held = Command::new("redis-cli")
        .args(["-p", &server.port.to_string()])
        .args([
            "SET",
            "{jobs2:g}:job:health:lease",
            "someone-else",
            "PX",
            "60000",
        ])
        .output()
        .unwrap();
    assert!(held.status.success());
    let (status, body) = b.post("/api/admin/jobs/health/run", ADMIN, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "job_running", "{body}");
}
