//! Warm instances: a plugin version's instances kept between calls, so a
//! delivery pays for a call, not for an instantiation.
//!
//! Each loaded plugin version (one tenant's) has its own idle list: an
//! instance never serves another tenant or another version. An instance is
//! only put back after a call that returned normally; after a trap or a
//! timeout its store is dropped. Instances are retired after
//! [`MAX_CALLS`] calls so a leaking guest starts clean again. The number of
//! idle instances across all plugins is bounded by a shared budget, which
//! bounds the memory they hold. Concurrent calls each take their own
//! instance (new ones when none is idle); instances past the budget are
//! simply dropped after their call.

use super::bindings::Exports;
use super::host::HostState;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use wasmtime::Store;

/// Calls an instance serves before it is dropped.
pub const MAX_CALLS: u32 = 10_000;
/// Idle instances one plugin version keeps at most.
const PER_PLUGIN: usize = 8;

pub struct Warm {
    pub store: Store<HostState>,
    /// Its `shape` and, when the component has it, `batch` exports.
    pub exports: Exports,
    pub calls: u32,
}

/// How many idle instances all plugins together may keep.
pub struct Budget {
    max: usize,
    used: AtomicUsize,
    gauge: Gauge,
}

impl Budget {
    pub fn new(max: usize, gauge: Gauge) -> Self {
        Budget {
            max,
            used: AtomicUsize::new(0),
            gauge,
        }
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
        self.gauge.dec_by(n as i64);
    }
}

#[derive(Default)]
pub struct Idle {
    list: Mutex<Vec<Warm>>,
}

impl Idle {
    pub fn take(&self, budget: &Budget) -> Option<Warm> {
        let warm = self.list.lock().expect("idle lock").pop()?;
        budget.release(1);
        Some(warm)
    }

    /// Keeps `warm` for the next call if it has calls left and the budgets
    /// allow; otherwise drops it.
    pub fn put(&self, warm: Warm, budget: &Budget) {
        if warm.calls >= MAX_CALLS {
            return;
        }
        let mut list = self.list.lock().expect("idle lock");
        if list.len() >= PER_PLUGIN {
            return;
        }
        if budget.used.fetch_add(1, Ordering::Relaxed) >= budget.max {
            budget.used.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        budget.gauge.inc();
        list.push(warm);
    }

    /// Drops every idle instance (the plugin version is being unloaded).
    pub fn clear(&self, budget: &Budget) {
        let dropped = std::mem::take(&mut *self.list.lock().expect("idle lock"));
        budget.release(dropped.len());
    }
}
