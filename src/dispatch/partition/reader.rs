//! Reading owned partitions into the RuleRouter: one task per partition (a Redis Cluster,
//! the embedded store), or one task for all of them with one `XREAD` (one Redis).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::PartitionHandle;
use crate::delivery::{DeliveryId, EntryId, Job};
use crate::dispatch::QueuedJob;
use crate::dispatch::router::RouterMsg;
use crate::store::Store;
use crate::store::jobs::Cursor;

/// Entries asked for per read (per partition).
const READ_BATCH: usize = 256;
/// How long one blocking read waits for new entries. The shared reader waits less, so a
/// partition it is given, or one it must let go, waits at most this long.
const BLOCK: Duration = Duration::from_millis(1000);
const SHARED_BLOCK: Duration = Duration::from_millis(200);
/// Wait before reading again after a store error (doubles up to the ceiling).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often retention runs over a partition.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// How often a partition's gauges are reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often, and past what age, open jobs are checked against the endpoint queues.
const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// What every reader needs.
#[derive(Clone)]
pub struct Common {
    pub store: Store,
    pub router: ActorRef<RouterMsg>,
    pub node: String,
    pub buffer: usize,
    pub backlog: Arc<crate::dispatch::backlog::Backlog>,
}

/// A partition handed to a reader.
pub struct Owned {
    pub handle: Arc<PartitionHandle>,
    pub stop: CancellationToken,
    /// Dropped when the reader lets the partition go (its owner waits for that).
    pub _done: oneshot::Sender<()>,
}

/// One partition as its reader keeps it.
struct Part {
    owned: Owned,
    cursor: Cursor,
    slots: Arc<Semaphore>,
    trimmed: Instant,
    trim_from: EntryId,
    reported: Option<Instant>,
    rescanned: Instant,
    lag: crate::store::redis::Lag,
}

impl Part {
    fn new(owned: Owned, cursor: Cursor, buffer: usize) -> Part {
        Part {
            owned,
            cursor,
            slots: Arc::new(Semaphore::new(buffer)),
            trimmed: Instant::now(),
            trim_from: EntryId::ZERO,
            reported: None,
            rescanned: Instant::now(),
            lag: Default::default(),
        }
    }

    fn partition(&self) -> u32 {
        self.owned.handle.partition
    }

    /// Registers jobs as open and routes them, each with a buffer permit.
    fn route(&self, common: &Common, jobs: Vec<Job>) -> bool {
        self.owned
            .handle
            .opened(jobs.iter().map(|j| j.entry), self.cursor.after);
        let mut batch = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                // Never: a read asks for at most the permits there are.
                tracing::error!(
                    partition = self.partition(),
                    "read past the partition's buffer"
                );
                break;
            };
            batch.push(QueuedJob::new(job, Some(permit), self.owned.handle.clone()));
        }
        batch.is_empty() || common.router.cast(RouterMsg::Route(batch)).is_ok()
    }

    /// The periodic work beside reading: gauges, retention, the rescan.
    async fn chores(&mut self, common: &Common, lag: Option<i64>) {
        let p = self.partition();
        if self.reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            self.reported = Some(Instant::now());
            let in_memory = (common.buffer - self.slots.available_permits()) as i64;
            let lag = match lag {
                Some(l) => Some(l),
                None => match &common.store {
                    Store::Redis(r) => {
                        let sent = Instant::now();
                        let l = r
                            .partition_lag(&mut self.lag, p, self.cursor.after)
                            .await
                            .ok();
                        crate::telemetry::store_roundtrip(&common.node, sent.elapsed());
                        l
                    }
                    Store::Embedded(_) => None,
                },
            };
            if let Some(lag) = lag {
                crate::telemetry::partition(&common.node, p, lag, in_memory);
                common.backlog.record(
                    p,
                    (lag + in_memory).max(0) as u64,
                    self.owned.handle.oldest_open_ms(),
                    chrono::Utc::now().timestamp_millis(),
                );
            }
        }
        if self.trimmed.elapsed() >= TRIM_EVERY {
            self.trimmed = Instant::now();
            match common.store.trim_partition(p, self.trim_from).await {
                Ok((n, next)) => {
                    self.trim_from = next;
                    if n > 0 {
                        tracing::debug!(partition = p, n, "retention dropped finished deliveries");
                    }
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "retention failed"),
            }
        }
        if self.rescanned.elapsed() >= RESCAN_EVERY {
            self.rescanned = Instant::now();
            rescan(common, &self.owned.handle).await;
        }
    }
}

/// Reads one partition on a connection of its own until it is stopped.
pub async fn read_one(common: Common, owned: Owned) {
    let p = owned.handle.partition;
    let mut retry = RETRY_MIN;
    crate::telemetry::partition(&common.node, p, 0, 0);
    let mut part: Option<Part> = None;
    let mut owned = Some(owned);
    'open: loop {
        let stop = part.as_ref().map_or_else(
            || owned.as_ref().expect("owned").stop.clone(),
            |p| p.owned.stop.clone(),
        );
        if stop.is_cancelled() {
            return;
        }
        let mut reader = tokio::select! {
            r = common.store.job_reader(p) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cannot open the partition's log; retrying");
                    backoff(&stop, &mut retry).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        if part.is_none() {
            let cursor = Cursor {
                partition: p,
                after: reader.position(),
                recover_upto: EntryId::ZERO,
            };
            part = Some(Part::new(
                owned.take().expect("owned once"),
                cursor,
                common.buffer,
            ));
        }
        let part = part.as_mut().expect("set above");
        part.owned.handle.opened([], reader.position());
        loop {
            // A full buffer waits for outcomes; its gauges and backlog are still reported.
            let free = tokio::select! {
                p = part.slots.acquire() => {
                    drop(p.expect("never closed"));
                    true
                }
                _ = tokio::time::sleep(REPORT_EVERY) => false,
                _ = stop.cancelled() => return,
            };
            if !free {
                let lag = reader.lag().await.ok();
                part.chores(&common, lag).await;
                continue;
            }
            let want = part.slots.available_permits().min(READ_BATCH);
            let jobs = tokio::select! {
                r = reader.read(want, BLOCK) => r,
                _ = stop.cancelled() => return,
            };
            let jobs = match jobs {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "reading the partition failed; reopening");
                    backoff(&stop, &mut retry).await;
                    continue 'open;
                }
            };
            retry = RETRY_MIN;
            part.cursor.after = reader.position();
            if !part.route(&common, jobs) {
                return;
            }
            let lag = reader.lag().await.ok();
            part.chores(&common, lag).await;
        }
    }
}

/// Reads every partition it is given with one `XREAD` over their streams (one Redis), until
/// `stop`.
pub async fn read_shared(
    common: Common,
    mut given: mpsc::UnboundedReceiver<Owned>,
    stop: CancellationToken,
) {
    let Store::Redis(redis) = &common.store else {
        return;
    };
    let mut parts: BTreeMap<u32, Part> = BTreeMap::new();
    let mut retry = RETRY_MIN;
    'connect: loop {
        let mut reader = tokio::select! {
            r = redis.multi_reader() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect the partitions' reader; retrying");
                    backoff(&stop, &mut retry).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        loop {
            // New partitions, and those to let go.
            while let Ok(owned) = given.try_recv() {
                add(&common, &mut parts, owned).await;
            }
            parts.retain(|_, part| !part.owned.stop.is_cancelled());
            if parts.is_empty() {
                tokio::select! {
                    o = given.recv() => match o {
                        Some(owned) => add(&common, &mut parts, owned).await,
                        None => return,
                    },
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let from: Vec<(u32, EntryId)> = parts
                .values()
                .filter(|p| p.slots.available_permits() > 0)
                .map(|p| (p.partition(), p.cursor.after))
                .collect();
            if from.is_empty() {
                // Every buffer is full: wait for outcomes to free some (still reporting).
                for part in parts.values_mut() {
                    part.chores(&common, None).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let read = tokio::select! {
                r = reader.read(redis, &from, READ_BATCH, SHARED_BLOCK) => r,
                _ = stop.cancelled() => return,
            };
            let read = match read {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the partitions failed; reconnecting");
                    backoff(&stop, &mut retry).await;
                    continue 'connect;
                }
            };
            retry = RETRY_MIN;
            for (p, mut raw) in read {
                let Some(part) = parts.get_mut(&p) else {
                    continue;
                };
                // A partition gets at most its free permits; the rest is read again later
                // (and counted as read only then).
                raw.truncate(part.slots.available_permits());
                part.lag.read(raw.len());
                let jobs = match part.cursor.resolve(&common.store, raw).await {
                    Ok(jobs) => jobs,
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "cannot look up the progress of jobs; reading them again");
                        continue;
                    }
                };
                if !part.route(&common, jobs) {
                    return;
                }
            }
            for part in parts.values_mut() {
                part.chores(&common, None).await;
            }
        }
    }
}

async fn add(common: &Common, parts: &mut BTreeMap<u32, Part>, owned: Owned) {
    let p = owned.handle.partition;
    crate::telemetry::partition(&common.node, p, 0, 0);
    loop {
        match common.store.cursor(p).await {
            Ok(cursor) => {
                owned.handle.opened([], cursor.after);
                parts.insert(p, Part::new(owned, cursor, common.buffer));
                return;
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot read the partition's checkpoint; retrying");
                if owned.stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(RETRY_MIN).await;
            }
        }
    }
}

/// Routes again the open jobs that no endpoint queue holds (none should: this is the net
/// under every path that could drop a job without its outcome).
async fn rescan(common: &Common, handle: &Arc<PartitionHandle>) {
    let p = handle.partition;
    let old: Vec<EntryId> = {
        let open = handle.open.lock().expect("open lock");
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
        common.router,
        |reply| RouterMsg::Queued(p, asked, reply),
        5_000
    );
    let Ok(queued) = queued else { return };
    let lost: Vec<EntryId> = old.into_iter().filter(|e| !queued.contains(e)).collect();
    if lost.is_empty() {
        return;
    }
    tracing::warn!(
        partition = p,
        n = lost.len(),
        "open jobs in no queue; routing them again"
    );
    let ids: Vec<DeliveryId> = lost
        .iter()
        .map(|entry| DeliveryId {
            partition: p,
            entry: *entry,
        })
        .collect();
    let (Ok(jobs), Ok(progress)) = (
        common.store.jobs(&ids).await,
        common.store.progress(p, &ids).await,
    ) else {
        return;
    };
    let mut again = Vec::new();
    let mut gone = Vec::new();
    for ((entry, job), progress) in lost.iter().zip(jobs).zip(progress) {
        match (job, progress) {
            (Some(mut job), p) if p.is_none_or(|p| !p.status.is_final()) => {
                job.progress = p.unwrap_or(job.progress);
                again.push(job);
            }
            _ => gone.push(*entry),
        }
    }
    handle.finished(gone);
    let position = handle.open.lock().expect("open lock").read_upto;
    handle.opened(again.iter().map(|j| j.entry), position);
    let batch = again
        .into_iter()
        .map(|job| QueuedJob::new(job, None, handle.clone()))
        .collect();
    let _ = common.router.cast(RouterMsg::Route(batch));
}

async fn backoff(stop: &CancellationToken, retry: &mut Duration) {
    tokio::select! {
        _ = tokio::time::sleep(*retry) => {}
        _ = stop.cancelled() => {}
    }
    *retry = (*retry * 2).min(RETRY_MAX);
}
