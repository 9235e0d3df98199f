//! The EndpointActor: everything about one endpoint, owned by one actor on one node.
//!
//! It takes jobs from its [`EndpointQueue`] in order, loads each delivery from the store,
//! waits for the delivery's next-attempt time and the endpoint's rate limit, and hands the POST
//! to a task so the mailbox stays free while the request is in flight. In `strict` mode only
//! the head of the queue is ever in flight, retries included, so delivery N+1 is not sent
//! before delivery N reached its final outcome; `unordered` sends up to `maxInFlight` at once
//! and a delivery in backoff does not hold the others back.
//!
//! Because exactly one node owns a partition and so this endpoint, the `governor` limiter here
//! is the cluster-wide limit without any distributed coordination.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

mod signals;

use super::policy::decide;
use super::router::RouterMsg;
use super::{DispatchContext, EndpointKey, EndpointQueue};
use crate::deliverer::Outcome;
use crate::delivery::{AttemptError, Delivery, Job, Status, now_rfc3339, rfc3339};
use crate::endpoint::health::Health;
use crate::endpoint::health::{BreakerState, Permit};
use crate::endpoint::{Endpoint, Ordering, RateLimit};

/// Queued jobs an unordered endpoint looks through for one it may start.
const UNORDERED_SCAN: usize = 1024;
/// Queued jobs a strict endpoint looks through per pump: the head, and duplicates behind it
/// that are already final (after a crash, a handoff or a recreated consumer group).
const STRICT_SCAN: usize = 64;
/// How old an endpoint actor's copy of its endpoint may get, without a change message, before
/// its next pump re-reads it (a missed pub/sub message cannot leave it stale for longer).
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Wait before retrying after the store could not be read or written.
const STORE_RETRY: Duration = Duration::from_secs(1);

pub struct EndpointActor;

/// Whether a queued job's delivery is ready to attempt.
enum Loaded {
    Ready,
    Dropped,
    Retry,
}

pub struct EndpointArgs {
    pub ctx: Arc<DispatchContext>,
    pub key: EndpointKey,
    pub queue: EndpointQueue,
    pub router: ActorRef<RouterMsg>,
}

pub enum EndpointMsg {
    /// Look at the queue and start what may start.
    Pump,
    /// The endpoint changed in the store.
    Reload,
    /// An attempt finished.
    AttemptDone {
        entry_id: String,
        outcome: Box<Outcome>,
    },
    /// The idle timer fired.
    IdleCheck,
    /// The node is stopping: start nothing new; answer once no attempt is in flight.
    Drain(tokio::sync::oneshot::Sender<()>),
}

pub struct EndpointState {
    ctx: Arc<DispatchContext>,
    key: EndpointKey,
    queue: EndpointQueue,
    router: ActorRef<RouterMsg>,
    /// `None` once the endpoint is deleted: its deliveries then fail.
    endpoint: Option<Endpoint>,
    /// Whether `endpoint` was read from the store at least once (`None` means deleted only then).
    endpoint_known: bool,
    /// Breaker and failure clock, persisted on every change so a new owner resumes them.
    health: Option<Health>,
    limiter: Option<(RateLimit, DefaultDirectRateLimiter)>,
    /// Deliveries of queued jobs, by stream entry id, loaded when they near the head.
    loaded: HashMap<String, Delivery>,
    in_flight: HashSet<String>,
    /// Set by `Drain`: the waiter to tell when the last in-flight attempt is recorded.
    draining: Option<Option<tokio::sync::oneshot::Sender<()>>>,
    wake_at: Option<Instant>,
    idle_timer: bool,
    /// When `endpoint` was last read from the store.
    loaded_at: Option<Instant>,
}

/// The limiters' clock, made once: `DefaultClock::default()` calibrates a TSC clock (CPUID
/// and a timing loop), which cost a fifth of a busy node's CPU when made per check.
static CLOCK: std::sync::LazyLock<governor::clock::DefaultClock> =
    std::sync::LazyLock::new(governor::clock::DefaultClock::default);

fn limiter_for(rl: RateLimit) -> Option<(RateLimit, DefaultDirectRateLimiter)> {
    let per_second = NonZeroU32::new(rl.per_second)?;
    let burst = NonZeroU32::new(rl.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::per_second(per_second).allow_burst(burst);
    Some((rl, RateLimiter::direct_with_clock(quota, CLOCK.clone())))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn instant_of(rfc: &str) -> Option<Instant> {
    let when = DateTime::parse_from_rfc3339(rfc).ok()?.with_timezone(&Utc);
    let wait = (when - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    Some(Instant::now() + wait)
}

impl EndpointState {
    async fn load_endpoint(&mut self) -> Result<(), ActorProcessingErr> {
        let ep = self.ctx.store.endpoint(&self.key.0, &self.key.1).await?;
        if self.health.is_none() {
            self.health = Some(self.ctx.store.health(&self.key.0, &self.key.1).await?);
        }
        // A PATCHed limit takes effect now; an unchanged one keeps its state.
        let rate = ep
            .as_ref()
            .and_then(|e| e.spec.rate_limit)
            .or(self.ctx.policy.default_rate);
        if rate != self.limiter.as_ref().map(|(r, _)| *r) {
            self.limiter = rate.and_then(limiter_for);
        }
        self.endpoint = ep;
        self.endpoint_known = true;
        self.loaded_at = Some(Instant::now());
        Ok(())
    }

    /// How long an empty actor waits before asking to stop: the configured idle time, or longer
    /// if its rate limit needs it. A successor starts with a full token bucket, so the actor
    /// stays until its own bucket has refilled (`burst / per_second`); stopping earlier would
    /// let the successor exceed the limit.
    fn idle_time(&self) -> Duration {
        let refill = self.limiter.as_ref().map_or(Duration::ZERO, |(rl, _)| {
            Duration::from_secs_f64(f64::from(rl.burst.max(1)) / f64::from(rl.per_second.max(1)))
        });
        self.ctx.idle.max(refill)
    }

    fn wake(&mut self, myself: &ActorRef<EndpointMsg>, at: Instant) {
        if self.wake_at.is_some_and(|w| w <= at && w > Instant::now()) {
            return;
        }
        self.wake_at = Some(at);
        myself.send_after(at.saturating_duration_since(Instant::now()), || {
            EndpointMsg::Pump
        });
    }

    fn remove(&mut self, entry_id: &str) {
        self.queue
            .lock()
            .expect("queue lock")
            .retain(|q| q.job.entry_id != entry_id);
        self.loaded.remove(entry_id);
    }

    async fn pump(&mut self, myself: &ActorRef<EndpointMsg>) -> Result<(), ActorProcessingErr> {
        if let Some(waiter) = &mut self.draining {
            if self.in_flight.is_empty()
                && let Some(done) = waiter.take()
            {
                let _ = done.send(());
            }
            return Ok(());
        }
        if !self.endpoint_known {
            return Ok(());
        }
        let Some(ep) = self.endpoint.clone() else {
            return self.fail_all_for_deleted_endpoint().await;
        };
        if ep.spec.enabled {
            self.start_ready(myself, &ep).await;
        }
        let empty = self.queue.lock().expect("queue lock").is_empty();
        if empty && self.in_flight.is_empty() && !self.idle_timer {
            self.idle_timer = true;
            myself.send_after(self.idle_time(), || EndpointMsg::IdleCheck);
        }
        Ok(())
    }

    /// Makes sure the delivery of `job` is loaded. `Dropped` when the job was acknowledged
    /// here because its delivery is gone or already final (a duplicate after a crash or a
    /// handoff); `Retry` when the store could not be read.
    async fn ensure_loaded(&mut self, job: &Job) -> Loaded {
        if !self.loaded.contains_key(&job.entry_id) {
            match self.ctx.store.job_delivery(job).await {
                Ok(Some(d)) => {
                    self.loaded.insert(job.entry_id.clone(), d);
                }
                Ok(None) => {
                    tracing::warn!(delivery = %job.delivery_id, "job without a delivery record; acknowledging it");
                    if self.ctx.store.ack(job).await.is_ok() {
                        self.remove(&job.entry_id);
                        return Loaded::Dropped;
                    }
                    return Loaded::Retry;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load a delivery; retrying");
                    return Loaded::Retry;
                }
            }
        }
        if self.loaded[&job.entry_id].status.is_final() {
            // Already finished (a duplicate job after a crash or handoff): just acknowledge.
            if self.ctx.store.ack(job).await.is_ok() {
                self.remove(&job.entry_id);
                return Loaded::Dropped;
            }
            return Loaded::Retry;
        }
        Loaded::Ready
    }

    /// The rate limit allows an attempt now; otherwise the time to look again.
    fn rate_limited(&self) -> Option<Instant> {
        let (_, limiter) = self.limiter.as_ref()?;
        let not_until = limiter.check().err()?;
        crate::telemetry::rate_limit_wait(&self.ctx.node);
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&*CLOCK));
        Some(Instant::now() + wait)
    }

    /// Starts the manual retries in the queue at once: ahead of the queue's order, past the
    /// breaker (an open breaker turns half-open: the manual attempt is its probe), within the
    /// rate limit.
    async fn start_manual(
        &mut self,
        myself: &ActorRef<EndpointMsg>,
        ep: &Endpoint,
    ) -> Option<Instant> {
        let manual: Vec<Job> = {
            let q = self.queue.lock().expect("queue lock");
            q.iter()
                .take(UNORDERED_SCAN)
                .filter(|q| q.job.manual && !self.in_flight.contains(&q.job.entry_id))
                .map(|q| q.job.clone())
                .collect()
        };
        for job in manual {
            match self.ensure_loaded(&job).await {
                Loaded::Ready => {}
                Loaded::Dropped => continue,
                Loaded::Retry => return Some(Instant::now() + STORE_RETRY),
            }
            if let Some(at) = self.rate_limited() {
                return Some(at);
            }
            if let Some(b) = self.health.as_mut().and_then(|h| h.breaker.as_mut())
                && b.state == BreakerState::Open
            {
                b.state = BreakerState::HalfOpen;
                b.since_ms = now_ms();
            }
            self.start_attempt(myself, ep, &job);
        }
        None
    }

    async fn start_ready(&mut self, myself: &ActorRef<EndpointMsg>, ep: &Endpoint) {
        let strict = ep.spec.ordering == Ordering::Strict;
        let max = if strict {
            1
        } else {
            ep.spec.max_in_flight as usize
        };
        let mut earliest: Option<Instant> = self.start_manual(myself, ep).await;
        // Strict mode looks past the head only to drop jobs that are already final.
        let scan = if strict { STRICT_SCAN } else { UNORDERED_SCAN };
        let limit = scan + self.in_flight.len();
        let (mut scanned, mut dropped) = (0, 0);
        // Jobs are copied out of the queue one at a time, as far as the scan goes: a pump that
        // stops at the head (rate limit, breaker, backoff) copies one. The router only appends
        // and only this actor removes, so `at` moves on except past a job removed here.
        let mut at = 0;
        while scanned < limit && self.in_flight.len() < max {
            let Some(job) = self
                .queue
                .lock()
                .expect("queue lock")
                .get(at)
                .map(|q| q.job.clone())
            else {
                break;
            };
            scanned += 1;
            at += 1;
            if job.manual && !self.in_flight.contains(&job.entry_id) {
                // Not started by `start_manual` (rate limit or store): it goes first there.
                continue;
            }
            if self.in_flight.contains(&job.entry_id) {
                if strict { break } else { continue }
            }
            match self.ensure_loaded(&job).await {
                Loaded::Ready => {}
                Loaded::Dropped => {
                    dropped += 1;
                    at -= 1;
                    continue;
                }
                Loaded::Retry => {
                    earliest = Some(Instant::now() + STORE_RETRY);
                    break;
                }
            }
            let d = &self.loaded[&job.entry_id];
            if let Some(at) = d.next_attempt_at.as_deref().and_then(instant_of)
                && at > Instant::now()
            {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
                if strict { break } else { continue }
            }
            match self
                .health
                .as_mut()
                .and_then(|h| h.breaker.as_mut())
                .map(|b| b.permit(now_ms()))
            {
                Some(Permit::WaitUntil(ms)) => {
                    earliest =
                        Some(Instant::now() + Duration::from_millis((ms - now_ms()).max(0) as u64));
                    break;
                }
                Some(Permit::Probe) if !self.in_flight.is_empty() => break,
                Some(Permit::Probe) => {
                    self.start_attempt(myself, ep, &job);
                    break;
                }
                _ => {}
            }
            if let Some(at) = self.rate_limited() {
                earliest = Some(at);
                break;
            }
            self.start_attempt(myself, ep, &job);
        }
        if let Some(at) = earliest {
            self.wake(myself, at);
        }
        // The whole look-ahead was finished duplicates: look again at what follows them.
        if dropped > 0 && dropped == scanned {
            let _ = myself.cast(EndpointMsg::Pump);
        }
    }

    fn start_attempt(&mut self, myself: &ActorRef<EndpointMsg>, ep: &Endpoint, job: &Job) {
        let d = self.loaded[&job.entry_id].clone();
        self.in_flight.insert(job.entry_id.clone());
        let keys = ep.signing_keys(now_ms());
        let (ctx, ep, me, entry_id) = (
            self.ctx.clone(),
            ep.clone(),
            myself.clone(),
            job.entry_id.clone(),
        );
        let number = d.attempt_count + 1;
        // One span per attempt, so every log line of it carries the ids an operator searches by.
        // The response status or error kind is recorded on it when the attempt ends.
        let span = tracing::info_span!("attempt", delivery = %d.id, endpoint = %ep.id, workspace = %job.workspace, attempt = number, status = tracing::field::Empty, error = tracing::field::Empty);
        tokio::spawn(async move {
            let attempt = async move {
                let outcome = ctx.deliverer.attempt(&ep, &keys, &d, number).await;
                let span = tracing::Span::current();
                if let Some(response) = &outcome.attempt.response {
                    span.record("status", response.status);
                }
                if let Some(error) = &outcome.attempt.error {
                    span.record("error", error.kind.as_str());
                }
                outcome
            };
            let run = tokio::spawn(tracing::Instrument::instrument(attempt, span));
            let outcome = match run.await {
                Ok(o) => o,
                Err(e) => panicked_attempt(number, e.to_string()),
            };
            let _ = me.cast(EndpointMsg::AttemptDone {
                entry_id,
                outcome: Box::new(outcome),
            });
        });
    }

    async fn attempt_done(
        &mut self,
        myself: &ActorRef<EndpointMsg>,
        entry_id: String,
        mut outcome: Outcome,
    ) -> Result<(), ActorProcessingErr> {
        self.in_flight.remove(&entry_id);
        let job = self
            .queue
            .lock()
            .expect("queue lock")
            .iter()
            .find(|q| q.job.entry_id == entry_id)
            .map(|q| q.job.clone());
        let (Some(job), Some(ep), Some(from)) = (
            job,
            self.endpoint.clone(),
            self.loaded.get(&entry_id).map(|d| d.status),
        ) else {
            return Ok(());
        };
        let mut health = self.health.clone().unwrap_or_default();
        let decision = decide(&self.ctx.policy, &ep, &outcome, &mut health, now_ms());
        if let Some(wait) = decision.retry_in {
            let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            outcome.attempt.next_attempt_at = Some(rfc3339(next));
        }
        let status = decision.status;
        let recorded = self
            .ctx
            .store
            .record_attempt(&job, &outcome.attempt, from, status)
            .await;
        if let Err(crate::store::StoreError::StaleLease(p)) = recorded {
            // The partition has passed to another node: its owner will send this delivery.
            tracing::warn!(delivery = %job.delivery_id, partition = p, "lease lost; leaving the delivery to the new owner");
            self.remove(&entry_id);
            return Ok(());
        }
        if let Err(e) = recorded {
            // The attempt happened but its record did not land: forget the loaded state so the
            // delivery is re-read and re-attempted (at-least-once) once the store is back.
            tracing::error!(delivery = %job.delivery_id, error = %e, "cannot record an attempt");
            self.loaded.remove(&entry_id);
            self.wake(myself, Instant::now() + STORE_RETRY);
            return Ok(());
        }
        self.observe(&outcome, status, from);
        let was_open = self
            .health
            .as_ref()
            .and_then(|h| h.breaker.as_ref())
            .is_some_and(|b| b.state != BreakerState::Closed);
        let is_open = health
            .breaker
            .as_ref()
            .is_some_and(|b| b.state != BreakerState::Closed);
        if was_open != is_open {
            crate::telemetry::breaker_moved(&self.ctx.node, is_open);
            if is_open {
                tracing::warn!(workspace = %self.key.0, endpoint = %ep.id, last_error = health.last_error.as_deref().unwrap_or(""), "circuit breaker opened");
            } else {
                tracing::info!(workspace = %self.key.0, endpoint = %ep.id, "circuit breaker closed");
            }
        }
        if is_open && !was_open {
            let detail = health.view(&self.ctx.policy.breaker);
            self.emit(
                "switchyard:endpoint_failing",
                &ep,
                "the circuit breaker opened",
                detail,
            );
        }
        if self.health.as_ref() != Some(&health) {
            if let Err(e) = self
                .ctx
                .store
                .save_health(&self.key.0, &self.key.1, &health)
                .await
            {
                tracing::warn!(endpoint = %ep.id, error = %e, "cannot save endpoint health");
            }
            self.health = Some(health);
        }
        tracing::debug!(delivery = %job.delivery_id, attempt = outcome.attempt.attempt, status = status.as_str(), "attempt recorded");
        if status.is_final() {
            self.remove(&entry_id);
        } else if let Some(d) = self.loaded.get_mut(&entry_id) {
            d.status = status;
            d.attempt_count = outcome.attempt.attempt;
            d.next_attempt_at = outcome.attempt.next_attempt_at.clone();
        }
        if let Some(reason) = decision.disable {
            self.disable(ep, &reason).await;
        }
        self.pump(myself).await
    }

    async fn fail_all_for_deleted_endpoint(&mut self) -> Result<(), ActorProcessingErr> {
        let jobs: Vec<Job> = {
            let q = self.queue.lock().expect("queue lock");
            q.iter()
                .filter(|q| !self.in_flight.contains(&q.job.entry_id))
                .map(|q| q.job.clone())
                .collect()
        };
        for job in jobs {
            let from = self
                .loaded
                .get(&job.entry_id)
                .map_or(Status::Pending, |d| d.status);
            self.ctx.store.fail_without_attempt(&job, from).await?;
            self.remove(&job.entry_id);
        }
        Ok(())
    }
}

fn panicked_attempt(number: u32, message: String) -> Outcome {
    Outcome {
        attempt: crate::delivery::Attempt {
            attempt: number,
            started_at: now_rfc3339(),
            duration_ms: 0,
            request: crate::delivery::AttemptRequest {
                url: String::new(),
                headers: Default::default(),
                body: None,
            },
            response: None,
            error: Some(AttemptError {
                kind: "internal".into(),
                message,
            }),
            next_attempt_at: None,
        },
        retry_after: None,
        final_failure: false,
    }
}

impl Actor for EndpointActor {
    type Msg = EndpointMsg;
    type State = EndpointState;
    type Arguments = EndpointArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<EndpointMsg>,
        args: EndpointArgs,
    ) -> Result<EndpointState, ActorProcessingErr> {
        let state = EndpointState {
            ctx: args.ctx,
            key: args.key,
            queue: args.queue,
            router: args.router,
            endpoint: None,
            endpoint_known: false,
            health: None,
            limiter: None,
            loaded: HashMap::new(),
            in_flight: HashSet::new(),
            draining: None,
            wake_at: None,
            idle_timer: false,
            loaded_at: None,
        };
        // Loading happens in the mailbox, so a store outage delays the actor but cannot fail it.
        // Changes arrive by message (and pub/sub between nodes); a pump re-reads an endpoint
        // older than RELOAD_EVERY, which bounds how long a missed message can leave the actor on
        // an old configuration (no timer per actor: at 100k endpoints those add up).
        myself.cast(EndpointMsg::Reload)?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<EndpointMsg>,
        msg: EndpointMsg,
        state: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: an idle actor's task then holds a pointer, not the few KiB of state machine
        // of a pump and a store round trip (kept by every one of 100k actors otherwise).
        Box::pin(state.on_message(myself, msg)).await
    }
}

impl EndpointState {
    async fn on_message(
        &mut self,
        myself: ActorRef<EndpointMsg>,
        msg: EndpointMsg,
    ) -> Result<(), ActorProcessingErr> {
        let state = self;
        match msg {
            EndpointMsg::Pump => {
                if state.wake_at.is_some_and(|w| w <= Instant::now()) {
                    state.wake_at = None;
                }
                let stale = state.loaded_at.is_some_and(|t| t.elapsed() > RELOAD_EVERY);
                if stale && let Err(e) = state.load_endpoint().await {
                    tracing::warn!(error = %e, "cannot reload endpoint; keeping the last copy");
                }
                state.pump(&myself).await?;
            }
            EndpointMsg::Reload => {
                if let Err(e) = state.load_endpoint().await {
                    tracing::warn!(error = %e, "cannot reload endpoint; retrying");
                    myself.send_after(STORE_RETRY, || EndpointMsg::Reload);
                    return Ok(());
                }
                state.pump(&myself).await?;
            }
            EndpointMsg::AttemptDone { entry_id, outcome } => {
                state.attempt_done(&myself, entry_id, *outcome).await?
            }
            EndpointMsg::Drain(done) => {
                if state.in_flight.is_empty() {
                    let _ = done.send(());
                    state.draining = Some(None);
                } else {
                    state.draining = Some(Some(done));
                }
            }
            EndpointMsg::IdleCheck => {
                state.idle_timer = false;
                let empty = state.queue.lock().expect("queue lock").is_empty();
                if empty && state.in_flight.is_empty() {
                    let _ = state
                        .router
                        .cast(RouterMsg::Idle(state.key.clone(), myself.get_id()));
                }
            }
        }
        Ok(())
    }
}
