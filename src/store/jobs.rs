//! The jobs role of the store: what ingest writes, what a partition's owner reads, and the
//! outcomes it writes back.
//!
//! - **Ingest** writes each delivery once: its job in its partition's log (the job is the
//!   record: ids, event type, ordering key, body), the event in the workspace's log, and the
//!   endpoint's created count — on one Redis in one script call per request, on the embedded
//!   store in one group commit. No read comes before the write. A request with an
//!   `Idempotency-Key` is recognised before anything is written (same body: the first answer;
//!   another body: [`Ingested::Reused`]).
//! - **A partition's owner** reads its log from its checkpoint ([`JobReader`]): jobs it or a
//!   previous owner may have read before (up to the checkpoint's `read_upto`) are looked up
//!   in the delivery states, so a finished one is skipped and one in backoff resumes; jobs
//!   after it are new and cost no lookup. Reading changes nothing, so a node that lost the
//!   partition cannot strand a job by reading it.
//! - **Outcomes are group-committed**: the owner writes the outcomes that gathered while the
//!   previous commit was in flight ([`Store::commit`]), each delivery's state with its
//!   attempt, the counts, the dead letter and the checkpoint, in one fenced round trip.
//! - **Retention** drops finished deliveries older than the retention or beyond the cap per
//!   partition, oldest first; a delivery that is not final is never dropped.

use std::sync::Arc;
use std::time::Duration;

use super::record::{AttemptRecord, Checkpoint};
use super::{Result, Store};
use crate::delivery::{DeliveryId, EntryId, Job, NewDelivery, Progress, Status};

/// An event to ingest and the deliveries its rules made.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    /// The event as received, kept in the event log when its first delivery does not carry
    /// it as it is (it made none, or that one is transformed); empty otherwise.
    pub body: Arc<str>,
    pub deliveries: Vec<NewDelivery>,
}

/// A request's `Idempotency-Key`, with a fingerprint of its events.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
    pub ttl_secs: u64,
}

/// What ingest did: per event its id and its deliveries' ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    /// Written now.
    Written(Vec<(String, Vec<String>)>),
    /// The `Idempotency-Key` was used before with the same events: that request's answer.
    Answered(Vec<(String, Vec<String>)>),
    /// The `Idempotency-Key` was used before with other events: nothing was written.
    Reused,
    /// The rule or endpoint version the events were planned with moved (`expect` of
    /// [`Store::ingest`]): nothing was written; plan them again.
    Stale,
}

/// One delivery's outcome to record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: DeliveryId,
    pub workspace: String,
    pub endpoint_id: String,
    /// The status before this outcome (the counts move from it).
    pub from: Status,
    pub progress: Progress,
    /// The attempt, when there was one (a delivery whose endpoint was deleted fails without).
    pub attempt: Option<AttemptRecord>,
}

impl Outcome {
    /// The first attempt of a pending delivery: there are no earlier attempts to keep, so
    /// both backends write its state whole instead of reading the stored one to append to it.
    pub fn is_first_attempt(&self) -> bool {
        self.from == Status::Pending && self.attempt.as_ref().is_some_and(|a| a.n <= 1)
    }
}

/// How long and how many finished deliveries are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub time: Duration,
    /// Finished deliveries kept per partition at most (older ones go first).
    pub max_per_partition: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            time: super::DEFAULT_RETENTION,
            max_per_partition: DEFAULT_MAX_PER_PARTITION,
        }
    }
}

/// Finished deliveries kept per partition unless configured: 1,000,000 (64 partitions of it
/// is about 45 GB of Redis at ~700 B a delivery).
pub const DEFAULT_MAX_PER_PARTITION: u64 = 1_000_000;

/// A job as the backends read it, before its state is looked up.
pub struct RawJob {
    pub job: Job,
    /// A manual retry or a replay (its progress must be looked up whatever the checkpoint).
    pub requeued: bool,
}

/// Where a partition's owner stands in its log: the last entry read, and up to where jobs may
/// have been read by an earlier owner (their state is looked up: a finished one is skipped, one
/// in backoff resumes).
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    pub partition: u32,
    pub after: EntryId,
    pub recover_upto: EntryId,
}

impl Cursor {
    /// Turns what was read after the cursor into the jobs to run, and moves past it.
    pub async fn resolve(&mut self, store: &Store, raw: Vec<RawJob>) -> Result<Vec<Job>> {
        let Some(last) = raw.last() else {
            return Ok(Vec::new());
        };
        let last = last.job.entry;
        let ask: Vec<DeliveryId> = raw
            .iter()
            .filter(|r| r.requeued || r.job.entry <= self.recover_upto)
            .map(|r| r.job.id)
            .collect();
        let found = if ask.is_empty() {
            Vec::new()
        } else {
            store.progress(self.partition, &ask).await?
        };
        let mut found = found.into_iter();
        let mut jobs = Vec::with_capacity(raw.len());
        for RawJob { mut job, requeued } in raw {
            if requeued || job.entry <= self.recover_upto {
                match found.next().flatten() {
                    Some(p) if p.status.is_final() => continue,
                    Some(p) => job.progress = p,
                    // A replayed job whose delivery retention has removed.
                    None if requeued => continue,
                    None => {}
                }
            }
            jobs.push(job);
        }
        self.after = last;
        Ok(jobs)
    }
}

/// A partition's reader, from its checkpoint on.
pub struct JobReader {
    inner: Inner,
    cursor: Cursor,
    store: Store,
}

enum Inner {
    Redis(super::redis::JobReader),
    Embedded(super::embedded::JobReader),
}

impl JobReader {
    /// Up to `count` jobs, waiting up to `block` for new ones. Jobs that are already final
    /// (finished before a crash or a handoff) are skipped; jobs in backoff come with their
    /// progress.
    pub async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Job>> {
        loop {
            let after = self.cursor.after;
            let raw = match &mut self.inner {
                Inner::Redis(r) => r.read(after, count, block).await?,
                Inner::Embedded(r) => r.read(after, count, block).await?,
            };
            if raw.is_empty() {
                return Ok(Vec::new());
            }
            let jobs = self.cursor.resolve(&self.store, raw).await?;
            if !jobs.is_empty() {
                return Ok(jobs);
            }
        }
    }

    /// The last entry read.
    pub fn position(&self) -> EntryId {
        self.cursor.after
    }

    /// Entries of the partition not yet read (`switchyard_partition_lag`).
    pub async fn lag(&mut self) -> Result<i64> {
        match &mut self.inner {
            Inner::Redis(r) => r.lag(self.cursor.after).await,
            Inner::Embedded(r) => Ok(r.lag()),
        }
    }
}

/// One partition's share of a group commit.
#[derive(Debug, Clone)]
pub struct CommitBatch {
    pub partition: u32,
    /// The lease holder that fences the write (Redis; `None` on a single embedded node).
    pub fence: Option<String>,
    /// Shared with the endpoint actors that hold them until durable (no copy per batch).
    pub outcomes: Vec<std::sync::Arc<Outcome>>,
    /// The partition's checkpoint, when it must move with this batch (see
    /// [`crate::dispatch::partition`]: it is written when an outcome passes the last one
    /// written, and otherwise at most once a second).
    pub checkpoint: Option<Checkpoint>,
}

impl Store {
    /// Writes events, their deliveries' jobs and the event log; returns once all of it is
    /// durable. With `idem`, a request seen before is answered as it was (or refused when its
    /// events differ) and nothing is written. With `expect` (the workspace's rule and endpoint
    /// versions the events were planned with), nothing is written when either moved
    /// ([`Ingested::Stale`]); one Redis checks them in the same script as the write, so the
    /// ingest needs no round trip of its own to read them (see [`Self::checks_versions`]).
    pub async fn ingest(
        &self,
        ws: &str,
        events: &[NewEvent],
        idem: Option<&Idempotency>,
        expect: Option<(u64, u64)>,
    ) -> Result<Ingested> {
        match self {
            Store::Redis(s) => s.ingest(ws, events, idem, expect).await,
            Store::Embedded(s) => {
                if let Some(expect) = expect
                    && s.versions(ws).await? != expect
                {
                    return Ok(Ingested::Stale);
                }
                s.ingest(ws, events, idem).await
            }
        }
    }

    /// Whether [`Self::ingest`] checks `expect` inside its write at no extra cost (one
    /// Redis), so planning with cached versions saves a round trip.
    pub fn checks_versions(&self) -> bool {
        matches!(self, Store::Redis(s) if !s.is_cluster())
    }

    /// Where a new owner of `partition` starts: just before the first job that may not be
    /// final, looking up the state of those an earlier owner may have read.
    pub async fn cursor(&self, partition: u32) -> Result<Cursor> {
        let checkpoint = self.checkpoint(partition).await?;
        Ok(Cursor {
            partition,
            after: checkpoint.done_below.prev(),
            recover_upto: checkpoint.read_upto,
        })
    }

    /// A reader of `partition`'s jobs from its checkpoint.
    pub async fn job_reader(&self, partition: u32) -> Result<JobReader> {
        let cursor = self.cursor(partition).await?;
        let inner = match self {
            Store::Redis(s) => Inner::Redis(s.job_reader(partition).await?),
            Store::Embedded(s) => Inner::Embedded(s.job_reader(partition, cursor.after)),
        };
        Ok(JobReader {
            inner,
            cursor,
            store: self.clone(),
        })
    }

    /// A partition's checkpoint (all zero for a partition never read).
    pub async fn checkpoint(&self, partition: u32) -> Result<Checkpoint> {
        match self {
            Store::Redis(s) => s.checkpoint(partition).await,
            Store::Embedded(s) => s.checkpoint(partition),
        }
    }

    /// The progress of these deliveries of `partition` (`None`: no outcome yet, or gone).
    pub async fn progress(
        &self,
        partition: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Option<Progress>>> {
        match self {
            Store::Redis(s) => s.progress(partition, ids).await,
            Store::Embedded(s) => s.progress(ids),
        }
    }

    /// Writes a batch of `partition`'s outcomes and its checkpoint in one step; `fence` (the
    /// lease holder, Redis) refuses the whole batch with [`super::StoreError::StaleLease`] if the
    /// lease has passed to another node.
    pub async fn commit(
        &self,
        partition: u32,
        fence: Option<&str>,
        outcomes: &[Outcome],
        checkpoint: Checkpoint,
    ) -> Result<()> {
        let batch = CommitBatch {
            partition,
            fence: fence.map(str::to_string),
            outcomes: outcomes.iter().cloned().map(std::sync::Arc::new).collect(),
            checkpoint: Some(checkpoint),
        };
        self.commit_many(vec![batch]).await.pop().unwrap_or(Ok(()))
    }

    /// Writes several partitions' batches of a group commit: on one Redis in one script, on a
    /// Redis Cluster one per partition (each its own slot), concurrently; on the embedded store
    /// in one commit. One answer per batch, in order (a stale lease refuses only its batch).
    pub async fn commit_many(&self, batches: Vec<CommitBatch>) -> Vec<Result<()>> {
        match self {
            Store::Redis(s) if !s.is_cluster() => s.commit_many(&batches).await,
            Store::Redis(s) => {
                futures::future::join_all(batches.iter().map(|b| async move {
                    s.commit_many(std::slice::from_ref(b))
                        .await
                        .pop()
                        .unwrap_or(Ok(()))
                }))
                .await
            }
            Store::Embedded(s) => s.commit_many(batches).await,
        }
    }

    /// Puts a finished delivery (in one of `from`) back in its partition for one more attempt;
    /// a `manual` one is sent at once, whatever the endpoint's breaker says. `false` when the
    /// delivery is not in one of `from` (or not of this workspace).
    pub async fn requeue(
        &self,
        ws: &str,
        id: DeliveryId,
        from: &[Status],
        manual: bool,
    ) -> Result<bool> {
        match self {
            Store::Redis(s) => s.requeue(ws, id, from, manual).await,
            Store::Embedded(s) => s.requeue(ws, id, from, manual).await,
        }
    }

    /// Requeues, in ingest order, the deliveries of `endpoint` that went to the dead letter in
    /// the window and are still failed. Returns how many.
    pub async fn replay(
        &self,
        ws: &str,
        endpoint: &str,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<u32> {
        let partition = crate::delivery::partition_of(endpoint, self.partitions());
        let mut ids = match self {
            Store::Redis(s) => {
                s.dead_letters(ws, endpoint, partition, since_ms, until_ms)
                    .await?
            }
            Store::Embedded(s) => s.dead_letters(ws, endpoint, partition, since_ms, until_ms)?,
        };
        ids.sort();
        ids.dedup();
        let mut replayed = 0;
        for id in ids {
            if self.requeue(ws, id, &[Status::Failed], false).await? {
                replayed += 1;
            }
        }
        Ok(replayed)
    }

    /// One retention pass over `partition`, from `from` on: drops finished deliveries past
    /// the retention (by age, or beyond the cap), oldest first; a delivery that is not final
    /// stays. Returns how many were dropped and where the next pass starts.
    pub async fn trim_partition(&self, partition: u32, from: EntryId) -> Result<(u64, EntryId)> {
        let (dropped, next) = match self {
            Store::Redis(s) => s.trim_partition(partition, from).await?,
            Store::Embedded(s) => s.trim_partition(partition, from).await?,
        };
        crate::telemetry::retention_dropped(dropped);
        Ok((dropped, next))
    }
}
