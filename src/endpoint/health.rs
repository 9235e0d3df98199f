//! An endpoint's health: its circuit breaker, failure clock and last error, as its owner
//! persists them and as the API and the `switchyard:endpoint_failing` event show them (one
//! view, [`Health::view`], so the two cannot drift apart).
//!
//! The breaker stops hammering an endpoint that keeps failing:
//! Closed → (N consecutive failed attempts) → Open for a cool-down → HalfOpen: one probe.
//! A successful probe closes it (and resets the cool-down); a failed one opens it again with
//! the cool-down doubled, up to a ceiling. Pure state over wall-clock milliseconds so it can be
//! stored, restored by a new owner, and tested without waiting.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Breaker settings (from the node's config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts that open the breaker.
    pub threshold: u32,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// The breaker of one endpoint; `since_ms` and `open_until_ms` are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breaker {
    pub state: BreakerState,
    pub since_ms: i64,
    pub consecutive_failures: u32,
    pub cooldown_ms: u64,
    pub open_until_ms: i64,
}

/// What the breaker allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Send as usual.
    Send,
    /// Send exactly one probe (and nothing else until it ends).
    Probe,
    /// Send nothing until this unix millisecond.
    WaitUntil(i64),
}

impl Breaker {
    pub fn new(policy: &BreakerPolicy, now_ms: i64) -> Breaker {
        Breaker {
            state: BreakerState::Closed,
            since_ms: now_ms,
            consecutive_failures: 0,
            cooldown_ms: policy.cooldown_ms,
            open_until_ms: 0,
        }
    }

    /// May an attempt start now? Moves Open → HalfOpen when the cool-down has passed.
    pub fn permit(&mut self, now_ms: i64) -> Permit {
        match self.state {
            BreakerState::Closed => Permit::Send,
            BreakerState::HalfOpen => Permit::Probe,
            BreakerState::Open if now_ms >= self.open_until_ms => {
                self.state = BreakerState::HalfOpen;
                self.since_ms = now_ms;
                Permit::Probe
            }
            BreakerState::Open => Permit::WaitUntil(self.open_until_ms),
        }
    }

    /// A successful attempt. Returns true when the state changed.
    pub fn success(&mut self, policy: &BreakerPolicy, now_ms: i64) -> bool {
        let changed = self.state != BreakerState::Closed;
        self.consecutive_failures = 0;
        if changed {
            *self = Breaker::new(policy, now_ms);
        }
        changed
    }

    /// A failed attempt. Returns true when the state changed (the breaker opened).
    pub fn failure(&mut self, policy: &BreakerPolicy, now_ms: i64) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let open_for = match self.state {
            BreakerState::HalfOpen => {
                (self.cooldown_ms.saturating_mul(2)).min(policy.max_cooldown_ms)
            }
            BreakerState::Closed if self.consecutive_failures >= policy.threshold => {
                policy.cooldown_ms
            }
            _ => return false,
        };
        self.state = BreakerState::Open;
        self.since_ms = now_ms;
        self.cooldown_ms = open_for;
        self.open_until_ms = now_ms + open_for as i64;
        true
    }
}

/// Width of one bucket of the success window.
const BUCKET_MS: i64 = 5 * 60 * 1000;
/// The window the success rate covers: the last hour.
const WINDOW_MS: i64 = 3600 * 1000;

/// What the owner of an endpoint persists about its health.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub breaker: Option<Breaker>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Unix ms of the first failure since the last success (the auto-disable clock).
    pub failing_since_ms: Option<i64>,
    /// Unix ms of the last successful attempt.
    #[serde(default)]
    pub last_success_ms: Option<i64>,
    /// Attempts and successes in five-minute buckets, `[bucket start ms, attempts,
    /// successes]`, the last hour's only: what the success rate is computed from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<[i64; 3]>,
}

/// An endpoint's breaker as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    pub state: BreakerState,
    pub since: Option<String>,
    pub consecutive_failures: u32,
    /// While open or half-open: when the next probe may go.
    pub open_until: Option<String>,
}

/// An endpoint's health as the API, the console and the `switchyard:endpoint_failing` event
/// show it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    pub breaker: BreakerView,
    /// The first failure since the last success (the auto-disable clock).
    pub failing_since: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub last_success_at: Option<String>,
    /// Successful attempts over all attempts of the last hour; `null` without attempts.
    pub success_rate_1h: Option<f64>,
    /// Attempts of the last hour.
    pub attempts_1h: u64,
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(crate::delivery::rfc3339)
}

impl Health {
    /// The one shape of an endpoint's health in the API and in operational events: the
    /// breaker's times as RFC 3339 (`since`, `openUntil` while not closed), the failure clock
    /// (`failingSince`), the last error and success, and the last hour's success rate at
    /// `now_ms`.
    pub fn view(&self, policy: &BreakerPolicy, now_ms: i64) -> HealthView {
        let breaker = self
            .breaker
            .clone()
            .unwrap_or_else(|| Breaker::new(policy, 0));
        let (attempts, successes) = self
            .recent
            .iter()
            .filter(|b| b[0] + BUCKET_MS > now_ms - WINDOW_MS)
            .fold((0u64, 0u64), |(a, s), b| (a + b[1] as u64, s + b[2] as u64));
        HealthView {
            breaker: BreakerView {
                state: breaker.state,
                since: (breaker.since_ms > 0)
                    .then(|| rfc3339_ms(breaker.since_ms))
                    .flatten(),
                consecutive_failures: breaker.consecutive_failures,
                open_until: (breaker.state != BreakerState::Closed)
                    .then(|| rfc3339_ms(breaker.open_until_ms))
                    .flatten(),
            },
            failing_since: self.failing_since_ms.and_then(rfc3339_ms),
            last_error: self.last_error.clone(),
            last_error_at: self.last_error_at.clone(),
            last_success_at: self.last_success_ms.and_then(rfc3339_ms),
            success_rate_1h: (attempts > 0).then(|| successes as f64 / attempts as f64),
            attempts_1h: attempts,
        }
    }

    /// Counts an attempt at `now_ms` in the success window (and drops buckets older than it).
    pub fn count_attempt(&mut self, now_ms: i64, succeeded: bool) {
        let start = now_ms - now_ms.rem_euclid(BUCKET_MS);
        self.recent
            .retain(|b| b[0] + BUCKET_MS > now_ms - WINDOW_MS);
        match self.recent.last_mut() {
            Some(b) if b[0] == start => {
                b[1] += 1;
                b[2] += i64::from(succeeded);
            }
            _ => self.recent.push([start, 1, i64::from(succeeded)]),
        }
        if succeeded {
            self.last_success_ms = Some(now_ms);
        }
    }

    /// Whether `other` differs in what must be saved at once (breaker, errors, the failure
    /// clock, a first success); the success window and the time of the last success may wait.
    pub fn differs_in_state(&self, other: &Health) -> bool {
        self.breaker != other.breaker
            || self.last_error != other.last_error
            || self.last_error_at != other.last_error_at
            || self.failing_since_ms != other.failing_since_ms
            || self.last_success_ms.is_some() != other.last_success_ms.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: BreakerPolicy = BreakerPolicy {
        threshold: 3,
        cooldown_ms: 1000,
        max_cooldown_ms: 3000,
    };

    #[test]
    fn the_success_rate_covers_the_last_hour_only() {
        let mut h = Health::default();
        let hour = 3_600_000;
        h.count_attempt(0, false);
        h.count_attempt(1_000, true);
        let v = h.view(&P, 2_000);
        assert_eq!((v.attempts_1h, v.success_rate_1h), (2, Some(0.5)));
        assert!(v.last_success_at.is_some());
        h.count_attempt(hour + 10 * 60_000, true);
        let v = h.view(&P, hour + 10 * 60_000);
        assert_eq!(
            (v.attempts_1h, v.success_rate_1h),
            (1, Some(1.0)),
            "the first bucket has left the window"
        );
        assert!(h.recent.len() <= 13, "old buckets are dropped");
        assert_eq!(h.view(&P, 3 * hour).success_rate_1h, None);
        let mut later = h.clone();
        later.count_attempt(3 * hour, true);
        assert!(!later.differs_in_state(&h), "the window alone can wait");
        later.last_error = Some("status: 500".into());
        assert!(later.differs_in_state(&h));
    }

    #[test]
    fn opens_after_threshold_probes_after_cooldown_and_doubles() {
        let mut b = Breaker::new(&P, 0);
        assert!(!b.failure(&P, 1));
        assert!(!b.failure(&P, 2));
        assert_eq!(b.permit(2), Permit::Send);
        assert!(b.failure(&P, 3), "the third failure opens it");
        assert_eq!(b.permit(500), Permit::WaitUntil(1003));
        assert_eq!(b.permit(1003), Permit::Probe);
        assert_eq!(b.state, BreakerState::HalfOpen);
        assert!(b.failure(&P, 1100), "a failed probe reopens");
        assert_eq!((b.cooldown_ms, b.open_until_ms), (2000, 3100));
        assert_eq!(b.permit(3100), Permit::Probe);
        b.failure(&P, 3200);
        assert_eq!(b.cooldown_ms, 3000, "doubling stops at the ceiling");
        assert_eq!(b.permit(6200), Permit::Probe);
        assert!(b.success(&P, 6300));
        assert_eq!(
            (b.state, b.consecutive_failures, b.cooldown_ms),
            (BreakerState::Closed, 0, 1000)
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::new(&P, 0);
        b.failure(&P, 1);
        b.failure(&P, 2);
        assert!(!b.success(&P, 3));
        b.failure(&P, 4);
        b.failure(&P, 5);
        assert_eq!(b.state, BreakerState::Closed);
    }
}
