//! Retry timing: when the next attempt of a failed delivery is due. Pure
//! functions of the policy, the attempt number and the receiver's
//! `Retry-After`, so they are unit-tested without a clock.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Standard Webhooks' example schedule: the delays after attempts 1, 2, … (the
/// first attempt is immediate), 10 attempts in all over about three days.
pub const STANDARD_DELAYS_MS: [u64; 9] = [
    5_000,
    5 * 60_000,
    30 * 60_000,
    2 * 3_600_000,
    5 * 3_600_000,
    10 * 3_600_000,
    14 * 3_600_000,
    20 * 3_600_000,
    24 * 3_600_000,
];

/// A `Retry-After` longer than this is capped, so one receiver cannot park a
/// delivery for ever.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Upper bound on the number of retries a policy may ask for.
pub const MAX_RETRIES: u32 = 50;
const MAX_DELAY_MS: u64 = 7 * 24 * 3_600_000;

/// How a webhook retries failed deliveries. `retries` counts attempts after the
/// first one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case", deny_unknown_fields)]
pub enum RetryPolicy {
    /// Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
    Standard {
        #[serde(default = "yes")]
        jitter: bool,
    },
    /// `initial_delay_ms`, doubled each time (1 s, 2 s, 4 s, …), capped at `max_delay_ms`.
    Exponential {
        retries: u32,
        initial_delay_ms: u64,
        #[serde(default = "default_max_delay")]
        max_delay_ms: u64,
        #[serde(default = "yes")]
        jitter: bool,
    },
    /// The same delay before every retry.
    Fixed {
        retries: u32,
        delay_ms: u64,
        #[serde(default = "yes")]
        jitter: bool,
    },
    /// An explicit list of delays, one per retry.
    Schedule {
        delays_ms: Vec<u64>,
        #[serde(default = "yes")]
        jitter: bool,
    },
}

fn yes() -> bool {
    true
}

fn default_max_delay() -> u64 {
    24 * 3_600_000
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::Standard { jitter: true }
    }
}

/// A retry policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("retries must be at most {MAX_RETRIES}")]
    TooManyRetries,
    #[error("delays must be at most 7 days")]
    DelayTooLong,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let (retries, longest) = match self {
            RetryPolicy::Standard { .. } => return Ok(()),
            RetryPolicy::Exponential {
                retries,
                initial_delay_ms,
                max_delay_ms,
                ..
            } => (*retries, (*initial_delay_ms).max(*max_delay_ms)),
            RetryPolicy::Fixed {
                retries, delay_ms, ..
            } => (*retries, *delay_ms),
            RetryPolicy::Schedule { delays_ms, .. } => (
                delays_ms.len().try_into().unwrap_or(u32::MAX),
                delays_ms.iter().copied().max().unwrap_or(0),
            ),
        };
        if retries > MAX_RETRIES {
            return Err(PolicyError::TooManyRetries);
        }
        if longest > MAX_DELAY_MS {
            return Err(PolicyError::DelayTooLong);
        }
        Ok(())
    }

    /// Total attempts a delivery gets, the first included.
    pub fn max_attempts(&self) -> u32 {
        1 + match self {
            RetryPolicy::Standard { .. } => STANDARD_DELAYS_MS.len() as u32,
            RetryPolicy::Exponential { retries, .. } | RetryPolicy::Fixed { retries, .. } => {
                *retries
            }
            RetryPolicy::Schedule { delays_ms, .. } => delays_ms.len() as u32,
        }
    }

    /// The planned delay after attempt number `attempt` (1-based) failed, before
    /// jitter, or `None` when that was the last attempt.
    pub fn planned_delay(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt >= self.max_attempts() {
            return None;
        }
        let retry = (attempt - 1) as usize;
        let ms = match self {
            RetryPolicy::Standard { .. } => STANDARD_DELAYS_MS[retry],
            RetryPolicy::Exponential {
                initial_delay_ms,
                max_delay_ms,
                ..
            } => initial_delay_ms
                .saturating_mul(1u64.checked_shl(retry as u32).unwrap_or(u64::MAX))
                .min(*max_delay_ms),
            RetryPolicy::Fixed { delay_ms, .. } => *delay_ms,
            RetryPolicy::Schedule { delays_ms, .. } => delays_ms[retry],
        };
        Some(Duration::from_millis(ms))
    }

    fn jitter(&self) -> bool {
        match self {
            RetryPolicy::Standard { jitter }
            | RetryPolicy::Exponential { jitter, .. }
            | RetryPolicy::Fixed { jitter, .. }
            | RetryPolicy::Schedule { jitter, .. } => *jitter,
        }
    }
}

/// When to try again after attempt `attempt` failed: the policy's delay with up
/// to ±10 % jitter (so receivers coming back up are not hit by a thundering
/// herd), but never sooner than the receiver's `Retry-After` (capped at
/// [`MAX_RETRY_AFTER`]). `None` once the attempts are used up.
pub fn next_delay(
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Option<Duration> {
    let planned = policy.planned_delay(attempt)?;
    let jittered = if policy.jitter() && !planned.is_zero() {
        planned.mul_f64(rng.random_range(0.9..=1.1))
    } else {
        planned
    };
    Some(match retry_after {
        Some(after) => jittered.max(after.min(MAX_RETRY_AFTER)),
        None => jittered,
    })
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn standard_schedule_has_ten_attempts() {
        let p = RetryPolicy::Standard { jitter: false };
        assert_eq!(p.max_attempts(), 10);
        assert_eq!(p.planned_delay(1), Some(Duration::from_secs(5)));
        assert_eq!(p.planned_delay(2), Some(Duration::from_secs(300)));
        assert_eq!(p.planned_delay(9), Some(Duration::from_secs(24 * 3600)));
        assert_eq!(p.planned_delay(10), None);
    }

    #[test]
    fn exponential_doubles_like_the_seeds() {
        let p: RetryPolicy = serde_json::from_str(
            r#"{"strategy":"exponential","retries":3,"initial_delay_ms":1000,"jitter":false}"#,
        )
        .unwrap();
        let delays: Vec<_> = (1..=4).map(|a| p.planned_delay(a)).collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                None
            ]
        );
    }

    #[test]
    fn exponential_is_capped() {
        let p = RetryPolicy::Exponential {
            retries: 40,
            initial_delay_ms: 1000,
            max_delay_ms: 60_000,
            jitter: false,
        };
        assert_eq!(p.planned_delay(40), Some(Duration::from_secs(60)));
    }

    #[test]
    fn fixed_and_schedule() {
        let fixed = RetryPolicy::Fixed {
            retries: 5,
            delay_ms: 30_000,
            jitter: false,
        };
        assert_eq!(fixed.max_attempts(), 6);
        assert_eq!(fixed.planned_delay(5), Some(Duration::from_secs(30)));
        let sched = RetryPolicy::Schedule {
            delays_ms: vec![10, 20],
            jitter: false,
        };
        assert_eq!(sched.planned_delay(2), Some(Duration::from_millis(20)));
        assert_eq!(sched.planned_delay(3), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let p = RetryPolicy::Standard { jitter: true };
        let mut r = rng();
        for _ in 0..200 {
            let d = next_delay(&p, 2, None, &mut r).unwrap();
            assert!(
                d >= Duration::from_secs(270) && d <= Duration::from_secs(330),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped() {
        let p = RetryPolicy::Fixed {
            retries: 3,
            delay_ms: 1000,
            jitter: false,
        };
        let mut r = rng();
        assert_eq!(
            next_delay(&p, 1, Some(Duration::from_secs(30)), &mut r),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            next_delay(&p, 1, Some(Duration::from_millis(10)), &mut r),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            next_delay(&p, 1, Some(Duration::from_secs(10 * 24 * 3600)), &mut r),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            next_delay(&p, 4, Some(Duration::from_secs(1)), &mut r),
            None
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn invalid_policies_are_refused() {
        let p = RetryPolicy::Fixed {
            retries: 500,
            delay_ms: 1,
            jitter: true,
        };
        assert!(p.validate().is_err());
        let p = RetryPolicy::Schedule {
            delays_ms: vec![u64::MAX],
            jitter: true,
        };
        assert!(p.validate().is_err());
    }
}
