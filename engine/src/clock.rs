//! Wall-clock helpers: Unix milliseconds and their RFC 3339 form, and the
//! [`Clock`] the dispatcher and its attempts read.
//!
//! Invariant: one [`Clock`] is read for every time a delivery's schedule
//! depends on (claims, leases, due times), so a test that pauses tokio's
//! clock moves all of them together.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-22T21:51:37.123Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Where Unix milliseconds come from.
#[derive(Clone, Copy, Debug, Default)]
pub enum Clock {
    /// The system's wall clock: what the engine runs on.
    #[default]
    Wall,
    /// The wall time at `anchor`, moved on by tokio's clock since then:
    /// under a paused runtime (`start_paused`), time passes only as tokio
    /// advances it, so a test of the schedule waits for nothing real.
    Tokio {
        anchor: tokio::time::Instant,
        anchor_ms: u64,
    },
}

impl Clock {
    /// A clock that follows tokio's, from the wall time now.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            anchor: tokio::time::Instant::now(),
            anchor_ms: now_ms(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Wall => now_ms(),
            Clock::Tokio { anchor, anchor_ms } => anchor_ms + anchor.elapsed().as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;
    use std::time::Duration;

    #[test]
    fn formats_with_millis() {
        assert_eq!(
            super::rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_tokio_time() {
        let clock = Clock::tokio();
        let start = clock.now_ms();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.now_ms(), start, "real time does not move it");
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now_ms(), start + 90_000);
    }
}
