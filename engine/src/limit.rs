//! Rate limits as GCRA (the generic cell rate algorithm, a token bucket
//! kept as one number: the theoretical arrival time of the next unit).
//! This is the pure step; the state lives in the store, in memory on the
//! embedded store and in Redis (the same arithmetic in a Lua script), so
//! with Redis a limit holds across every engine.
//!
//! Owns: the arithmetic. Invariants: at most `burst` units pass at once,
//! then `per_second` on average; a refused take changes nothing. Nothing
//! here has effects.

use std::time::Duration;

/// A limit: `per_second` on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Milliseconds one unit costs.
    pub fn interval_ms(self) -> f64 {
        1000.0 / self.per_second
    }

    /// Milliseconds of units that may pass at once.
    pub fn tolerance_ms(self) -> f64 {
        self.interval_ms() * f64::from(self.burst)
    }
}

/// Whether `n` units may pass at `now_ms`, given the stored arrival time
/// (none: never used): the arrival time to store, or how long to wait
/// before they would pass (`None`: never, as `n` is over the burst).
pub fn take(tat_ms: Option<f64>, now_ms: f64, rate: Rate, n: u32) -> Result<f64, Option<Duration>> {
    if n > rate.burst {
        return Err(None);
    }
    let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
    let next = tat + rate.interval_ms() * f64::from(n);
    let allowed_at = next - rate.tolerance_ms();
    if allowed_at > now_ms {
        return Err(Some(Duration::from_secs_f64(
            (allowed_at - now_ms) / 1000.0,
        )));
    }
    Ok(next)
}

/// Reserves one unit at `now_ms`: the arrival time to store, and when the
/// unit may go (`now_ms` or later: a caller that cannot go now waits until
/// then, its unit kept for it, so waiting units are not taken twice).
pub fn reserve(tat_ms: Option<f64>, now_ms: f64, rate: Rate) -> (f64, f64) {
    let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
    let next = tat + rate.interval_ms();
    (next, (next - rate.tolerance_ms()).max(now_ms))
}

/// The arrival time that lets no unit go before `until_ms` (a receiver
/// asked to be left alone until then); never earlier than `tat_ms`.
pub fn hold(tat_ms: Option<f64>, until_ms: f64, rate: Rate) -> f64 {
    let held = until_ms + rate.tolerance_ms() - rate.interval_ms();
    tat_ms.map_or(held, |tat| tat.max(held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_units_go_one_interval_apart_after_the_burst() {
        let rate = Rate {
            per_second: 10.0,
            burst: 2,
        };
        let mut tat = None;
        let mut at = Vec::new();
        for _ in 0..5 {
            let (next, go) = reserve(tat, 1000.0, rate);
            tat = Some(next);
            at.push(go);
        }
        assert_eq!(at, [1000.0, 1000.0, 1100.0, 1200.0, 1300.0]);
        // Held until 5000: the next unit goes then, not before.
        let held = hold(tat, 5000.0, rate);
        assert_eq!(reserve(Some(held), 1400.0, rate).1, 5000.0);
    }

    #[test]
    fn a_burst_passes_then_the_rate() {
        let rate = Rate {
            per_second: 5.0,
            burst: 5,
        };
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(take(tat, 0.0, rate, 1).unwrap());
        }
        let wait = take(tat, 0.0, rate, 1).unwrap_err().unwrap();
        assert_eq!(wait, Duration::from_millis(200));
        // 200 ms later one more passes, and only one.
        tat = Some(take(tat, 200.0, rate, 1).unwrap());
        assert!(take(tat, 200.0, rate, 1).is_err());
        // Idle for long, the whole burst is back (not more).
        assert!(take(tat, 10_000.0, rate, 5).is_ok());
        assert_eq!(take(tat, 10_000.0, rate, 6), Err(None));
    }
}
