//! What every scenario uses: a fast counting receiver, a bare hyper client
//! (also the ceiling's), the engine in-process on either backend, and a
//! `redis-server` of its own.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "bench-admin-token-0123456789";

/// Answers 200 at once and counts; optionally notes when each delivery id arrived.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub count: Arc<AtomicU64>,
    /// When each `webhook-id` arrived; kept only by a [`Receiver::recording`]
    /// one, so that throughput runs pay for counting alone, as the ceiling's
    /// receiver does.
    pub arrivals: Option<Arc<Mutex<HashMap<String, Instant>>>>,
}

impl Receiver {
    /// A receiver that answers 200 and counts.
    pub async fn spawn() -> anyhow::Result<Receiver> {
        Self::start(false).await
    }

    /// [`Receiver::spawn`], also noting when each `webhook-id` arrived.
    pub async fn recording() -> anyhow::Result<Receiver> {
        Self::start(true).await
    }

    async fn start(record: bool) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let rx = Receiver {
            url,
            count: Arc::default(),
            arrivals: record.then(Arc::default),
        };
        let state = rx.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let arrived = state.arrivals.as_ref().and_then(|arrivals| {
                                    let id = req.headers().get("webhook-id")?.to_str().ok()?;
                                    Some((arrivals, id.to_owned()))
                                });
                                let _ = req.into_body().collect().await;
                                if let Some((arrivals, id)) = arrived {
                                    arrivals.lock().unwrap().insert(id, Instant::now());
                                }
                                state.count.fetch_add(1, Ordering::Relaxed);
                                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                                    b"ok",
                                ))))
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(rx)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub async fn wait_for(&self, n: u64, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.count() < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "receiver got {} of {n}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

/// CPU time this process (engine, receiver and load generator) has used.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn http() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

pub async fn post(
    http: &Http,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut req = Request::post(url).header("content-type", content_type);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = http.request(req.body(Full::new(body))?).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

pub async fn post_json(http: &Http, url: &str, token: &str, body: &Value) -> anyhow::Result<Value> {
    let (status, bytes) = post(
        http,
        url,
        Some(token),
        "application/json",
        Bytes::from(body.to_string()),
    )
    .await?;
    anyhow::ensure!(
        status.is_success(),
        "{url}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(serde_json::from_slice(&bytes)?)
}

pub async fn get_json(http: &Http, url: &str, token: &str) -> anyhow::Result<Value> {
    let req = Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))?;
    let resp = http.request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
    Ok(serde_json::from_slice(
        &resp.into_body().collect().await?.to_bytes(),
    )?)
}

/// What the embedded store has done so far (none of it with Redis): its
/// group commits and the writes they held, from the engine's `/metrics`,
/// and the CPU time of its writer thread.
pub struct StoreReading {
    commits: Option<(f64, f64)>,
    writer_cpu: Option<Duration>,
}

impl StoreReading {
    pub async fn take(http: &Http, engine: &Engine) -> anyhow::Result<StoreReading> {
        let req = Request::get(format!("{}/metrics", engine.url)).body(Full::new(Bytes::new()))?;
        let text = http
            .request(req)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        let text = String::from_utf8_lossy(&text);
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        Ok(StoreReading {
            commits: value("wasmhook_store_commits_total")
                .zip(value("wasmhook_store_writes_total")),
            writer_cpu: writer_cpu(),
        })
    }

    /// Table cells for what happened since `before`, over `n` events or
    /// deliveries: writes per commit, and the writer's CPU per item (empty
    /// with Redis).
    pub fn since(&self, before: &StoreReading, n: usize) -> (String, String) {
        let per_commit = match (before.commits, self.commits) {
            (Some((c0, w0)), Some((c1, w1))) if c1 > c0 => format!("{:.0}", (w1 - w0) / (c1 - c0)),
            _ => String::new(),
        };
        let writer = match (before.writer_cpu, self.writer_cpu) {
            (Some(b), Some(a)) => format!("{:.1} µs", (a - b).as_secs_f64() * 1e6 / n as f64),
            _ => String::new(),
        };
        (per_commit, writer)
    }
}

/// CPU time the embedded store's writer thread has used so far (it is named
/// `wasmhook-store-writer`, which the kernel cuts to 15 bytes), from its
/// scheduler statistics in nanoseconds; none with Redis.
fn writer_cpu() -> Option<Duration> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("wasmhook-store") {
            continue;
        }
        let ns: Option<u64> = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        if let Some(ns) = ns {
            *total.get_or_insert(Duration::ZERO) += Duration::from_nanos(ns);
        }
    }
    total
}

/// Runs `n` jobs, `concurrency` at a time; returns each job's duration.
pub async fn run_many<F, Fut>(n: usize, concurrency: usize, job: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let fut = job(i);
        set.spawn(async move {
            let started = Instant::now();
            fut.await.map(|()| started.elapsed())
        });
        while set.len() >= concurrency {
            times.push(set.join_next().await.expect("running")??);
        }
    }
    while let Some(r) = set.join_next().await {
        times.push(r??);
    }
    Ok(times)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A JSON object of about `bytes` bytes, shaped like an invoice.
pub fn payload(bytes: usize) -> Value {
    let mut lines = Vec::new();
    let mut v = json!({"invoiceNumber": "INV-2026-0001", "clientId": "c_123", "totalAmount": 1250.50, "currency": "EUR", "lines": []});
    while v.to_string().len() < bytes {
        lines.push(json!({"sku": format!("SKU-{:05}", lines.len()), "qty": 2, "price": 19.99}));
        v["lines"] = Value::Array(lines.clone());
    }
    v
}

pub struct RedisServer(Child, pub u16);

impl RedisServer {
    pub async fn start(dir: &std::path::Path) -> anyhow::Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(RedisServer(child, port));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("redis-server did not start")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.1)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Redis => "redis",
        }
    }
}

/// The engine running in this process, with one tenant.
pub struct Engine {
    pub url: String,
    pub key: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    _redis: Option<RedisServer>,
}

impl Engine {
    pub async fn start(backend: Backend, http: &Http) -> anyhow::Result<Engine> {
        Self::start_with(backend, http, |_| {}).await
    }

    /// [`Engine::start`] with the bench's settings changed by `change`.
    pub async fn start_with(
        backend: Backend,
        http: &Http,
        change: impl FnOnce(&mut wasmhook::config::RawConfig),
    ) -> anyhow::Result<Engine> {
        let dir = tempfile::tempdir()?;
        let redis = match backend {
            Backend::Embedded => None,
            Backend::Redis => Some(RedisServer::start(dir.path()).await?),
        };
        let mut raw = wasmhook::config::RawConfig {
            data_dir: dir.path().join("data"),
            admin_token: Some(ADMIN.into()),
            allow_private_targets: vec!["127.0.0.0/8".into()],
            redis_url: redis.as_ref().map(RedisServer::url),
            plugin_timeout_ms: 1000,
            ..Default::default()
        };
        change(&mut raw);
        let settings = raw.validate()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(wasmhook::run(settings, listener, async {
            let _ = stopped.await;
        }));
        let tenant = post_json(
            http,
            &format!("{url}/api/tenants"),
            ADMIN,
            &json!({"id": "bench", "name": "bench"}),
        )
        .await?;
        Ok(Engine {
            url,
            key: tenant["api_key"].as_str().unwrap_or_default().to_owned(),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
            _redis: redis,
        })
    }

    pub async fn webhook(
        &self,
        http: &Http,
        url: &str,
        plugin: Option<&str>,
    ) -> anyhow::Result<()> {
        self.webhook_as(http, &self.key, url, plugin).await
    }

    /// A webhook of the tenant whose API key is `key`.
    pub async fn webhook_as(
        &self,
        http: &Http,
        key: &str,
        url: &str,
        plugin: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut body = json!({"url": url, "events": ["*"]});
        if let Some(p) = plugin {
            body["plugin"] = json!(p);
        }
        post_json(http, &format!("{}/api/webhooks", self.url), key, &body).await?;
        Ok(())
    }

    pub async fn upload(&self, http: &Http, name: &str, wasm: Vec<u8>) -> anyhow::Result<()> {
        self.upload_as(http, &self.key, name, wasm).await
    }

    /// Uploads a plugin for the tenant whose API key is `key`.
    pub async fn upload_as(
        &self,
        http: &Http,
        key: &str,
        name: &str,
        wasm: Vec<u8>,
    ) -> anyhow::Result<()> {
        let req = Request::put(format!("{}/api/plugins/{name}", self.url))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/wasm")
            .body(Full::new(Bytes::from(wasm)))?;
        let resp = http.request(req).await?;
        anyhow::ensure!(resp.status() == 201, "plugin upload: {}", resp.status());
        Ok(())
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await??;
        }
        Ok(())
    }
}

/// Builds the plugins in `plugins/` (a no-op when they are up to date) and returns a component's bytes.
pub fn plugin(name: &str) -> anyhow::Result<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let target = root.join("target").join("plugins");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root.join("plugins"))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "building the plugins failed (rustup target add wasm32-wasip2)"
    );
    Ok(std::fs::read(
        target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_"))),
    )?)
}
