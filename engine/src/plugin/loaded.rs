//! One loaded plugin version of one tenant: its compiled component, its warm
//! instances, its log rate limit and call counts, and whether its calls may
//! run on an async worker (the inline policy). A version is loaded once per
//! engine at a time; two racing loads may build two, and the loser is dropped.

use super::bindings::PluginPre;
use super::host::{HostState, LogGate};
use super::instances::{Budget, Idle};
use crate::ids::TenantId;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A call using more CPU than this is slow: it sends its version's calls
/// back to blocking threads (see [`LoadedPlugin::runs_inline`]).
const INLINE_MAX: Duration = Duration::from_millis(1);
/// Quick calls in a row a version needs before its calls may run inline.
const INLINE_AFTER: u32 = 16;
/// Slow calls after which a version never runs inline again.
const SLOW_FOR_GOOD: u32 = 3;

/// Calls and failures of one plugin version on this engine since it started.
#[derive(Default)]
pub struct CallCounts {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl CallCounts {
    pub(super) fn failed(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("counts lock") = Some(error);
    }
}

/// One compiled, validated plugin version of one tenant, ready to call.
pub struct LoadedPlugin {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    pub(super) tenant: TenantId,
    pub(super) pre: Arc<PluginPre<HostState>>,
    pub(super) idle: Idle,
    pub(super) budget: Arc<Budget>,
    pub(super) gate: Arc<LogGate>,
    /// None for a copy whose calls are not the version's (candidates and
    /// dry runs): it counts nothing.
    pub(super) counts: Option<Arc<CallCounts>>,
    pub(super) last_used_ms: AtomicU64,
    /// Calls in a row that finished within [`INLINE_MAX`] (saturating at
    /// `INLINE_AFTER`).
    quick_calls: AtomicU32,
    /// Calls that took longer than [`INLINE_MAX`] (or timed out).
    slow_calls: AtomicU32,
}

impl LoadedPlugin {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: String,
        version: u32,
        sha256: String,
        tenant: TenantId,
        pre: Arc<PluginPre<HostState>>,
        budget: Arc<Budget>,
        counts: Option<Arc<CallCounts>>,
        now_ms: u64,
    ) -> Self {
        LoadedPlugin {
            name,
            version,
            sha256,
            tenant,
            pre,
            idle: Idle::default(),
            budget,
            gate: Arc::default(),
            counts,
            last_used_ms: AtomicU64::new(now_ms),
            quick_calls: AtomicU32::new(0),
            slow_calls: AtomicU32::new(0),
        }
    }

    /// `name@version`, as recorded on attempts.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// True when this version's calls may run on an async worker thread: its
    /// last [`INLINE_AFTER`] calls each took under [`INLINE_MAX`], and fewer
    /// than [`SLOW_FOR_GOOD`] ever took longer. A slow call sends the version
    /// back to blocking threads until it has made that many quick calls there
    /// again, so one stall (a page-fault storm on a busy machine, say) does
    /// not pin it there; a version that turns slow can hold a worker at most
    /// [`SLOW_FOR_GOOD`] times, each for at most the CPU deadline.
    pub fn runs_inline(&self) -> bool {
        self.slow_calls.load(Ordering::Relaxed) < SLOW_FOR_GOOD
            && self.quick_calls.load(Ordering::Relaxed) >= INLINE_AFTER
    }

    /// Records what a call cost (see [`CallTimer`]).
    pub(super) fn note_duration(&self, took: Duration) {
        if took > INLINE_MAX {
            self.slow_calls.fetch_add(1, Ordering::Relaxed);
            self.quick_calls.store(0, Ordering::Relaxed);
        } else if self.quick_calls.load(Ordering::Relaxed) < INLINE_AFTER {
            self.quick_calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        self.idle.clear(&self.budget);
    }
}

/// Times one call in this thread's CPU time: what a call costs, whatever
/// else the machine is doing (wall time would count preemption on a busy
/// machine). Reading the CPU clock is a system call (0.7 µs here, against
/// 30 ns for the wall clock), so the end is read from the wall clock first:
/// a thread cannot use more CPU than the wall time that passed, so a call
/// within [`INLINE_MAX`] of wall time is quick without a second read.
pub(super) struct CallTimer {
    wall: Instant,
    cpu: Duration,
}

impl CallTimer {
    pub(super) fn start() -> CallTimer {
        CallTimer {
            cpu: thread_cpu_time(),
            wall: Instant::now(),
        }
    }

    /// The call's CPU time, or, when that is certainly within
    /// [`INLINE_MAX`], the wall time (an upper bound of it).
    pub(super) fn took(&self) -> Duration {
        let wall = self.wall.elapsed();
        if wall <= INLINE_MAX {
            return wall;
        }
        thread_cpu_time().saturating_sub(self.cpu)
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux and macOS kernel provides.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quick call is timed by the wall clock alone; a longer one by the
    /// thread's CPU time, so time spent off the CPU (preempted, or here
    /// asleep) does not make a call slow, and time spent on it does.
    #[test]
    fn calls_are_timed_in_cpu_time() {
        let quick = CallTimer::start();
        assert!(quick.took() <= INLINE_MAX);

        let asleep = CallTimer::start();
        std::thread::sleep(Duration::from_millis(20));
        assert!(asleep.took() < INLINE_MAX, "{:?}", asleep.took());

        let busy = CallTimer::start();
        let from = thread_cpu_time();
        let mut spins = 0u64;
        while thread_cpu_time() - from < 3 * INLINE_MAX {
            spins = std::hint::black_box(spins + 1);
        }
        assert!(busy.took() > INLINE_MAX, "{:?}", busy.took());
    }
}
