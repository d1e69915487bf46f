//! One loaded plugin version of one tenant: its compiled component, its warm
//! instances, its log rate limit and call counts, and whether its calls may
//! run on an async worker (the inline policy). A version is loaded once per
//! engine at a time; two racing loads may build two, and the loser is dropped.

use super::bindings::PluginPre;
use super::host::{HostState, LogGate};
use super::instances::{Budget, Idle};
use crate::ids::TenantId;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A call using more CPU than this is slow: it sends its version's calls
/// back to blocking threads (see [`LoadedPlugin::runs_inline`]).
const INLINE_MAX: Duration = Duration::from_millis(1);
/// Quick calls in a row a version needs before its calls may run inline.
const INLINE_AFTER: u32 = 16;
/// Wall time one unit of slow-call time costs a version's stall budget: its
/// slow calls may take at most 1/100 of the time over the long run.
const STALL_COST: u64 = 100;

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
    inline: InlinePolicy,
    /// Attempts one shared call (`handle-many`) may shape: halved each time
    /// one runs out of time, so a plugin too slow to shape many within one
    /// call's limit ends up with a call each.
    shared_limit: AtomicUsize,
}

/// Which version a [`LoadedPlugin`] is: a tenant's plugin, its version
/// number and its component's hash.
pub(super) struct Which {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    pub tenant: TenantId,
}

impl LoadedPlugin {
    pub(super) fn new(
        which: Which,
        pre: Arc<PluginPre<HostState>>,
        budget: Arc<Budget>,
        counts: Option<Arc<CallCounts>>,
        inline: InlinePolicy,
        now_ms: u64,
    ) -> Self {
        let Which {
            name,
            version,
            sha256,
            tenant,
        } = which;
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
            inline,
            shared_limit: AtomicUsize::new(super::call::MAX_SHARED),
        }
    }

    /// How many attempts one shared call of this version shapes at most
    /// now (1: none are shared).
    pub fn shares_up_to(&self) -> usize {
        self.shared_limit.load(Ordering::Relaxed)
    }

    /// A shared call ran out of time: share half as many from now on.
    pub(super) fn shared_call_timed_out(&self) {
        let _ = self
            .shared_limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some((n / 2).max(1))
            });
    }

    /// `name@version`, as recorded on attempts.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// True when this version's calls may run on an async worker thread
    /// (see [`InlinePolicy`]).
    pub fn runs_inline(&self) -> bool {
        self.inline.allows(monotonic_ms())
    }

    /// Records what a call cost (see [`CallTimer`]).
    pub(super) fn note_duration(&self, took: Duration) {
        self.inline.note(took, monotonic_ms());
    }
}

/// Milliseconds on a clock that never goes back (a wall clock set back an
/// hour would otherwise keep a version off the workers for that hour).
fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Whether a version's calls run on the engine's async workers (a thread hop
/// costs more than a quick call) or on blocking threads.
///
/// A version runs inline once its last [`INLINE_AFTER`] calls each used
/// under [`INLINE_MAX`] of CPU. A slow call (or one that hit the time limit)
/// sends it back to blocking threads until it has made that many quick calls
/// in a row again. Slow calls also run up a stall debt, paid off at
/// 1/[`STALL_COST`] of the wall clock: a version whose debt is more than its
/// burst (three calls at the time limit) stays on blocking threads until it
/// is paid down to that. So the workers lose at most about 1 % of their time
/// to one version's slow calls over the long run, with bursts of three calls
/// at the limit, while a version that stalls now and then (a page fault, a
/// busy kernel) keeps running inline. The debt is capped at twice the burst, so a
/// version that turned quick again returns within a burst's worth of debt
/// (15 s with the default 50 ms limit).
pub(super) struct InlinePolicy {
    /// Calls in a row that finished within [`INLINE_MAX`] (saturating at
    /// `INLINE_AFTER`).
    quick_calls: AtomicU32,
    /// When (ms on [`monotonic_ms`]'s clock) the stall debt of the slow
    /// calls is paid off.
    paid_at_ms: AtomicU64,
    /// How far past now that may be while calls still run inline.
    burst_ms: u64,
}

impl InlinePolicy {
    /// A policy for a version whose calls are cut off at `time_limit`.
    pub(super) fn new(time_limit: Duration) -> Self {
        InlinePolicy {
            quick_calls: AtomicU32::new(0),
            paid_at_ms: AtomicU64::new(0),
            burst_ms: 3 * time_limit.as_millis() as u64 * STALL_COST,
        }
    }

    fn allows(&self, now_ms: u64) -> bool {
        self.quick_calls.load(Ordering::Relaxed) >= INLINE_AFTER
            && self.paid_at_ms.load(Ordering::Relaxed) <= now_ms + self.burst_ms
    }

    fn note(&self, took: Duration, now_ms: u64) {
        if took <= INLINE_MAX {
            if self.quick_calls.load(Ordering::Relaxed) < INLINE_AFTER {
                self.quick_calls.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        self.quick_calls.store(0, Ordering::Relaxed);
        let cost = (took.as_micros() as u64 * STALL_COST).div_ceil(1000);
        let cap = now_ms + 2 * self.burst_ms;
        let _ = self
            .paid_at_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |paid| {
                Some((paid.max(now_ms) + cost).min(cap))
            });
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

    const QUICK: Duration = Duration::from_micros(50);

    fn quick_calls(policy: &InlinePolicy, n: u32, now_ms: u64) {
        for _ in 0..n {
            policy.note(QUICK, now_ms);
        }
    }

    #[test]
    fn quick_calls_earn_inline_runs_and_a_slow_one_ends_them() {
        let policy = InlinePolicy::new(Duration::from_millis(50));
        quick_calls(&policy, 15, 0);
        assert!(!policy.allows(0), "15 quick calls are not enough");
        quick_calls(&policy, 1, 0);
        assert!(policy.allows(0));
        policy.note(Duration::from_millis(2), 0);
        assert!(!policy.allows(0), "a slow call ends inline runs");
        quick_calls(&policy, 16, 0);
        assert!(policy.allows(0), "16 quick calls in a row bring them back");
    }

    #[test]
    fn slow_calls_may_take_a_burst_then_a_hundredth_of_the_time() {
        let limit = Duration::from_millis(50);
        // Burst: three calls at the time limit (5 s of debt each).
        let policy = InlinePolicy::new(limit);
        for strike in 1..=4 {
            policy.note(limit, 1_000);
            quick_calls(&policy, 16, 1_000);
            assert_eq!(policy.allows(1_000), strike <= 3, "strike {strike}");
        }
        // 20 s of debt from 1 s on the clock; 15 s of it may be left.
        assert!(!policy.allows(5_999));
        assert!(policy.allows(6_000));

        // Stalls of 2 ms every 200 ms (1 % of the time) keep it inline...
        let policy = InlinePolicy::new(limit);
        for i in 0..10_000u64 {
            policy.note(Duration::from_millis(2), i * 200);
            quick_calls(&policy, 16, i * 200);
            assert!(policy.allows(i * 200), "stall {i}");
        }
        // ... every 100 ms (2 %) the debt grows by 100 ms a stall, past
        // the 15 s burst after 149 of them.
        let policy = InlinePolicy::new(limit);
        let inline = (0..1_000u64).filter(|i| {
            policy.note(Duration::from_millis(2), i * 100);
            quick_calls(&policy, 16, i * 100);
            policy.allows(i * 100)
        });
        assert_eq!(inline.count(), 149);
    }

    #[test]
    fn the_debt_is_capped_so_a_version_that_turned_quick_returns() {
        let policy = InlinePolicy::new(Duration::from_millis(50));
        for _ in 0..1_000 {
            policy.note(Duration::from_millis(50), 0);
        }
        quick_calls(&policy, 16, 0);
        assert!(!policy.allows(0));
        // At most twice the burst (30 s) to pay down to the burst (15 s).
        assert!(!policy.allows(14_999));
        assert!(policy.allows(15_000));
    }

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
