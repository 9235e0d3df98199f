//! A partition's owner on this node: two tasks, the reader and the committer.
//!
//! - The **reader** reads the partition's log from its checkpoint into the RuleRouter. It holds
//!   at most `partition_buffer` unfinished jobs (a semaphore permit rides with each job until
//!   its final outcome), so a backlog of millions stays in the store, and it keeps the set of
//!   jobs it has read that are not final yet (`open`). Every `RESCAN_EVERY` it asks the router
//!   which open jobs are still queued and routes any that are not again, so no job read can be
//!   stranded; and it runs retention over the partition.
//! - The **committer** takes the outcomes the endpoint actors send it and writes them in one
//!   fenced round trip per batch, with the checkpoint. There is no batching timer: a commit
//!   starts as soon as the previous one returned, with whatever gathered meanwhile, so batches
//!   grow with load and a lone strict endpoint waits one round trip. Each actor hears about its
//!   own outcome when the batch is durable, and only then sends that endpoint's next delivery.
//!
//! A partition owned under a Redis lease carries a [`Lease`]: its local deadline, on the
//! monotonic clock, is checked before every send, and its holder fences every commit.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::QueuedJob;
use super::endpoint_actor::EndpointMsg;
use super::router::RouterMsg;
use crate::delivery::EntryId;
use crate::store::{Checkpoint, Outcome, Store, StoreError};

/// Entries asked for per read.
const READ_BATCH: usize = 256;
/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);
/// Wait before reading again after a store error (doubles up to the ceiling).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often retention runs over the partition.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// How often the partition's gauges are reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often, and past what age, open jobs are checked against the endpoint queues.
const RESCAN_EVERY: Duration = Duration::from_secs(30);
/// Outcomes per commit at most (a commit holds its Redis thread while it runs).
const COMMIT_MAX: usize = 512;

/// A partition lease as this node holds it: the holder string that fences its writes, and
/// the last moment, on this machine's monotonic clock, at which the lease is sure to be ours.
#[derive(Debug)]
pub struct Lease {
    pub holder: String,
    epoch: Instant,
    /// Milliseconds after `epoch`.
    valid_until: AtomicU64,
}

impl Lease {
    /// A lease just acquired (or renewed) by a request sent at `sent`, lasting `length`,
    /// trusted for `length - margin` from then.
    pub fn new(holder: String, sent: Instant, length: Duration, margin: Duration) -> Lease {
        let lease = Lease {
            holder,
            epoch: sent,
            valid_until: AtomicU64::new(0),
        };
        lease.renewed(sent, length, margin);
        lease
    }

    /// A renewal sent at `sent` succeeded.
    pub fn renewed(&self, sent: Instant, length: Duration, margin: Duration) {
        let until = sent.saturating_duration_since(self.epoch) + length.saturating_sub(margin);
        self.valid_until
            .fetch_max(until.as_millis() as u64, Ordering::SeqCst);
    }

    /// Whether this node may still act for the partition now. A process paused past the
    /// deadline (SIGSTOP, a long GC-like stall, a VM freeze) sees it passed when it resumes,
    /// because the monotonic clock kept running.
    pub fn valid(&self) -> bool {
        let now = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64;
        now < self.valid_until.load(Ordering::SeqCst)
    }
}

/// One outcome sent to a partition's committer, and the actor to tell.
pub struct Commit {
    pub outcome: Outcome,
    /// The job's own entry (for the open set; a requeued job's entry is not its delivery's).
    pub entry: EntryId,
    pub reply: ActorRef<EndpointMsg>,
}

/// What an endpoint actor holds of its partition: where to send outcomes, and the lease.
#[derive(Debug)]
pub struct PartitionHandle {
    pub partition: u32,
    pub lease: Option<Arc<Lease>>,
    commits: mpsc::UnboundedSender<Commit>,
}

impl PartitionHandle {
    /// Whether this node may send for the partition now.
    pub fn may_send(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.valid())
    }

    /// Hands an outcome to the committer; `false` when the partition is no longer owned here.
    pub fn commit(&self, c: Commit) -> bool {
        self.commits.send(c).is_ok()
    }
}

/// The jobs read and not final yet, and how far the reader has read.
#[derive(Default)]
struct Open {
    entries: BTreeSet<EntryId>,
    read_upto: EntryId,
    /// When each entry was routed (for the rescan), by entry.
    routed: std::collections::BTreeMap<EntryId, Instant>,
}

/// What one partition's two tasks share.
struct Shared {
    partition: u32,
    store: Store,
    node: String,
    lease: Option<Arc<Lease>>,
    open: Mutex<Open>,
}

/// Stops a partition's owner: reading first (its actors can still finish and record their
/// attempts), committing after.
pub struct PartitionOwner {
    pub stop_reading: CancellationToken,
    pub stop_committing: CancellationToken,
    pub reader: tokio::task::JoinHandle<()>,
    pub committer: tokio::task::JoinHandle<()>,
}

/// Everything a partition's owner starts with.
pub struct PartitionArgs {
    pub store: Store,
    pub partition: u32,
    pub lease: Option<Arc<Lease>>,
    pub router: ActorRef<RouterMsg>,
    pub buffer: usize,
    pub node: String,
}

/// Starts a partition's reader and committer.
pub fn spawn_partition(args: PartitionArgs) -> PartitionOwner {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        partition: args.partition,
        store: args.store,
        node: args.node,
        lease: args.lease.clone(),
        open: Mutex::new(Open::default()),
    });
    let handle = Arc::new(PartitionHandle {
        partition: args.partition,
        lease: args.lease,
        commits: tx,
    });
    let stop_reading = CancellationToken::new();
    let stop_committing = CancellationToken::new();
    let reader = tokio::spawn(read(
        shared.clone(),
        handle,
        args.router,
        args.buffer,
        stop_reading.clone(),
    ));
    let committer = tokio::spawn(commit(shared, rx, stop_committing.clone()));
    PartitionOwner {
        stop_reading,
        stop_committing,
        reader,
        committer,
    }
}

impl PartitionOwner {
    /// Stops both tasks at once (the lease is lost: nothing more may be written).
    pub async fn abort(self) {
        self.stop_reading.cancel();
        self.stop_committing.cancel();
        let _ = self.reader.await;
        let _ = self.committer.await;
    }
}

async fn read(
    shared: Arc<Shared>,
    handle: Arc<PartitionHandle>,
    router: ActorRef<RouterMsg>,
    buffer: usize,
    stop: CancellationToken,
) {
    let p = shared.partition;
    let slots = Arc::new(Semaphore::new(buffer));
    let mut retry = RETRY_MIN;
    let mut trimmed = Instant::now();
    let mut trim_from = EntryId::ZERO;
    let mut reported: Option<Instant> = None;
    let mut rescanned = Instant::now();
    crate::telemetry::partition(&shared.node, p, 0, 0);
    'open: while !stop.is_cancelled() {
        let mut reader = tokio::select! {
            r = shared.store.job_reader(p) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cannot open the partition's log; retrying");
                    backoff(&stop, &mut retry).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        {
            let mut open = shared.open.lock().expect("open lock");
            open.read_upto = open.read_upto.max(reader.position());
        }
        loop {
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                _ = stop.cancelled() => return,
            };
            let want = (slots.available_permits() + 1).min(READ_BATCH);
            let jobs = tokio::select! {
                r = reader.read(want, BLOCK) => r,
                _ = stop.cancelled() => return,
            };
            let jobs = match jobs {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "reading the partition failed; reopening");
                    drop(first);
                    backoff(&stop, &mut retry).await;
                    continue 'open;
                }
            };
            retry = RETRY_MIN;
            {
                let now = Instant::now();
                let mut open = shared.open.lock().expect("open lock");
                for j in &jobs {
                    open.entries.insert(j.entry);
                    open.routed.insert(j.entry, now);
                }
                open.read_upto = open.read_upto.max(reader.position());
            }
            if reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                reported = Some(Instant::now());
                report(
                    &shared,
                    &mut reader,
                    buffer - slots.available_permits() - 1 + jobs.len(),
                )
                .await;
            }
            let mut first = Some(first);
            for job in jobs {
                let permit = match first.take() {
                    Some(p) => p,
                    None => slots
                        .clone()
                        .try_acquire_owned()
                        .expect("permits counted before the read"),
                };
                let queued = QueuedJob::new(job, Some(permit), handle.clone());
                if router.cast(RouterMsg::Route(queued)).is_err() {
                    return;
                }
            }
            if trimmed.elapsed() >= TRIM_EVERY {
                trimmed = Instant::now();
                match shared.store.trim_partition(p, trim_from).await {
                    Ok((n, next)) => {
                        trim_from = next;
                        if n > 0 {
                            tracing::debug!(
                                partition = p,
                                n,
                                "retention dropped finished deliveries"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(partition = p, error = %e, "retention failed"),
                }
            }
            if rescanned.elapsed() >= RESCAN_EVERY {
                rescanned = Instant::now();
                rescan(&shared, &handle, &router).await;
            }
        }
    }
}

async fn report(shared: &Shared, reader: &mut crate::store::JobReader, in_memory: usize) {
    let sent = Instant::now();
    if let Ok(lag) = reader.lag().await {
        crate::telemetry::store_roundtrip(&shared.node, sent.elapsed());
        crate::telemetry::partition(&shared.node, shared.partition, lag, in_memory as i64);
    }
}

/// Routes again the open jobs that no endpoint queue holds (none should: this is the net
/// under every path that could drop a job without its outcome).
async fn rescan(shared: &Shared, handle: &Arc<PartitionHandle>, router: &ActorRef<RouterMsg>) {
    let old: Vec<EntryId> = {
        let open = shared.open.lock().expect("open lock");
        open.routed
            .iter()
            .filter(|(_, at)| at.elapsed() >= RESCAN_EVERY)
            .map(|(e, _)| *e)
            .collect()
    };
    if old.is_empty() {
        return;
    }
    let asked = old.clone();
    let queued = ractor::call_t!(
        router,
        |reply| RouterMsg::Queued(shared.partition, asked, reply),
        5_000
    );
    let Ok(queued) = queued else { return };
    let lost: Vec<EntryId> = old.into_iter().filter(|e| !queued.contains(e)).collect();
    if lost.is_empty() {
        return;
    }
    tracing::warn!(
        partition = shared.partition,
        n = lost.len(),
        "open jobs in no queue; routing them again"
    );
    let ids: Vec<crate::delivery::DeliveryId> = lost
        .iter()
        .map(|entry| crate::delivery::DeliveryId {
            partition: shared.partition,
            entry: *entry,
        })
        .collect();
    let (Ok(jobs), Ok(progress)) = (
        shared.store.jobs(&ids).await,
        shared.store.progress(shared.partition, &ids).await,
    ) else {
        return;
    };
    let mut open = shared.open.lock().expect("open lock");
    for ((entry, job), progress) in lost.iter().zip(jobs).zip(progress) {
        match (job, progress) {
            (Some(mut job), p) if p.is_none_or(|p| !p.status.is_final()) => {
                job.progress = p.unwrap_or(job.progress);
                open.routed.insert(*entry, Instant::now());
                let _ = router.cast(RouterMsg::Route(QueuedJob::new(job, None, handle.clone())));
            }
            _ => {
                open.entries.remove(entry);
                open.routed.remove(entry);
            }
        }
    }
}

async fn commit(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Commit>,
    stop: CancellationToken,
) {
    let p = shared.partition;
    let fence = shared.lease.as_ref().map(|l| l.holder.clone());
    loop {
        let first = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => return },
            _ = stop.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < COMMIT_MAX {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let checkpoint = {
            let open = shared.open.lock().expect("open lock");
            let finishing: BTreeSet<EntryId> = batch
                .iter()
                .filter(|c| c.outcome.progress.status.is_final())
                .map(|c| c.entry)
                .collect();
            let done_below = open
                .entries
                .iter()
                .find(|e| !finishing.contains(e))
                .copied()
                .unwrap_or(open.read_upto.next());
            Checkpoint {
                done_below,
                read_upto: open.read_upto,
            }
        };
        let outcomes: Vec<Outcome> = batch.iter().map(|c| c.outcome.clone()).collect();
        let sent = Instant::now();
        let result = shared
            .store
            .commit(p, fence.as_deref(), &outcomes, checkpoint)
            .await;
        crate::telemetry::commit(&shared.node, outcomes.len(), sent.elapsed());
        if result.is_ok() {
            let mut open = shared.open.lock().expect("open lock");
            for c in batch
                .iter()
                .filter(|c| c.outcome.progress.status.is_final())
            {
                open.entries.remove(&c.entry);
                open.routed.remove(&c.entry);
            }
        }
        let error = result.err();
        for c in batch {
            let result = match &error {
                None => Ok(()),
                Some(StoreError::StaleLease(p)) => Err(StoreError::StaleLease(*p)),
                Some(e) => Err(StoreError::Unavailable(e.to_string())),
            };
            let _ = c.reply.cast(EndpointMsg::Committed {
                entry: c.entry,
                result,
            });
        }
    }
}

async fn backoff(stop: &CancellationToken, retry: &mut Duration) {
    tokio::select! {
        _ = tokio::time::sleep(*retry) => {}
        _ = stop.cancelled() => {}
    }
    *retry = (*retry * 2).min(RETRY_MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_trusted_until_its_length_less_the_margin_after_the_renewal_was_sent() {
        let sent = Instant::now() - Duration::from_millis(900);
        let lease = Lease::new(
            "n:1".into(),
            sent,
            Duration::from_secs(1),
            Duration::from_millis(200),
        );
        assert!(!lease.valid(), "sent 900 ms ago, trusted for 800 ms");
        lease.renewed(
            Instant::now(),
            Duration::from_secs(1),
            Duration::from_millis(200),
        );
        assert!(lease.valid());
        // A renewal whose answer came late cannot move the deadline back.
        lease.renewed(sent, Duration::from_secs(1), Duration::from_millis(200));
        assert!(lease.valid());
    }
}
