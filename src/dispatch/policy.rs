//! What an attempt's outcome means for its delivery and its endpoint: the next status, when to
//! try again, the breaker, the auto-disable clock. Pure, so every rule is unit-tested.

use std::time::Duration;

use crate::deliverer::Outcome;
use crate::delivery::{Progress, Status};
use crate::endpoint::health::{Breaker, BreakerPolicy, Health};
use crate::endpoint::{Endpoint, RateLimit};

/// Node-wide settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchPolicy {
    pub breaker: BreakerPolicy,
    pub retry_after_ceiling: Duration,
    pub auto_disable_after_ms: i64,
    /// The limit of endpoints that set none.
    pub default_rate: Option<RateLimit>,
    /// How long a receiver may throttle one delivery (429, 503 with `Retry-After`) before it
    /// fails.
    pub max_throttle_ms: i64,
}

impl DispatchPolicy {
    pub fn from_config(c: &crate::config::Config) -> DispatchPolicy {
        DispatchPolicy {
            breaker: BreakerPolicy {
                threshold: c.breaker_threshold,
                cooldown_ms: c.breaker_cooldown_ms,
                max_cooldown_ms: c.breaker_max_cooldown_ms,
            },
            retry_after_ceiling: Duration::from_secs(c.retry_after_ceiling_secs),
            auto_disable_after_ms: (c.auto_disable_after_secs as i64).saturating_mul(1000),
            default_rate: c.default_rate_per_second.map(|per_second| RateLimit {
                per_second,
                burst: c.default_rate_burst,
            }),
            max_throttle_ms: (c.max_throttle_secs as i64).saturating_mul(1000),
        }
    }
}

/// The consequences of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The delivery's progress after the attempt.
    pub progress: Progress,
    /// When the next attempt may start (only while retrying).
    pub retry_in: Option<Duration>,
    /// The receiver throttles: nothing goes to the endpoint for this long.
    pub throttle: Option<Duration>,
    /// Disable the endpoint, for this reason.
    pub disable: Option<String>,
}

impl Decision {
    /// The delivery is settled with `progress` (succeeded, or failed for good); nothing more
    /// for the endpoint.
    fn settled(progress: Progress) -> Decision {
        Decision {
            progress,
            retry_in: None,
            throttle: None,
            disable: None,
        }
    }
}

/// Whether an answer throttles: 429, or 503 with `Retry-After`. Throttling is the receiver
/// asking to slow down, not failing: it pauses the whole endpoint, touches neither the breaker
/// nor `maxAttempts`, and fails a delivery only after `max_throttle_ms` of it.
fn throttles(outcome: &Outcome) -> bool {
    match outcome.status() {
        Some(429) => true,
        Some(503) => outcome.retry_after.is_some(),
        _ => false,
    }
}

/// The progress of a delivery whose attempt succeeded: it depends on nothing but `before`,
/// so the attempt of a `strict` endpoint can write it without asking the actor first (see
/// [`crate::dispatch::endpoint_actor`]).
pub fn succeeded(before: &Progress) -> Progress {
    Progress {
        attempts: before.attempts + 1,
        next_attempt_ms: None,
        status: Status::Succeeded,
        throttled_since_ms: None,
        ..*before
    }
}

/// What a successful attempt does to the endpoint's health.
pub fn record_success(policy: &DispatchPolicy, health: &mut Health, now_ms: i64) {
    health.count_attempt(now_ms, true);
    health
        .breaker
        .get_or_insert_with(|| Breaker::new(&policy.breaker, now_ms))
        .success(&policy.breaker, now_ms);
    health.failing_since_ms = None;
}

/// Applies an outcome to the endpoint's health and decides the delivery's fate. `before` is
/// the delivery's progress before this attempt.
pub fn decide(
    policy: &DispatchPolicy,
    ep: &Endpoint,
    outcome: &Outcome,
    health: &mut Health,
    before: &Progress,
    now_ms: i64,
) -> Decision {
    if outcome.succeeded() {
        record_success(policy, health, now_ms);
        return Decision::settled(succeeded(before));
    }
    let mut progress = Progress {
        attempts: before.attempts + 1,
        next_attempt_ms: None,
        ..*before
    };
    let template_failed = outcome
        .error()
        .is_some_and(|(kind, _)| kind == crate::deliverer::TEMPLATE_ERROR);
    if !template_failed {
        health.count_attempt(now_ms, false);
    }
    let breaker = health
        .breaker
        .get_or_insert_with(|| Breaker::new(&policy.breaker, now_ms));
    if template_failed {
        // The event did not fit the endpoint's template: nothing was sent, the endpoint is not
        // at fault (no breaker move) and another attempt would render the same.
        progress.failures += 1;
        progress.status = Status::Failed;
        return Decision::settled(progress);
    }
    health.last_error = outcome
        .error()
        .map(|(kind, message)| format!("{kind}: {message}"));
    health.last_error_at = Some(crate::delivery::ms_rfc3339(outcome.record.t));
    if throttles(outcome) && !outcome.final_failure {
        let since = *progress.throttled_since_ms.get_or_insert(now_ms);
        if now_ms - since >= policy.max_throttle_ms {
            progress.status = Status::Failed;
            return Decision::settled(progress);
        }
        let wait = outcome
            .retry_after
            .unwrap_or_else(|| ep.spec.retry.jittered_delay_after(progress.attempts))
            .min(policy.retry_after_ceiling);
        progress.status = Status::Retrying;
        progress.next_attempt_ms = Some(now_ms + wait.as_millis() as i64);
        return Decision {
            progress,
            retry_in: Some(wait),
            throttle: Some(wait),
            disable: None,
        };
    }
    breaker.failure(&policy.breaker, now_ms);
    progress.failures += 1;
    progress.throttled_since_ms = None;
    let failing_since = *health.failing_since_ms.get_or_insert(now_ms);
    let gone = outcome.status() == Some(410);
    let disable = if gone {
        Some("the endpoint answered 410 Gone".to_string())
    } else if now_ms - failing_since >= policy.auto_disable_after_ms {
        Some(format!(
            "every attempt failed for {} s",
            (now_ms - failing_since) / 1000
        ))
    } else {
        None
    };
    if outcome.final_failure || progress.failures >= ep.spec.retry.max_attempts {
        progress.status = Status::Failed;
        return Decision {
            progress,
            retry_in: None,
            throttle: None,
            disable,
        };
    }
    let backoff = ep.spec.retry.jittered_delay_after(progress.failures);
    let retry_in = outcome
        .retry_after
        .map_or(backoff, |ra| ra.min(policy.retry_after_ceiling));
    progress.status = Status::Retrying;
    progress.next_attempt_ms = Some(now_ms + retry_in.as_millis() as i64);
    Decision {
        progress,
        retry_in: Some(retry_in),
        throttle: None,
        disable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointSpec;
    use crate::endpoint::health::BreakerState;
    use serde_json::json;

    fn policy() -> DispatchPolicy {
        DispatchPolicy {
            breaker: BreakerPolicy {
                threshold: 2,
                cooldown_ms: 1000,
                max_cooldown_ms: 4000,
            },
            retry_after_ceiling: Duration::from_secs(60),
            auto_disable_after_ms: 10_000,
            default_rate: None,
            max_throttle_ms: 60_000,
        }
    }

    fn endpoint() -> Endpoint {
        let (spec, _) =
            EndpointSpec::from_json(&json!({"url": "https://x.io", "retry": {"maxAttempts": 3}}))
                .unwrap();
        Endpoint {
            id: "ep".into(),
            spec,
            secret: String::new(),
            retired_secrets: vec![],
            created_at: String::new(),
            updated_at: String::new(),
            compiled: Default::default(),
        }
    }

    fn outcome(n: u32, status: u16, retry_after: Option<u64>) -> Outcome {
        let ok = (200..300).contains(&status);
        let mut o = Outcome::failed(n, "status", format!("{status}"));
        o.record.st = Some(status);
        if ok {
            o.record.e = None;
        }
        o.retry_after = retry_after.map(Duration::from_secs);
        o.final_failure = status == 410;
        o
    }

    /// The progress of a delivery after `failures` counted failures.
    fn after(failures: u32) -> Progress {
        Progress {
            status: if failures == 0 {
                Status::Pending
            } else {
                Status::Retrying
            },
            attempts: failures,
            failures,
            ..Progress::NEW
        }
    }

    #[test]
    fn retries_until_max_attempts_then_fails() {
        let (p, ep, mut h) = (policy(), endpoint(), Health::default());
        let d1 = decide(&p, &ep, &outcome(1, 500, None), &mut h, &after(0), 0);
        assert_eq!(d1.progress.status, Status::Retrying);
        assert_eq!((d1.progress.attempts, d1.progress.failures), (1, 1));
        let wait = d1.retry_in.unwrap().as_secs_f64();
        assert!((9.0..=11.0).contains(&wait), "{wait}");
        assert_eq!(
            d1.progress.next_attempt_ms,
            Some(d1.retry_in.unwrap().as_millis() as i64)
        );
        assert_eq!(
            decide(&p, &ep, &outcome(3, 500, None), &mut h, &after(2), 1)
                .progress
                .status,
            Status::Failed
        );
        assert_eq!(h.breaker.as_ref().unwrap().state, BreakerState::Open);
        assert_eq!(h.last_error.as_deref(), Some("status: 500"));
    }

    #[test]
    fn retry_after_is_honoured_and_clamped() {
        let (p, ep, mut h) = (policy(), endpoint(), Health::default());
        assert_eq!(
            decide(&p, &ep, &outcome(1, 429, Some(2)), &mut h, &after(0), 0).retry_in,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            decide(&p, &ep, &outcome(1, 503, Some(999)), &mut h, &after(0), 0).retry_in,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn throttling_pauses_without_failing_until_the_throttle_time_is_up() {
        let (p, ep, mut h) = (policy(), endpoint(), Health::default());
        let mut progress = after(0);
        // Ten 429s in a row, more than maxAttempts (3): still retrying, breaker untouched.
        for n in 1..=10 {
            let d = decide(
                &p,
                &ep,
                &outcome(n, 429, Some(2)),
                &mut h,
                &progress,
                n as i64 * 2000,
            );
            assert_eq!(d.progress.status, Status::Retrying, "attempt {n}");
            assert_eq!(d.throttle, Some(Duration::from_secs(2)));
            progress = d.progress;
        }
        assert_eq!((progress.attempts, progress.failures), (10, 0));
        assert_eq!(progress.throttled_since_ms, Some(2000));
        assert_eq!(h.breaker.as_ref().unwrap().state, BreakerState::Closed);
        assert_eq!(h.breaker.as_ref().unwrap().consecutive_failures, 0);
        // A 503 without Retry-After is a failure like any other.
        let d = decide(&p, &ep, &outcome(11, 503, None), &mut h, &progress, 30_000);
        assert_eq!((d.progress.failures, d.throttle), (1, None));
        assert_eq!(d.progress.throttled_since_ms, None);
        // Past max_throttle_ms (60 s) of throttling, the delivery fails.
        let mut t = Progress {
            throttled_since_ms: Some(0),
            ..after(0)
        };
        t.attempts = 5;
        let d = decide(&p, &ep, &outcome(6, 429, Some(2)), &mut h, &t, 60_000);
        assert_eq!(d.progress.status, Status::Failed);
    }

    #[test]
    fn gone_fails_and_disables_and_a_long_failure_disables() {
        let (p, ep, mut h) = (policy(), endpoint(), Health::default());
        let d = decide(&p, &ep, &outcome(1, 410, None), &mut h, &after(0), 0);
        assert_eq!(d.progress.status, Status::Failed);
        assert!(d.disable.is_some());
        let mut h = Health::default();
        assert!(
            decide(&p, &ep, &outcome(1, 500, None), &mut h, &after(0), 0)
                .disable
                .is_none()
        );
        assert!(
            decide(&p, &ep, &outcome(2, 500, None), &mut h, &after(1), 9_999)
                .disable
                .is_none()
        );
        assert!(
            decide(&p, &ep, &outcome(1, 500, None), &mut h, &after(0), 10_000)
                .disable
                .is_some()
        );
        decide(&p, &ep, &outcome(1, 200, None), &mut h, &after(0), 10_001);
        assert_eq!(h.failing_since_ms, None, "a success clears the clock");
    }
}
