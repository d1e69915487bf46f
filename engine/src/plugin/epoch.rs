//! The epoch ticker: the thread that advances the wasmtime engine's epoch,
//! which is what a call's CPU deadline is counted in. It ticks only while
//! guest code may run (a call, or an instantiation, holds [`Ticking`]);
//! otherwise it parks, so an engine that runs no plugins does not wake 500
//! times a second. It ends once the engine is dropped.
//!
//! Owns the thread and the count of holders. What may happen twice: a
//! holder arriving as the thread parks unparks it; the thread then looks
//! again, so no tick is lost for long (at most one [`EPOCH_TICK`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances while guest code may run; a call's
/// deadline is counted in these.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// How long the parked thread sleeps before looking whether the engine is
/// still there.
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub struct Ticker {
    shared: Arc<Shared>,
    thread: std::thread::Thread,
}

#[derive(Default)]
struct Shared {
    holders: AtomicUsize,
    /// Ticks made so far (read by tests and nothing else).
    ticks: AtomicU64,
}

/// Keeps the epoch advancing while held.
pub struct Ticking<'a>(&'a Ticker);

impl Ticker {
    pub fn start(engine: &Engine) -> std::io::Result<Ticker> {
        let weak = engine.weak();
        let shared = Arc::new(Shared::default());
        let seen = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wasmhook-epoch".into())
            .spawn(move || tick(weak, &seen))?
            .thread()
            .clone();
        Ok(Ticker { shared, thread })
    }

    /// The epoch advances until the guard is dropped.
    pub fn hold(&self) -> Ticking<'_> {
        if self.shared.holders.fetch_add(1, Ordering::SeqCst) == 0 {
            self.thread.unpark();
        }
        Ticking(self)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.shared.holders.fetch_sub(1, Ordering::SeqCst);
    }
}

fn tick(weak: EngineWeak, shared: &Shared) {
    loop {
        let Some(engine) = weak.upgrade() else { return };
        if shared.holders.load(Ordering::SeqCst) == 0 {
            drop(engine);
            std::thread::park_timeout(IDLE_CHECK);
            continue;
        }
        engine.increment_epoch();
        shared.ticks.fetch_add(1, Ordering::Relaxed);
        drop(engine);
        std::thread::sleep(EPOCH_TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(t: &Ticker) -> u64 {
        t.shared.ticks.load(Ordering::Relaxed)
    }

    #[test]
    fn ticks_only_while_held() {
        let engine = Engine::default();
        let ticker = Ticker::start(&engine).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ticks(&ticker), 0, "no holder: parked");

        let held = ticker.hold();
        let also = ticker.hold();
        std::thread::sleep(Duration::from_millis(60));
        drop(also);
        std::thread::sleep(Duration::from_millis(60));
        let while_held = ticks(&ticker);
        assert!(while_held >= 10, "held for 120 ms: {while_held} ticks");

        drop(held);
        // A tick decided just before the drop may still land: let it.
        std::thread::sleep(Duration::from_millis(50));
        let after = ticks(&ticker);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ticks(&ticker), after, "released: parked again");
    }
}
