//! An endpoint's health: its circuit breaker, failure clock and last error, as its owner
//! persists them and as the API and the `switchyard:endpoint_failing` event show them (one
//! view, [`Health::view`], so the two cannot drift apart).
//!
//! The breaker stops hammering an endpoint that keeps failing:
//! Closed → (N consecutive failed attempts) → Open for a cool-down → HalfOpen: one probe.
//! A successful probe closes it (and resets the cool-down); a failed one opens it again with
//! the cool-down doubled, up to a ceiling. Pure state over wall-clock milliseconds so it can be
//! stored, restored by a new owner, and tested without waiting.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Breaker settings (from the node's config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts that open the breaker.
    pub threshold: u32,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// What the owner of an endpoint persists about its health.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub breaker: Option<Breaker>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Unix ms of the first failure since the last success (the auto-disable clock).
    pub failing_since_ms: Option<i64>,
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(crate::delivery::rfc3339)
}

impl Health {
    /// The one shape of an endpoint's health in the API and in operational events: the
    /// breaker's times as RFC 3339 (`since`, `openUntil` while not closed), the failure clock
    /// (`failingSince`), the last error and when it happened.
    pub fn view(&self, policy: &BreakerPolicy) -> Value {
        let breaker = self
            .breaker
            .clone()
            .unwrap_or_else(|| Breaker::new(policy, 0));
        json!({
            "breaker": {
                "state": breaker.state,
                "since": (breaker.since_ms > 0).then(|| rfc3339_ms(breaker.since_ms)).flatten(),
                "consecutiveFailures": breaker.consecutive_failures,
                "openUntil": (breaker.state != BreakerState::Closed)
                    .then(|| rfc3339_ms(breaker.open_until_ms))
                    .flatten(),
            },
            "failingSince": self.failing_since_ms.and_then(rfc3339_ms),
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
        })
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
