//! The EndpointActor: everything about one endpoint, owned by one actor on one node.
//!
//! It takes jobs from its [`EndpointQueue`] in order (each job carries its delivery's body and
//! progress: nothing is read from the store per delivery), waits for the delivery's
//! next-attempt time, the endpoint's throttle, breaker and rate limit, and hands the POST to a
//! task so the mailbox stays free while the request is in flight. The outcome goes to the
//! partition's committer; the job stays in flight until the commit is durable. In `strict`
//! mode only the head of the queue is ever in flight, so delivery N+1 is sent only after
//! delivery N's final outcome is on disk — a receiver that applies webhooks in arrival order
//! without deduplicating sees them in order, crashes included (only the head may repeat).
//! With an `orderingKey`, `strict` is one such sequence per key value (up to `maxInFlight`
//! values in flight at once; a value in backoff holds back only its own successors).
//! `unordered` sends up to `maxInFlight` at once and a delivery in backoff does not hold the
//! others back.
//!
//! Because exactly one node owns a partition and so this endpoint, the `governor` limiter here
//! is the cluster-wide limit without any distributed coordination.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

mod outcome;
mod signals;
mod start;

use super::router::RouterMsg;
use super::{DispatchContext, EndpointKey, EndpointQueue};
use crate::deliverer::Outcome;
use crate::delivery::{EntryId, Job};
use crate::endpoint::health::Health;
use crate::endpoint::{Endpoint, RateLimit};
use crate::store::StoreError;

/// Queued jobs an unordered endpoint looks through for one it may start.
const UNORDERED_SCAN: usize = 1024;
/// How old an endpoint actor's copy of its endpoint may get, without a change message, before
/// its next pump re-reads it (a missed pub/sub message cannot leave it stale for longer).
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Wait before retrying after the store could not be read.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Wait before looking again when the partition's lease could not be confirmed at a send.
const LEASE_RETRY: Duration = Duration::from_millis(200);

pub struct EndpointActor;

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
    /// An attempt finished (`None`: it was not sent, the lease could not be confirmed).
    AttemptDone {
        entry: EntryId,
        outcome: Option<Box<Outcome>>,
    },
    /// The partition's committer wrote (or could not write) an outcome.
    Committed {
        entry: EntryId,
        result: Result<(), StoreError>,
    },
    /// A `strict` endpoint's attempt succeeded and wrote its outcome itself (no `AttemptDone`
    /// first: a success's progress needs nothing the actor keeps); what the commit did.
    AttemptCommitted {
        entry: EntryId,
        result: Result<(), StoreError>,
        commit: Arc<crate::store::Outcome>,
    },
    /// Send a held outcome to the committer again.
    Recommit(EntryId),
    /// The idle timer fired.
    IdleCheck,
    /// The node is stopping: start nothing new; answer once no attempt is in flight.
    Drain(tokio::sync::oneshot::Sender<()>),
}

/// An outcome on its way to the store, kept until it is durable.
struct Held {
    commit: Arc<crate::store::Outcome>,
    /// The wait before the next try, after a failed commit.
    retry: Duration,
    /// The delivery's creation (unix ms) and whether the attempt was a manual retry, for the
    /// metrics of the final outcome.
    created_ms: u64,
}

pub struct EndpointState {
    ctx: Arc<DispatchContext>,
    key: EndpointKey,
    queue: EndpointQueue,
    router: ActorRef<RouterMsg>,
    /// `None` once the endpoint is deleted: its deliveries then fail.
    endpoint: Option<Arc<Endpoint>>,
    /// Whether `endpoint` was read from the store at least once (`None` means deleted only then).
    endpoint_known: bool,
    /// Breaker and failure clock, persisted on every change so a new owner resumes them
    /// (the success window at most every `HEALTH_SAVE_EVERY`).
    health: Option<Health>,
    /// When `health` was last saved, and whether it changed since (saved when the actor
    /// goes idle, so a burst's last successes do not wait for the next outcome).
    health_saved: Option<Instant>,
    health_dirty: bool,
    limiter: Option<(RateLimit, DefaultDirectRateLimiter)>,
    /// Jobs (by entry) being sent or whose outcome is being committed.
    in_flight: HashSet<EntryId>,
    /// Outcomes sent to the committer and not yet durable.
    held: HashMap<EntryId, Held>,
    /// The receiver throttles (429): nothing is sent before this.
    throttled_until: Option<Instant>,
    /// Set by `Drain`: the waiter to tell when the last in-flight attempt is recorded.
    draining: Option<Option<tokio::sync::oneshot::Sender<()>>>,
    wake_at: Option<Instant>,
    idle_timer: bool,
    /// When `endpoint` was last read from the store.
    loaded_at: Option<Instant>,
    /// What every attempt to `endpoint` shares, made at its first attempt after a load.
    prepared: Option<Arc<Prepared>>,
}

/// The endpoint's request target and signing keys, prepared once (not per attempt).
struct Prepared {
    target: Result<crate::deliverer::Target, crate::delivery::AttemptError>,
    keys: Vec<crate::signing::SigningKey>,
    /// When a retired secret stops signing (the keys are made again then).
    keys_until_ms: i64,
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

/// The moment of a unix-ms time on the monotonic clock.
fn instant_of_ms(ms: i64) -> Instant {
    let wait = (ms - now_ms()).max(0) as u64;
    Instant::now() + Duration::from_millis(wait)
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
        self.endpoint = ep.map(Arc::new);
        self.prepared = None;
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

    /// Removes a job from the queue (its permit goes with it).
    fn remove(&mut self, entry: EntryId) {
        let mut queue = self.queue.lock().expect("queue lock");
        if let Some(at) = queue.iter().position(|q| q.job.entry == entry) {
            queue.remove(at);
        }
    }

    /// The queued job of `entry`, with its partition.
    fn queued(&self, entry: EntryId) -> Option<(Arc<Job>, Arc<super::PartitionHandle>)> {
        self.queue
            .lock()
            .expect("queue lock")
            .iter()
            .find(|q| q.job.entry == entry)
            .map(|q| (q.job.clone(), q.partition.clone()))
    }

    fn pump(&mut self, myself: &ActorRef<EndpointMsg>) {
        if let Some(waiter) = &mut self.draining {
            if self.in_flight.is_empty()
                && let Some(done) = waiter.take()
            {
                let _ = done.send(());
            }
            return;
        }
        if !self.endpoint_known {
            return;
        }
        let Some(ep) = self.endpoint.clone() else {
            self.fail_all_for_deleted_endpoint(myself);
            return;
        };
        if ep.spec.enabled {
            self.start_ready(myself, &ep);
        }
        let empty = self.queue.lock().expect("queue lock").is_empty();
        if empty && self.in_flight.is_empty() && !self.idle_timer {
            self.idle_timer = true;
            myself.send_after(self.idle_time(), || EndpointMsg::IdleCheck);
        }
    }

    /// Fails every queued delivery that is not in flight, without an attempt (the endpoint
    /// was deleted).
    fn fail_all_for_deleted_endpoint(&mut self, myself: &ActorRef<EndpointMsg>) {
        let jobs: Vec<(Arc<Job>, Arc<super::PartitionHandle>)> = {
            let q = self.queue.lock().expect("queue lock");
            q.iter()
                .filter(|q| !self.in_flight.contains(&q.job.entry))
                .map(|q| (q.job.clone(), q.partition.clone()))
                .collect()
        };
        for (job, partition) in jobs {
            let progress = crate::delivery::Progress {
                status: crate::delivery::Status::Failed,
                next_attempt_ms: None,
                ..job.progress
            };
            let commit = Arc::new(crate::store::Outcome {
                id: job.id,
                workspace: job.workspace.clone(),
                endpoint_id: job.endpoint_id.clone(),
                from: job.progress.status,
                progress,
                attempt: None,
            });
            self.in_flight.insert(job.entry);
            self.held.insert(
                job.entry,
                Held {
                    commit: commit.clone(),
                    retry: STORE_RETRY,
                    created_ms: job.id.entry.ms,
                },
            );
            if !partition.commit(commit, job.entry, myself.clone()) {
                self.in_flight.remove(&job.entry);
                self.held.remove(&job.entry);
                self.remove(job.entry);
            }
        }
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
            health_saved: None,
            health_dirty: false,
            limiter: None,
            in_flight: HashSet::new(),
            held: HashMap::new(),
            throttled_until: None,
            draining: None,
            wake_at: None,
            idle_timer: false,
            loaded_at: None,
            prepared: None,
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
        // The messages of every delivery are handled without awaiting anything; the rest is
        // boxed, so an idle actor's task holds a pointer, not the few KiB of state machine of
        // a store round trip (kept by every one of 100k actors otherwise).
        match msg {
            EndpointMsg::Pump if state.loaded_at.is_none_or(|t| t.elapsed() <= RELOAD_EVERY) => {
                if state.wake_at.is_some_and(|w| w <= Instant::now()) {
                    state.wake_at = None;
                }
                state.pump(&myself);
                Ok(())
            }
            EndpointMsg::Committed { entry, result } => {
                state.committed(&myself, entry, result);
                Ok(())
            }
            EndpointMsg::AttemptDone {
                entry,
                outcome: Some(outcome),
            } => match state.attempt_done(&myself, entry, *outcome) {
                Some(after) => Box::pin(state.after_attempt(after)).await,
                None => Ok(()),
            },
            EndpointMsg::AttemptCommitted {
                entry,
                result,
                commit,
            } => match state.attempt_committed(&myself, entry, result, commit) {
                Some(after) => Box::pin(state.after_attempt(after)).await,
                None => Ok(()),
            },
            msg => Box::pin(state.on_message(myself, msg)).await,
        }
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
                state.pump(&myself);
            }
            EndpointMsg::Reload => {
                if let Err(e) = state.load_endpoint().await {
                    tracing::warn!(error = %e, "cannot reload endpoint; retrying");
                    myself.send_after(STORE_RETRY, || EndpointMsg::Reload);
                    return Ok(());
                }
                state.pump(&myself);
            }
            EndpointMsg::AttemptDone { entry, outcome } => match outcome {
                Some(outcome) => {
                    if let Some(after) = state.attempt_done(&myself, entry, *outcome) {
                        state.after_attempt(after).await?;
                    }
                }
                None => {
                    tracing::warn!(endpoint = %state.key.1, "the partition's lease could not be confirmed before a send; nothing was sent");
                    state.in_flight.remove(&entry);
                    state.wake(&myself, Instant::now() + LEASE_RETRY);
                    if state.draining.is_some() {
                        state.pump(&myself);
                    }
                }
            },
            EndpointMsg::Committed { entry, result } => state.committed(&myself, entry, result),
            EndpointMsg::AttemptCommitted {
                entry,
                result,
                commit,
            } => {
                if let Some(after) = state.attempt_committed(&myself, entry, result, commit) {
                    state.after_attempt(after).await?;
                }
            }
            EndpointMsg::Recommit(entry) => state.recommit(&myself, entry),
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
                if state.health_dirty
                    && let Some(health) = state.health.clone()
                    && state
                        .ctx
                        .store
                        .save_health(&state.key.0, &state.key.1, &health)
                        .await
                        .is_ok()
                {
                    state.health_dirty = false;
                    state.health_saved = Some(Instant::now());
                }
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
