//! What a plugin instance's store holds: a WASI context that grants nothing
//! (no files, sockets, environment or arguments; the clocks are frozen at the
//! delivery's timestamp, so a plugin sees no time beyond what the world
//! gives it), the memory cap, captured stdout/stderr, and who the plugin is,
//! for its log lines.
//!
//! Log lines (the `log` import, and stdout/stderr line by line) go to tracing
//! with tenant and plugin, capped per call and rate-limited per plugin
//! version; what is dropped is counted and reported once the gate reopens.

use super::bindings::{Level, LogHost, TypesHost};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// Longest plugin log message kept; the rest is cut.
const MAX_LOG_BYTES: usize = 2048;
/// Log lines one call may write; the rest are dropped.
const MAX_LOG_LINES: u32 = 32;
/// Bytes of stdout/stderr kept per call; the rest are dropped.
const MAX_CAPTURE: usize = 8 << 10;
/// Log lines per second one plugin version may write, and its burst.
const LOG_RATE: u32 = 20;
const LOG_BURST: u32 = 100;

/// Rate limit shared by every instance of one plugin version.
pub struct LogGate {
    limiter: DefaultDirectRateLimiter,
    dropped: AtomicU64,
}

impl Default for LogGate {
    fn default() -> Self {
        let quota = Quota::per_second(NonZeroU32::new(LOG_RATE).expect("non-zero"))
            .allow_burst(NonZeroU32::new(LOG_BURST).expect("non-zero"));
        LogGate {
            limiter: RateLimiter::direct(quota),
            dropped: AtomicU64::new(0),
        }
    }
}

impl LogGate {
    /// True if a line may be written now; otherwise counts it as dropped.
    fn admit(&self, tenant: &str, plugin: &str) -> bool {
        if self.limiter.check().is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                tenant,
                plugin,
                dropped,
                "plugin log lines dropped by the rate limit"
            );
        }
        true
    }
}

/// The delivery's timestamp, shared with the clocks the guest sees.
#[derive(Clone, Default)]
struct FrozenTime(Arc<AtomicU64>);

impl HostWallClock for FrozenTime {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::from_secs(self.0.load(Ordering::Relaxed))
    }
}

impl HostMonotonicClock for FrozenTime {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed) * 1_000_000_000
    }
}

/// A guest's stdout or stderr: keeps the first [`MAX_CAPTURE`] bytes of a
/// call, accepts and drops the rest (a full pipe must not trap the guest).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("capture lock"))
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp2 is linked; this is never asked for.
        Box::new(tokio::io::sink())
    }
}

#[async_trait::async_trait]
impl OutputStream for Captured {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        let mut buf = self.0.lock().expect("capture lock");
        let room = MAX_CAPTURE.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    tenant: String,
    plugin: String,
    log_lines: u32,
    gate: Arc<LogGate>,
    time: FrozenTime,
    stdout: Captured,
    stderr: Captured,
}

impl HostState {
    /// `plugin` is `name@version`, as it appears in log lines.
    pub fn new(limits: StoreLimits, tenant: &str, plugin: &str, gate: Arc<LogGate>) -> Self {
        let (time, stdout, stderr) = (
            FrozenTime::default(),
            Captured::default(),
            Captured::default(),
        );
        let wasi = WasiCtx::builder()
            .wall_clock(time.clone())
            .monotonic_clock(time.clone())
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            log_lines: 0,
            gate,
            time,
            stdout,
            stderr,
        }
    }

    /// The instance's resources (streams, pollables), for [`super::wasi`].
    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// Before each call: the clocks read the delivery's timestamp (seconds)
    /// and the per-call log allowance starts again.
    pub fn begin_call(&mut self, timestamp: u64) {
        self.time.0.store(timestamp, Ordering::Relaxed);
        self.log_lines = 0;
    }

    /// After each call: what the guest printed goes to tracing, line by line.
    pub fn end_call(&mut self) {
        for (stream, level) in [
            (self.stdout.clone(), Level::Info),
            (self.stderr.clone(), Level::Warn),
        ] {
            let text = stream.take();
            if text.is_empty() {
                continue;
            }
            for line in String::from_utf8_lossy(&text).lines() {
                if !line.trim().is_empty() {
                    self.log(level, line.to_owned());
                }
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl TypesHost for HostState {}

impl LogHost for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        self.log_lines += 1;
        let (tenant, plugin) = (self.tenant.as_str(), self.plugin.as_str());
        if self.log_lines > MAX_LOG_LINES || !self.gate.admit(tenant, plugin) {
            return;
        }
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        match level {
            Level::Trace => tracing::trace!(tenant, plugin, "{message}"),
            Level::Debug => tracing::debug!(tenant, plugin, "{message}"),
            Level::Info => tracing::info!(tenant, plugin, "{message}"),
            Level::Warn => tracing::warn!(tenant, plugin, "{message}"),
            Level::Error => tracing::error!(tenant, plugin, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Collects what tracing writes, for assertions.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    fn state() -> HostState {
        HostState::new(StoreLimits::default(), "tenant-a", "fmt@3", Arc::default())
    }

    #[test]
    fn stdout_and_stderr_go_to_the_log_with_tenant_and_plugin() {
        let mut host = state();
        let out = logged(|| {
            host.begin_call(0);
            let mut stdout = host.stdout.p2_stream();
            stdout
                .write(bytes::Bytes::from("first line\nsecond line\n"))
                .unwrap();
            let mut stderr = host.stderr.p2_stream();
            stderr.write(bytes::Bytes::from("trouble\n")).unwrap();
            host.end_call();
        });
        assert!(out.contains("INFO") && out.contains("first line"), "{out}");
        assert!(out.contains("second line"), "{out}");
        assert!(out.contains("WARN") && out.contains("trouble"), "{out}");
        assert!(
            out.contains("tenant=\"tenant-a\"") || out.contains("tenant=tenant-a"),
            "{out}"
        );
        assert!(out.contains("fmt@3"), "{out}");
        // Taken once: the next call starts empty.
        assert!(logged(|| host.end_call()).is_empty());
    }

    #[test]
    fn output_is_capped_and_lines_are_limited_per_call_and_rate_limited() {
        let mut host = state();
        let mut stdout = host.stdout.p2_stream();
        stdout
            .write(bytes::Bytes::from(vec![b'x'; 20_000]))
            .unwrap();
        assert_eq!(host.stdout.take().len(), MAX_CAPTURE);

        // 32 lines per call.
        let out = logged(|| {
            host.begin_call(0);
            for i in 0..50 {
                host.log(Level::Info, format!("line {i}"));
            }
        });
        assert_eq!(out.lines().count(), MAX_LOG_LINES as usize, "{out}");

        // The rate limit spans calls: a burst, then drops, reported later.
        let out = logged(|| {
            for _ in 0..10 {
                host.begin_call(0);
                for i in 0..30 {
                    host.log(Level::Info, format!("burst {i}"));
                }
            }
        });
        let written = out.lines().filter(|l| l.contains("burst")).count();
        assert!(written <= LOG_BURST as usize, "{written} lines written");
        assert!(host.gate.dropped.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn clocks_read_the_delivery_timestamp() {
        let mut host = state();
        host.begin_call(1_700_000_000);
        assert_eq!(
            HostWallClock::now(&host.time),
            Duration::from_secs(1_700_000_000)
        );
        assert_eq!(
            HostMonotonicClock::now(&host.time),
            1_700_000_000 * 1_000_000_000
        );
    }
}
