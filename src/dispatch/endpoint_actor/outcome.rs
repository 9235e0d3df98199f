//! What happens after an attempt: the decision (`dispatch::policy`), the endpoint's health,
//! the outcome on its way to the committer, and what its commit means for the queue. Split
//! from the actor so its file stays about scheduling.
//!
//! An outcome whose commit fails is held and sent to the committer again with backoff; its
//! delivery is not sent again meanwhile (a resend happens only if the process dies first), and
//! in `strict` mode the endpoint's next delivery waits for it.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::{EndpointMsg, EndpointState, Held, now_ms};
use crate::deliverer::Outcome;
use crate::delivery::EntryId;
use crate::dispatch::policy::{decide, record_success};
use crate::endpoint::health::BreakerState;
use crate::store::StoreError;

/// The longest wait between two tries of a commit that keeps failing.
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(10);
/// How stale the saved success window of a healthy endpoint may get.
const HEALTH_SAVE_EVERY: Duration = Duration::from_secs(30);

pub(super) fn panicked_attempt(number: u32, message: String) -> Outcome {
    Outcome::failed(number, "internal", message)
}

/// What an attempt's outcome still needs once the actor has decided it: a store write.
pub(super) struct AfterAttempt {
    ep: Arc<crate::endpoint::Endpoint>,
    /// The endpoint's health moved: persist it.
    health: Option<crate::endpoint::health::Health>,
    disable: Option<String>,
}

impl EndpointState {
    /// Decides an attempt's outcome and hands it to the committer; what needs the store
    /// (a changed health, disabling the endpoint) is returned for [`Self::after_attempt`].
    pub(super) fn attempt_done(
        &mut self,
        myself: &ActorRef<EndpointMsg>,
        entry: EntryId,
        mut outcome: Outcome,
    ) -> Option<AfterAttempt> {
        let (Some((job, partition)), Some(ep)) = (self.queued(entry), self.endpoint.clone()) else {
            self.in_flight.remove(&entry);
            return None;
        };
        let mut health = self.health.clone().unwrap_or_default();
        let now = now_ms();
        let decision = decide(
            &self.ctx.policy,
            &ep,
            &outcome,
            &mut health,
            &job.progress,
            now,
        );
        outcome.record.x = decision.progress.next_attempt_ms;
        if let Some(wait) = decision.throttle {
            let until = Instant::now() + wait;
            self.throttled_until = Some(self.throttled_until.map_or(until, |t| t.max(until)));
        }
        self.observe(&outcome.record, decision.progress.status);
        let health = self.health_moved(&ep, health);
        let commit = Arc::new(crate::store::Outcome {
            id: job.id,
            workspace: job.workspace.clone(),
            endpoint_id: job.endpoint_id.clone(),
            from: job.progress.status,
            progress: decision.progress,
            attempt: Some(outcome.record),
        });
        self.held.insert(
            entry,
            Held {
                commit: commit.clone(),
                retry: Duration::from_millis(100),
                created_ms: job.id.entry.ms,
            },
        );
        if !partition.commit(commit, entry, myself.clone()) {
            // The partition is no longer owned here: its new owner sends the delivery.
            self.forget(entry);
        }
        // The request slot is free now (the job keeps its place and key until durable): an
        // endpoint that sends several at once may start the next without waiting for the
        // commit. One sequence per endpoint waits for it anyway.
        if ep.spec.ordering == crate::endpoint::Ordering::Unordered
            || ep.spec.ordering_key.is_some()
        {
            self.pump(myself);
        }
        (health.is_some() || decision.disable.is_some()).then_some(AfterAttempt {
            ep,
            health,
            disable: decision.disable,
        })
    }

    /// The store writes an outcome asked for: the endpoint's health, then disabling it.
    pub(super) async fn after_attempt(
        &mut self,
        after: AfterAttempt,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(health) = after.health
            && let Err(e) = self
                .ctx
                .store
                .save_health(&self.key.0, &self.key.1, &health)
                .await
        {
            tracing::warn!(endpoint = %after.ep.id, error = %e, "cannot save endpoint health");
        }
        if let Some(reason) = after.disable {
            self.disable(after.ep, &reason).await;
        }
        Ok(())
    }

    /// The breaker's moves (metrics, logs, the `endpoint_failing` event); the new health when
    /// it changed (to persist: a new owner resumes it).
    fn health_moved(
        &mut self,
        ep: &crate::endpoint::Endpoint,
        health: crate::endpoint::health::Health,
    ) -> Option<crate::endpoint::health::Health> {
        let open = |h: Option<&crate::endpoint::health::Health>| {
            h.and_then(|h| h.breaker.as_ref())
                .is_some_and(|b| b.state != BreakerState::Closed)
        };
        let (was_open, is_open) = (open(self.health.as_ref()), open(Some(&health)));
        if was_open != is_open {
            crate::telemetry::breaker_moved(&self.ctx.node, is_open);
            if is_open {
                tracing::warn!(workspace = %self.key.0, endpoint = %ep.id, last_error = health.last_error.as_deref().unwrap_or(""), "circuit breaker opened");
                let detail = health.view(&self.ctx.policy.breaker, now_ms());
                self.emit(
                    "switchyard:endpoint_failing",
                    ep,
                    "the circuit breaker opened",
                    Some(detail),
                );
            } else {
                tracing::info!(workspace = %self.key.0, endpoint = %ep.id, "circuit breaker closed");
            }
        }
        // Breaker, errors and a first success are saved at once; the success window and the
        // time of the last success at most every `HEALTH_SAVE_EVERY`, so a healthy endpoint
        // costs no write per delivery.
        let changed = self.health.as_ref() != Some(&health);
        let urgent = self
            .health
            .as_ref()
            .is_none_or(|h| h.differs_in_state(&health));
        let due = self
            .health_saved
            .is_none_or(|at| at.elapsed() >= HEALTH_SAVE_EVERY);
        self.health = Some(health.clone());
        if !(urgent || (changed && due)) {
            self.health_dirty |= changed;
            return None;
        }
        self.health_saved = Some(Instant::now());
        self.health_dirty = false;
        Some(health)
    }

    /// A success the attempt committed itself ([`EndpointMsg::AttemptCommitted`]): its
    /// effect on the endpoint's health, as [`Self::attempt_done`] would have applied it, then
    /// the commit's result, held and retried like any other.
    pub(super) fn attempt_committed(
        &mut self,
        myself: &ActorRef<EndpointMsg>,
        entry: EntryId,
        result: Result<(), StoreError>,
        commit: Arc<crate::store::Outcome>,
    ) -> Option<AfterAttempt> {
        let after = match (self.endpoint.clone(), commit.attempt.as_ref()) {
            (Some(ep), Some(record)) => {
                let mut health = self.health.clone().unwrap_or_default();
                record_success(&self.ctx.policy, &mut health, now_ms());
                self.observe(record, commit.progress.status);
                self.health_moved(&ep, health).map(|health| AfterAttempt {
                    ep,
                    health: Some(health),
                    disable: None,
                })
            }
            _ => None,
        };
        self.held.insert(
            entry,
            Held {
                created_ms: commit.id.entry.ms,
                commit,
                retry: Duration::from_millis(100),
            },
        );
        self.committed(myself, entry, result);
        after
    }

    /// Drops a job this node can no longer finish (its partition has moved on).
    fn forget(&mut self, entry: EntryId) {
        self.held.remove(&entry);
        self.in_flight.remove(&entry);
        self.remove(entry);
    }

    pub(super) fn committed(
        &mut self,
        myself: &ActorRef<EndpointMsg>,
        entry: EntryId,
        result: Result<(), StoreError>,
    ) {
        match result {
            Ok(()) => {
                let Some(held) = self.held.remove(&entry) else {
                    self.in_flight.remove(&entry);
                    return self.pump(myself);
                };
                self.in_flight.remove(&entry);
                let progress = held.commit.progress;
                if progress.status.is_final() {
                    self.remove(entry);
                    let since = (now_ms() - held.created_ms as i64).max(0) as u64;
                    crate::telemetry::delivery_final(
                        &self.ctx.node,
                        progress.status.as_str(),
                        (progress.status == crate::delivery::Status::Succeeded)
                            .then(|| Duration::from_millis(since)),
                    );
                } else if let Some(q) = self
                    .queue
                    .lock()
                    .expect("queue lock")
                    .iter_mut()
                    .find(|q| q.job.entry == entry)
                {
                    let job = std::sync::Arc::make_mut(&mut q.job);
                    job.progress = progress;
                    job.manual = false;
                }
                tracing::debug!(delivery = %held.commit.id, status = progress.status.as_str(), "outcome recorded");
            }
            Err(StoreError::StaleLease(p)) => {
                tracing::warn!(partition = p, endpoint = %self.key.1, "lease lost; leaving the delivery to the new owner");
                self.forget(entry);
            }
            Err(e) => {
                let Some(held) = self.held.get_mut(&entry) else {
                    self.in_flight.remove(&entry);
                    return;
                };
                if held.retry <= Duration::from_millis(100) {
                    tracing::warn!(delivery = %held.commit.id, error = %e,
                        "cannot record an outcome; holding it and retrying (the delivery is not sent again meanwhile)");
                } else {
                    tracing::debug!(delivery = %held.commit.id, error = %e, retry_in_ms = held.retry.as_millis() as u64, "still cannot record an outcome");
                }
                let wait = held.retry;
                held.retry = (held.retry * 2)
                    .min(COMMIT_RETRY_MAX)
                    .max(Duration::from_millis(100));
                myself.send_after(wait, move || EndpointMsg::Recommit(entry));
                return;
            }
        }
        self.pump(myself)
    }

    /// Sends a held outcome to the committer again.
    pub(super) fn recommit(&mut self, myself: &ActorRef<EndpointMsg>, entry: EntryId) {
        let Some(held) = self.held.get(&entry) else {
            return;
        };
        let Some((_, partition)) = self.queued(entry) else {
            self.forget(entry);
            return;
        };
        let sent = partition.commit(held.commit.clone(), entry, myself.clone());
        if !sent {
            self.forget(entry);
        }
    }
}
