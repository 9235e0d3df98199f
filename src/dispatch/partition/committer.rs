//! The node's committer: outcomes from every endpoint actor, written in group commits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{Commit, PartitionHandle};
use crate::dispatch::endpoint_actor::EndpointMsg;
use crate::store::jobs::CommitBatch;
use crate::store::{Store, StoreError};

/// Outcomes per group commit at most (a commit holds its Redis thread while it runs).
const COMMIT_MAX: usize = 1024;

/// Takes what gathered since the last commit returned, groups it by partition with each one's
/// checkpoint, writes it, and tells each actor of its outcome.
pub async fn run(
    store: Store,
    node: String,
    mut rx: mpsc::UnboundedReceiver<Commit>,
    stop: tokio_util::sync::CancellationToken,
) {
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
        let mut by_partition: BTreeMap<u32, (Arc<PartitionHandle>, Vec<Commit>)> = BTreeMap::new();
        for c in batch {
            by_partition
                .entry(c.partition.partition)
                .or_insert_with(|| (c.partition.clone(), Vec::new()))
                .1
                .push(c);
        }
        let groups: Vec<(Arc<PartitionHandle>, Vec<Commit>)> = by_partition.into_values().collect();
        let batches: Vec<CommitBatch> = groups
            .iter()
            .map(|(handle, commits)| {
                let finishing: BTreeSet<_> = commits
                    .iter()
                    .filter(|c| c.outcome.progress.status.is_final())
                    .map(|c| c.entry)
                    .collect();
                CommitBatch {
                    partition: handle.partition,
                    fence: handle.lease.as_ref().map(|l| l.holder.clone()),
                    outcomes: commits.iter().map(|c| c.outcome.clone()).collect(),
                    checkpoint: handle.checkpoint(commits.iter().map(|c| c.entry), &finishing),
                }
            })
            .collect();
        let n: usize = batches.iter().map(|b| b.outcomes.len()).sum();
        let checkpoints: Vec<_> = batches.iter().map(|b| b.checkpoint).collect();
        let sent = Instant::now();
        let results = store.commit_many(batches).await;
        crate::telemetry::commit(&node, n, sent.elapsed());
        for (((handle, commits), result), checkpoint) in
            groups.into_iter().zip(results).zip(checkpoints)
        {
            if let (Ok(()), Some(c)) = (&result, checkpoint) {
                handle.checkpoint_written(c);
            }
            if result.is_ok() {
                handle.finished(
                    commits
                        .iter()
                        .filter(|c| c.outcome.progress.status.is_final())
                        .map(|c| c.entry),
                );
            }
            for c in commits {
                let result = match &result {
                    Ok(()) => Ok(()),
                    Err(StoreError::StaleLease(p)) => Err(StoreError::StaleLease(*p)),
                    Err(e) => Err(StoreError::Unavailable(e.to_string())),
                };
                let _ = c.reply.cast(if c.direct {
                    EndpointMsg::AttemptCommitted {
                        entry: c.entry,
                        result,
                        commit: c.outcome,
                    }
                } else {
                    EndpointMsg::Committed {
                        entry: c.entry,
                        result,
                    }
                });
            }
        }
    }
}
