//! The backlog: per partition, the jobs not finished yet and how old the oldest is.
//!
//! Each partition's reader records its partition every second (unread entries plus jobs read
//! and not final). On Redis every node publishes what its readers recorded into one hash
//! (`P:backlog`, field = partition, value = `jobs oldest_ms at_ms`) and reads the others', so
//! a node that takes an ingest knows the backlog of partitions it does not own; a reading
//! older than [`STALE_MS`] (its owner died) counts as no backlog. With `overload = "shed"`
//! the events API refuses a request (429 with `Retry-After`) whose deliveries would go to a
//! partition whose backlog is over `overload_backlog_jobs`: the producer slows down instead of
//! the backlog growing without end. By default (`accept`) the store absorbs bursts, bounded by
//! retention and its size caps.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// A reading older than this is ignored (its owner has stopped reporting).
pub const STALE_MS: i64 = 10_000;

#[derive(Default)]
struct Slot {
    jobs: AtomicU64,
    /// Unix ms of the oldest unfinished job, 0 when none.
    oldest_ms: AtomicI64,
    /// When it was measured (unix ms), 0 never.
    at_ms: AtomicI64,
    /// When this node's own reader last recorded it.
    local_ms: AtomicI64,
}

/// The backlog of every partition as this node knows it.
pub struct Backlog {
    slots: Vec<Slot>,
}

/// This node's own partitions, summed for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Local {
    pub jobs: u64,
    /// Age of the oldest unfinished job, seconds.
    pub oldest_secs: f64,
}

impl Backlog {
    pub fn new(partitions: u32) -> Backlog {
        Backlog {
            slots: (0..partitions).map(|_| Slot::default()).collect(),
        }
    }

    /// What the reader of `partition` (owned here) measured at `now_ms`.
    pub fn record(&self, partition: u32, jobs: u64, oldest_ms: Option<i64>, now_ms: i64) {
        if let Some(s) = self.slots.get(partition as usize) {
            s.jobs.store(jobs, Ordering::Relaxed);
            s.oldest_ms.store(oldest_ms.unwrap_or(0), Ordering::Relaxed);
            s.at_ms.store(now_ms, Ordering::Relaxed);
            s.local_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    fn fresh(s: &Slot, now_ms: i64) -> bool {
        recent(s.at_ms.load(Ordering::Relaxed), now_ms)
    }

    fn mine(s: &Slot, now_ms: i64) -> bool {
        recent(s.local_ms.load(Ordering::Relaxed), now_ms)
    }

    /// The largest fresh backlog among `partitions`, and that partition.
    pub fn worst(&self, partitions: impl IntoIterator<Item = u32>, now_ms: i64) -> (u32, u64) {
        partitions
            .into_iter()
            .filter_map(|p| {
                let s = self.slots.get(p as usize)?;
                Self::fresh(s, now_ms).then(|| (p, s.jobs.load(Ordering::Relaxed)))
            })
            .max_by_key(|(_, jobs)| *jobs)
            .unwrap_or((0, 0))
    }

    /// The partitions this node's readers recorded lately, summed.
    pub fn local(&self, now_ms: i64) -> Local {
        let mut out = Local::default();
        for s in &self.slots {
            if !Self::mine(s, now_ms) {
                continue;
            }
            out.jobs += s.jobs.load(Ordering::Relaxed);
            let oldest = s.oldest_ms.load(Ordering::Relaxed);
            if oldest > 0 {
                out.oldest_secs = out
                    .oldest_secs
                    .max((now_ms - oldest).max(0) as f64 / 1000.0);
            }
        }
        out
    }

    /// This node's own readings, as the fields of `P:backlog`.
    pub fn published(&self, now_ms: i64) -> Vec<(String, String)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| Self::mine(s, now_ms))
            .map(|(p, s)| {
                (
                    p.to_string(),
                    format!(
                        "{} {} {}",
                        s.jobs.load(Ordering::Relaxed),
                        s.oldest_ms.load(Ordering::Relaxed),
                        s.at_ms.load(Ordering::Relaxed)
                    ),
                )
            })
            .collect()
    }

    /// Takes in the other nodes' readings (`P:backlog`), keeping whichever is newer.
    pub fn merge(&self, fields: &HashMap<String, String>) {
        for (p, v) in fields {
            let (Ok(p), Some((jobs, oldest, at))) = (p.parse::<usize>(), parse_reading(v)) else {
                continue;
            };
            let Some(s) = self.slots.get(p) else { continue };
            if at > s.at_ms.load(Ordering::Relaxed) {
                s.jobs.store(jobs, Ordering::Relaxed);
                s.oldest_ms.store(oldest, Ordering::Relaxed);
                s.at_ms.store(at, Ordering::Relaxed);
            }
        }
    }
}

/// Every second: this node's backlog into `/metrics`, and on Redis its readings out to the
/// other nodes and theirs in.
pub async fn share(store: Store, backlog: Arc<Backlog>, node: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = chrono::Utc::now().timestamp_millis();
        let local = backlog.local(now);
        crate::telemetry::backlog(&node, local.jobs, local.oldest_secs);
        if let Store::Redis(r) = &store {
            match r.share_backlog(&backlog.published(now)).await {
                Ok(all) => backlog.merge(&all),
                Err(e) => tracing::debug!(error = %e, "could not share the backlog"),
            }
        }
    }
}

/// Whether a reading taken at `at_ms` (0: never) still counts at `now_ms`.
fn recent(at_ms: i64, now_ms: i64) -> bool {
    at_ms > 0 && now_ms - at_ms <= STALE_MS
}

fn parse_reading(v: &str) -> Option<(u64, i64, i64)> {
    let mut w = v.split(' ');
    Some((
        w.next()?.parse().ok()?,
        w.next()?.parse().ok()?,
        w.next()?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_fresh_partition_decides_and_stale_readings_count_for_nothing() {
        let b = Backlog::new(4);
        b.record(1, 500, Some(9_000), 10_000);
        b.record(2, 50, None, 10_000);
        assert_eq!(b.worst([1, 2], 10_500), (1, 500));
        assert_eq!(b.worst([2, 3], 10_500), (2, 50));
        assert_eq!(b.worst([1], 10_000 + STALE_MS + 1), (0, 0), "stale");
        let local = b.local(10_000);
        assert_eq!(local.jobs, 550);
        assert_eq!(local.oldest_secs, 1.0);
    }

    #[test]
    fn readings_travel_between_nodes_and_the_newer_wins() {
        let a = Backlog::new(4);
        a.record(3, 7, Some(100), 1_000);
        let b = Backlog::new(4);
        b.merge(&a.published(1_000).into_iter().collect());
        assert_eq!(b.worst([3], 1_000), (3, 7));
        assert_eq!(b.local(1_000).jobs, 0, "not b's own");
        let older: HashMap<String, String> = [("3".to_string(), "99 0 500".to_string())].into();
        b.merge(&older);
        assert_eq!(b.worst([3], 1_000), (3, 7));
    }
}
