//! Partition consumers: one task per partition, reading its stream into the RuleRouter.
//!
//! Each consumer holds at most `partition_buffer` jobs that were read but have not reached
//! their final outcome (a semaphore permit travels with each job), so a backlog of millions
//! stays in Redis and not in memory.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::QueuedJob;
use super::router::RouterMsg;
use crate::store::Store;

/// Entries asked for per read.
const READ_BATCH: usize = 256;
/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);
/// Wait before reconnecting after a store error (doubles up to the ceiling).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the consumer drops its partition's acknowledged jobs from the stream.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// How often the consumer reports its partition's gauges (`switchyard_partition_lag`,
/// `_pending`).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Starts one consumer per partition in `partitions`.
pub fn spawn_consumers(
    store: Store,
    partitions: impl IntoIterator<Item = u32>,
    router: ActorRef<RouterMsg>,
    buffer: usize,
    node: &str,
    stop: CancellationToken,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for p in partitions {
        set.spawn(consume(
            Consumer {
                store: store.clone(),
                partition: p,
                fence: None,
                router: router.clone(),
                buffer,
                node: node.to_string(),
            },
            stop.clone(),
        ));
    }
    set
}

/// Starts the consumer of one partition owned under a lease: every job it reads carries the
/// lease holder, so its outcome is refused if the lease has passed to another node.
pub fn spawn_fenced_consumer(
    store: Store,
    partition: u32,
    holder: String,
    router: ActorRef<RouterMsg>,
    buffer: usize,
    node: &str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(consume(
        Consumer {
            store,
            partition,
            fence: Some(holder),
            router,
            buffer,
            node: node.to_string(),
        },
        stop,
    ))
}

/// What one partition's consumer works with.
struct Consumer {
    store: Store,
    partition: u32,
    fence: Option<String>,
    router: ActorRef<RouterMsg>,
    buffer: usize,
    /// This node's id, the `node` label of the partition gauges.
    node: String,
}

async fn consume(c: Consumer, stop: CancellationToken) {
    let Consumer {
        store,
        partition,
        fence,
        router,
        buffer,
        node,
    } = c;
    let slots = Arc::new(Semaphore::new(buffer));
    let mut retry = RETRY_MIN;
    let mut trimmed = tokio::time::Instant::now();
    let mut reported: Option<tokio::time::Instant> = None;
    crate::telemetry::partition(&node, partition, 0, 0);
    while !stop.is_cancelled() {
        let mut reader = tokio::select! {
            r = store.job_reader(partition) => match r {
                Ok(r) => r.fenced(fence.clone()),
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot open partition stream; retrying");
                    backoff(&stop, &mut retry).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        loop {
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
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
                    tracing::warn!(partition, error = %e, "partition read failed; reconnecting");
                    drop(first);
                    backoff(&stop, &mut retry).await;
                    break;
                }
            };
            retry = RETRY_MIN;
            if reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                reported = Some(tokio::time::Instant::now());
                let sent = std::time::Instant::now();
                if let Ok(lag) = reader.lag().await {
                    crate::telemetry::store_roundtrip(&node, sent.elapsed());
                    // The permit taken for this read is not a job's yet: the jobs read are.
                    let in_memory = buffer - slots.available_permits() - 1 + jobs.len();
                    crate::telemetry::partition(&node, partition, lag, in_memory as i64);
                }
            }
            if trimmed.elapsed() >= TRIM_EVERY {
                trimmed = tokio::time::Instant::now();
                match store.trim_jobs(partition).await {
                    Ok(n) if n > 0 => tracing::debug!(partition, n, "trimmed acknowledged jobs"),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "could not trim the job stream")
                    }
                }
            }
            if !jobs.is_empty() {
                tracing::debug!(partition, jobs = jobs.len(), "read jobs");
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
                if router
                    .cast(RouterMsg::Route(QueuedJob::new(job, Some(permit))))
                    .is_err()
                {
                    return;
                }
            }
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
