//! Starting attempts: which queued jobs may go now (order, ordering keys, backoff, the
//! breaker, the rate limit, `maxInFlight`), and the task that sends one.

use std::collections::HashSet;
use std::sync::Arc;

use ractor::ActorRef;
use tokio::time::Instant;

use super::{
    CLOCK, EndpointMsg, EndpointState, Prepared, UNORDERED_SCAN, instant_of_ms, now_ms, outcome,
};
use crate::deliverer::Outcome;
use crate::delivery::EntryId;
use crate::dispatch::QueuedJob;
use crate::endpoint::health::{BreakerState, Permit};
use crate::endpoint::{Endpoint, Ordering};
use crate::store::StoreError;

impl EndpointState {
    /// The rate limit allows an attempt now; otherwise the time to look again.
    fn rate_limited(&self) -> Option<Instant> {
        let (_, limiter) = self.limiter.as_ref()?;
        let not_until = limiter.check().err()?;
        crate::telemetry::rate_limit_wait(&self.ctx.node);
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&*CLOCK));
        Some(Instant::now() + wait)
    }

    /// Starts the manual retries in the queue at once: ahead of the queue's order, past the
    /// breaker and a throttle (an open breaker turns half-open: the manual attempt is its
    /// probe), within the rate limit.
    fn start_manual(
        &mut self,
        myself: &ActorRef<EndpointMsg>,
        ep: &Arc<Endpoint>,
    ) -> Option<Instant> {
        let manual: Vec<QueuedRef> = {
            let q = self.queue.lock().expect("queue lock");
            q.iter()
                .take(UNORDERED_SCAN)
                .filter(|q| q.job.manual && !self.in_flight.contains(&q.job.entry))
                .map(QueuedRef::of)
                .collect()
        };
        for q in manual {
            if let Some(at) = self.rate_limited() {
                return Some(at);
            }
            if let Some(b) = self.health.as_mut().and_then(|h| h.breaker.as_mut())
                && b.state == BreakerState::Open
            {
                b.state = BreakerState::HalfOpen;
                b.since_ms = now_ms();
            }
            self.start_attempt(myself, ep, q);
        }
        None
    }

    pub(super) fn start_ready(&mut self, myself: &ActorRef<EndpointMsg>, ep: &Arc<Endpoint>) {
        // `strict` with an ordering key is one sequence per key value: up to `maxInFlight`
        // values in flight, and a value whose delivery is in flight or in backoff holds back
        // only its own successors (`keys_held`, by a hash of the value: a collision only holds a
        // job back longer, it never reorders).
        let keyed = ep.spec.ordering == Ordering::Strict && ep.spec.ordering_key.is_some();
        let strict = ep.spec.ordering == Ordering::Strict && !keyed;
        let max = if strict {
            1
        } else {
            ep.spec.max_in_flight as usize
        };
        let mut keys_held: HashSet<u64> = HashSet::new();
        let mut earliest: Option<Instant> = self.start_manual(myself, ep);
        if let Some(until) = self.throttled_until {
            if until > Instant::now() {
                self.wake(myself, until);
                return;
            }
            self.throttled_until = None;
        }
        let limit = UNORDERED_SCAN + self.in_flight.len();
        // Jobs are copied out of the queue one at a time, as far as the scan goes: a pump that
        // stops at the head (rate limit, breaker, backoff) copies one.
        let mut at = 0;
        // `maxInFlight` counts requests at the receiver: a job whose outcome is being
        // committed holds its place in the order (and its key) but not a request slot. At most
        // `maxInFlight` outcomes wait for their commit, so a stalled store cannot let sends
        // run ahead (each would be sent again after a crash).
        while at < limit
            && self.in_flight.len().saturating_sub(self.held.len()) < max
            && self.held.len() <= max
        {
            let Some(q) = self
                .queue
                .lock()
                .expect("queue lock")
                .get(at)
                .map(|q| QueuedRef::of(q).keyed(keyed.then(|| key_hash(&q.job.key))))
            else {
                break;
            };
            at += 1;
            if q.manual && !self.in_flight.contains(&q.entry) {
                // Not started by `start_manual` (the rate limit): it goes first there.
                continue;
            }
            if let Some(k) = q.key
                && !keys_held.insert(k)
            {
                // An earlier delivery of this key value is waiting or in flight.
                continue;
            }
            if self.in_flight.contains(&q.entry) {
                if strict { break } else { continue }
            }
            if let Some(next) = q.next_attempt_ms
                && next > now_ms()
            {
                let when = instant_of_ms(next);
                earliest = Some(earliest.map_or(when, |e| e.min(when)));
                if strict { break } else { continue }
            }
            match self
                .health
                .as_mut()
                .and_then(|h| h.breaker.as_mut())
                .map(|b| b.permit(now_ms()))
            {
                Some(Permit::WaitUntil(ms)) => {
                    earliest = Some(instant_of_ms(ms));
                    break;
                }
                Some(Permit::Probe) if !self.in_flight.is_empty() => break,
                Some(Permit::Probe) => {
                    self.start_attempt(myself, ep, q);
                    break;
                }
                _ => {}
            }
            if let Some(at) = self.rate_limited() {
                earliest = Some(at);
                break;
            }
            self.start_attempt(myself, ep, q);
        }
        if let Some(at) = earliest {
            self.wake(myself, at);
        }
    }

    /// The endpoint's prepared target and keys, made again after a load or when a retired
    /// secret expires.
    fn prepared(&mut self, ep: &Endpoint) -> Arc<Prepared> {
        let now = now_ms();
        if let Some(p) = &self.prepared
            && p.keys_until_ms > now
        {
            return p.clone();
        }
        let prepared = Arc::new(Prepared {
            target: crate::deliverer::Target::of(ep, self.ctx.deliverer.guard()),
            keys: ep.signing_keys(now),
            keys_until_ms: ep
                .retired_secrets
                .iter()
                .map(|r| r.expires_at_ms)
                .filter(|&at| at > now)
                .min()
                .unwrap_or(i64::MAX),
        });
        self.prepared = Some(prepared.clone());
        prepared
    }

    fn start_attempt(&mut self, myself: &ActorRef<EndpointMsg>, ep: &Arc<Endpoint>, q: QueuedRef) {
        let Some((job, partition)) = self.queued(q.entry) else {
            return;
        };
        self.in_flight.insert(job.entry);
        let prepared = self.prepared(ep);
        let (ctx, ep, me) = (self.ctx.clone(), ep.clone(), myself.clone());
        let number = job.progress.attempts + 1;
        let entry = job.entry;
        // One sequence per endpoint: nothing else is sent before this outcome is durable, so a
        // success (whose progress needs nothing the actor keeps) goes from the attempt to the
        // committer at once, and the actor hears of attempt and commit in one message.
        let direct = ep.spec.ordering == Ordering::Strict && ep.spec.ordering_key.is_none();
        let (owned, sent_on) = (job.clone(), partition.clone());
        // One span per attempt, so every log line of it carries the ids an operator searches by.
        // The response status or error kind is recorded on it when the attempt ends.
        let span = tracing::info_span!("attempt", delivery = %job.id, endpoint = %ep.id, workspace = %job.workspace, attempt = number, status = tracing::field::Empty, error = tracing::field::Empty);
        let attempt = async move {
            let may_send = || partition.may_send();
            let outcome = match job.render_failure() {
                // Nothing to send: the attempt is the template's error.
                Some(why) => Some(Outcome::failed(
                    number,
                    crate::deliverer::TEMPLATE_ERROR,
                    why.to_string(),
                )),
                None => {
                    ctx.deliverer
                        .attempt(&prepared.target, &prepared.keys, &job, number, may_send)
                        .await
                }
            };
            let span = tracing::Span::current();
            if let Some(status) = outcome.as_ref().and_then(|o| o.status()) {
                span.record("status", status);
            }
            if let Some((kind, _)) = outcome.as_ref().and_then(|o| o.error()) {
                span.record("error", kind);
            }
            outcome
        };
        // One task per attempt; a panic in it becomes an `internal` error attempt. The attempt's
        // state machine (a few KiB) is boxed once, so spawning and finishing the task move a
        // pointer rather than copy it (those copies were ~4 % of the node's CPU).
        let attempt =
            std::panic::AssertUnwindSafe(Box::pin(tracing::Instrument::instrument(attempt, span)));
        tokio::spawn(async move {
            let outcome = match futures::FutureExt::catch_unwind(attempt).await {
                Ok(o) => o,
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "the attempt panicked".into());
                    Some(outcome::panicked_attempt(number, message))
                }
            };
            let outcome = match outcome {
                Some(o) if direct && o.succeeded() => {
                    let commit = Arc::new(crate::store::Outcome {
                        id: owned.id,
                        workspace: owned.workspace.clone(),
                        endpoint_id: owned.endpoint_id.clone(),
                        from: owned.progress.status,
                        progress: crate::dispatch::policy::succeeded(&owned.progress),
                        attempt: Some(o.record),
                    });
                    if !sent_on.commit_attempt(commit.clone(), entry, me.clone()) {
                        let _ = me.cast(EndpointMsg::AttemptCommitted {
                            entry,
                            result: Err(StoreError::StaleLease(sent_on.partition)),
                            commit,
                        });
                    }
                    return;
                }
                o => o,
            };
            let _ = me.cast(EndpointMsg::AttemptDone {
                entry,
                outcome: outcome.map(Box::new),
            });
        });
    }
}

/// What the scheduler needs of a queued job without copying it whole.
struct QueuedRef {
    entry: EntryId,
    manual: bool,
    next_attempt_ms: Option<i64>,
    /// The hash of its ordering key's value, on an endpoint ordered per key.
    key: Option<u64>,
}

impl QueuedRef {
    fn of(q: &QueuedJob) -> QueuedRef {
        QueuedRef {
            entry: q.job.entry,
            manual: q.job.manual,
            next_attempt_ms: q.job.progress.next_attempt_ms,
            key: None,
        }
    }

    fn keyed(self, key: Option<u64>) -> QueuedRef {
        QueuedRef { key, ..self }
    }
}

/// The hash an ordering key's value is held back by.
fn key_hash(key: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}
