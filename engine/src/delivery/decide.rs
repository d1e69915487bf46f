//! What follows an attempt: decided from how it ended, the webhook's retry
//! policy, the attempt's number and the time, by a pure function (every
//! branch is a unit test below).
//!
//! Owns: the mapping from an attempt's end to the delivery's next state.
//! Invariants: a 2xx is done; a skip is final; `410 Gone` fails the
//! delivery (the caller disables the webhook); anything else is retried on
//! the policy, honouring the receiver's `Retry-After`, until the policy
//! gives up. Nothing here has effects, so nothing may happen twice.

use crate::model::AttemptOutcome;
use crate::schedule::policy::{RetryPolicy, next_delay};
use rand::Rng;
use std::time::Duration;

/// How an attempt ended, before anything is decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Ended {
    /// The receiver answered (2xx or not).
    Answered {
        status: u16,
        /// The first bytes of its body.
        body: String,
        retry_after: Option<Duration>,
    },
    /// The plugin skipped the delivery, with its reason.
    Skipped(String),
    /// No answer: the outcome it is recorded as, and why.
    Failed(AttemptOutcome, String),
}

impl Ended {
    /// The outcome an attempt that ended so is recorded with.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            Ended::Answered { status, .. } if (200..300).contains(status) => {
                AttemptOutcome::Succeeded
            }
            Ended::Answered { .. } => AttemptOutcome::HttpError,
            Ended::Skipped(_) => AttemptOutcome::Skipped,
            Ended::Failed(outcome, _) => *outcome,
        }
    }
}

/// What the delivery does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    Succeeded,
    /// Skipped by its plugin: final, with the plugin's reason.
    Skipped(String),
    /// Pending again, due at this time; the reason is the attempt's error.
    RetryAt {
        due_ms: u64,
        reason: String,
    },
    /// Failed: the policy allows no more attempts.
    GaveUp(String),
    /// Failed: the receiver answered `410 Gone` (its webhook is disabled).
    Gone,
}

/// The reason recorded on a delivery whose receiver answered `410 Gone`.
pub const GONE: &str = "receiver answered 410 Gone; webhook disabled";

/// What follows attempt number `attempt` (1 for the first) that ended as
/// `ended` at `now_ms`.
pub fn next(
    ended: &Ended,
    policy: &RetryPolicy,
    attempt: u32,
    now_ms: u64,
    rng: &mut impl Rng,
) -> Next {
    let (reason, retry_after) = match ended {
        Ended::Answered { status, .. } if (200..300).contains(status) => return Next::Succeeded,
        Ended::Skipped(reason) => return Next::Skipped(reason.clone()),
        Ended::Answered { status: 410, .. } => return Next::Gone,
        Ended::Answered {
            status,
            retry_after,
            ..
        } => (format!("receiver answered {status}"), *retry_after),
        Ended::Failed(_, error) => (error.clone(), None),
    };
    match next_delay(policy, attempt, retry_after, rng) {
        Some(delay) => Next::RetryAt {
            due_ms: now_ms + delay.as_millis() as u64,
            reason,
        },
        None => Next::GaveUp(format!("gave up after {attempt} attempts: {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(retries: u32) -> RetryPolicy {
        serde_json::from_value(serde_json::json!({
            "strategy": "fixed", "retries": retries, "delay_ms": 1000, "jitter": false
        }))
        .unwrap()
    }

    fn answered(status: u16, retry_after: Option<Duration>) -> Ended {
        Ended::Answered {
            status,
            body: String::new(),
            retry_after,
        }
    }

    fn decide(ended: &Ended, attempt: u32) -> Next {
        next(ended, &fixed(2), attempt, 10_000, &mut rand::rng())
    }

    #[test]
    fn a_2xx_succeeds_whatever_the_attempt() {
        for status in [200, 201, 204, 299] {
            assert_eq!(decide(&answered(status, None), 3), Next::Succeeded);
            assert_eq!(answered(status, None).outcome(), AttemptOutcome::Succeeded);
        }
    }

    #[test]
    fn a_skip_is_final_with_its_reason() {
        let ended = Ended::Skipped("not for this location".into());
        assert_eq!(
            decide(&ended, 1),
            Next::Skipped("not for this location".into())
        );
        assert_eq!(ended.outcome(), AttemptOutcome::Skipped);
    }

    #[test]
    fn gone_fails_at_once() {
        assert_eq!(decide(&answered(410, None), 1), Next::Gone);
        assert_eq!(answered(410, None).outcome(), AttemptOutcome::HttpError);
    }

    #[test]
    fn other_answers_and_failures_retry_on_the_policy() {
        assert_eq!(
            decide(&answered(500, None), 1),
            Next::RetryAt {
                due_ms: 11_000,
                reason: "receiver answered 500".into()
            }
        );
        let refused = Ended::Failed(AttemptOutcome::NetworkError, "connection refused".into());
        assert_eq!(
            decide(&refused, 2),
            Next::RetryAt {
                due_ms: 11_000,
                reason: "connection refused".into()
            }
        );
        assert_eq!(refused.outcome(), AttemptOutcome::NetworkError);
    }

    #[test]
    fn retry_after_is_honoured() {
        assert_eq!(
            decide(&answered(429, Some(Duration::from_secs(30))), 1),
            Next::RetryAt {
                due_ms: 40_000,
                reason: "receiver answered 429".into()
            }
        );
    }

    #[test]
    fn the_policy_gives_up_after_its_retries() {
        assert_eq!(
            decide(&answered(503, None), 3),
            Next::GaveUp("gave up after 3 attempts: receiver answered 503".into())
        );
        let timeout = Ended::Failed(AttemptOutcome::Timeout, "timed out after 30s".into());
        assert_eq!(
            decide(&timeout, 3),
            Next::GaveUp("gave up after 3 attempts: timed out after 30s".into())
        );
    }
}
