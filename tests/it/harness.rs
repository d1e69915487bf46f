//! The shared test harness: the real engine on an ephemeral port with a fresh
//! data directory, a client for its API, and loopback receivers that record
//! what they get and answer what they are told.

use crate::redis_server::RedisServer;
use axum::http::{HeaderMap, StatusCode};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::{Notify, oneshot};
use wasmhook::config::Settings;

pub const ADMIN: &str = "test-admin-token-0123456789";

/// The store a test engine runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
}

/// Runs each named `async fn(Backend)` twice, as the tests
/// `<name>::embedded` and `<name>::redis`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn embedded() {
                super::$name(crate::harness::Backend::Embedded).await
            }
            #[tokio::test]
            async fn redis() {
                super::$name(crate::harness::Backend::Redis).await
            }
        }
    )*};
}
pub(crate) use on_both_backends;

pub struct TestEngine {
    pub url: String,
    pub http: reqwest::Client,
    dir: Option<TempDir>,
    /// The engine's own `redis-server`, on Redis.
    redis: Option<RedisServer>,
    /// What it was started with, to start it again (see `restart`).
    settings: Option<Settings>,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The value of one sample in a `/metrics` text (its name with any labels,
/// as the exposition writes it), if there is one.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a metric's value is a number"))
}

impl TestEngine {
    /// An engine on `backend` with the test settings as `tune` changes
    /// them: a fresh data directory, and on Redis a fresh `redis-server`
    /// of its own.
    pub async fn on(backend: Backend, tune: impl FnOnce(&mut Settings)) -> TestEngine {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::for_tests(dir.path().to_path_buf(), ADMIN);
        let redis = match backend {
            Backend::Embedded => None,
            Backend::Redis => {
                let server = RedisServer::start().await;
                settings.redis_url = Some(server.url());
                settings.schedule_partitions = 4;
                Some(server)
            }
        };
        tune(&mut settings);
        let mut engine = Self::spawn_with(settings.clone()).await;
        engine.dir = Some(dir);
        engine.redis = redis;
        engine.settings = Some(settings);
        engine
    }

    /// The engine's own `redis-server`, on Redis.
    pub fn redis_server(&mut self) -> Option<&mut RedisServer> {
        self.redis.as_mut()
    }

    /// Where the engine keeps its files (the embedded store, compiled plugins).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops an engine made by [`TestEngine::on`] and starts it again on
    /// the same store (its data directory, or its Redis).
    pub async fn restart(mut self) -> TestEngine {
        let settings = self.settings.take().expect("an engine made by `on`");
        let (dir, redis) = (self.dir.take(), self.redis.take());
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        let mut engine = Self::spawn_with(settings.clone()).await;
        engine.dir = dir;
        engine.redis = redis;
        engine.settings = Some(settings);
        engine
    }

    pub async fn spawn() -> TestEngine {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_path_buf();
        let mut engine = Self::spawn_in(&data_dir).await;
        engine.dir = Some(dir);
        engine
    }

    /// An engine with a fresh data directory and the test settings as
    /// `tune` changes them.
    pub async fn spawn_tuned(tune: impl FnOnce(&mut Settings)) -> TestEngine {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::for_tests(dir.path().to_path_buf(), ADMIN);
        tune(&mut settings);
        let mut engine = Self::spawn_with(settings).await;
        engine.dir = Some(dir);
        engine
    }

    /// An engine on an existing data directory (for restarts).
    pub async fn spawn_in(data_dir: &Path) -> TestEngine {
        Self::spawn_with(Settings::for_tests(data_dir.to_path_buf(), ADMIN)).await
    }

    /// An engine on a Redis (several may share one), with a short lease so
    /// tests see expired leases quickly.
    pub async fn spawn_redis(url: &str, prefix: &str) -> TestEngine {
        Self::spawn_redis_tuned(url, prefix, |_| {}).await
    }

    /// [`TestEngine::spawn_redis`] with the settings as `tune` changes them.
    pub async fn spawn_redis_tuned(
        url: &str,
        prefix: &str,
        tune: impl FnOnce(&mut Settings),
    ) -> TestEngine {
        let mut raw = wasmhook::config::RawConfig {
            admin_token: Some(ADMIN.into()),
            allow_private_targets: vec!["127.0.0.0/8".into()],
            redis_url: Some(url.into()),
            redis_prefix: prefix.into(),
            schedule_partitions: 4,
            lease_ms: 10_000,
            ..Default::default()
        };
        raw.data_dir = std::env::temp_dir().join("wasmhook-unused");
        let mut settings = raw.validate().unwrap();
        tune(&mut settings);
        Self::spawn_with(settings).await
    }

    pub async fn spawn_with(settings: Settings) -> TestEngine {
        let data_dir = settings.data_dir.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(wasmhook::run(settings, listener, async {
            let _ = stopped.await;
        }));
        TestEngine {
            url,
            http: reqwest::Client::new(),
            dir: None,
            redis: None,
            settings: None,
            data_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the engine and returns its data directory (kept alive).
    pub async fn stop(mut self) -> (Option<TempDir>, PathBuf) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        (self.dir.take(), self.data_dir.clone())
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Asserts that the Prometheus text at `/metrics` has each of `lines`.
    pub async fn assert_metrics(&self, lines: &[&str]) {
        let metrics = self.metrics().await;
        for line in lines {
            assert!(metrics.contains(line), "missing {line} in\n{metrics}");
        }
    }

    /// The value of one sample at `/metrics` (see [`sample`]).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        sample(&self.metrics().await, name)
    }

    /// The Prometheus text at `/metrics` (one scrape, so the samples in it
    /// agree with each other).
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.url);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Uploads a plugin component; returns the status and answer.
    pub async fn upload(
        &self,
        key: &str,
        name: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .put(format!("{}/api/plugins/{name}", self.url))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        (status, resp.json().await.unwrap())
    }

    /// Uploads a plugin built from `plugins/`, asserting it is accepted.
    pub async fn install_plugin(&self, key: &str, name: &str, path: &str) {
        let (status, body) = self
            .upload(key, name, std::fs::read(path).unwrap(), "application/wasm")
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Creates a tenant; returns its API key.
    pub async fn tenant(&self, id: &str) -> String {
        let (status, body) = self
            .post("/api/tenants", ADMIN, json!({"id": id, "name": id}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["api_key"].as_str().unwrap().to_owned()
    }

    /// Creates a webhook from `spec` (merged over url + events ["*"]); returns the answer.
    pub async fn webhook(&self, key: &str, url: &str, spec: Value) -> Value {
        let mut body = json!({"url": url, "events": ["*"]});
        for (k, v) in spec.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = self.post("/api/webhooks", key, body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer
    }

    pub async fn trigger(&self, key: &str, event_type: &str, data: Value) -> Value {
        let (status, body) = self
            .post(
                "/api/events",
                key,
                json!({"type": event_type, "data": data}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    /// Polls a delivery until `done` says so (or panics after `within`).
    pub async fn wait_delivery(
        &self,
        key: &str,
        webhook: &str,
        delivery: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self
                .get(
                    &format!("/api/webhooks/{webhook}/deliveries/{delivery}"),
                    key,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivery never reached the state: {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: tokio::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A status and extra headers to answer with, and how long to hold the
/// request first.
type Answer = (u16, Vec<(String, String)>, Duration);

#[derive(Default)]
struct ReceiverState {
    got: Mutex<Vec<Received>>,
    /// Answers to give, in order; 200 once empty.
    script: Mutex<VecDeque<Answer>>,
    notify: Notify,
}

/// A loopback HTTP receiver.
pub struct TestReceiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

impl TestReceiver {
    pub async fn spawn() -> TestReceiver {
        let state = Arc::new(ReceiverState::default());
        let s = state.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: bytes::Bytes| {
            let s = s.clone();
            async move {
                let (status, extra, hold) =
                    s.script
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or((200, vec![], Duration::ZERO));
                s.got.lock().unwrap().push(Received {
                    headers,
                    body: body.to_vec(),
                    at: tokio::time::Instant::now(),
                });
                s.notify.notify_waiters();
                tokio::time::sleep(hold).await;
                let mut resp = axum::http::Response::builder().status(status);
                for (k, v) in extra {
                    resp = resp.header(k, v);
                }
                resp.body(axum::body::Body::from("received")).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestReceiver { url, state }
    }

    /// The next answers, in order (then 200).
    pub fn answer(&self, statuses: &[u16]) {
        let mut script = self.state.script.lock().unwrap();
        script.extend(statuses.iter().map(|s| (*s, vec![], Duration::ZERO)));
    }

    /// The next request is recorded at once but answered (200) only after `hold`.
    pub fn hold_next(&self, hold: Duration) {
        self.state
            .script
            .lock()
            .unwrap()
            .push_back((200, vec![], hold));
    }

    pub fn answer_with_headers(&self, status: u16, headers: &[(&str, &str)]) {
        self.state.script.lock().unwrap().push_back((
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Duration::ZERO,
        ));
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.state.notify.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver got {} of {n} requests",
                got.len()
            );
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

/// Verifies a delivery the way a Standard Webhooks receiver does, with the
/// public `standardwebhooks` library.
pub fn verify_standard(secret: &str, got: &Received) {
    let wh = standardwebhooks::Webhook::new(secret).unwrap();
    wh.verify(&got.body, &got.headers)
        .unwrap_or_else(|e| panic!("Standard Webhooks verification failed: {e:?}"));
}
