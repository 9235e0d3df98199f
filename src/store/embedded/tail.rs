//! The newest jobs of each partition, in memory, for the partition's reader.
//!
//! A reader that keeps up with ingest asks for the jobs the writer committed a moment ago.
//! Read back from the keyspace, each read was a range scan merging the memtables and tables of
//! `q`, and every job a parse of its value: 8 % of a busy embedded node's CPU (`perf` of the
//! issue's row, `docs/benchmarks.md`). The writer hands every job it committed to its
//! partition's tail as well, after the commit and before it wakes the reader, so the reader
//! takes the jobs it needs from memory whenever the tail reaches back to where it stands. It
//! reads the keyspace only when it does not: after the store opened, after a restart of the
//! partition's owner, or when ingest ran further ahead than the tail holds.
//!
//! The one invariant: a tail holds every job of its partition after [`Tail::from`], in order.
//! The writer pushes jobs in the order it numbered them; dropping the oldest (the tail is
//! bounded by bytes) or handing them out moves `from` past them.

use std::collections::VecDeque;

use crate::delivery::EntryId;
use crate::store::jobs::RawJob;

/// Bytes of jobs the partitions' tails hold at most, together.
const TAILS_BYTES: usize = 64 << 20;
/// Bytes of jobs one tail holds at least, however many partitions share [`TAILS_BYTES`].
const TAIL_MIN_BYTES: usize = 64 << 10;

/// What each of `partitions` tails may hold: an equal share of [`TAILS_BYTES`] (1 MiB at the
/// default 64 partitions).
pub(super) fn budget(partitions: u32) -> usize {
    (TAILS_BYTES / partitions.max(1) as usize).max(TAIL_MIN_BYTES)
}

/// A partition's newest jobs.
pub(super) struct Tail {
    /// Every job after this entry is in `jobs`.
    from: EntryId,
    jobs: VecDeque<RawJob>,
    bytes: usize,
    max_bytes: usize,
}

/// What a job holds in memory, roughly.
fn size(raw: &RawJob) -> usize {
    let j = &raw.job;
    160 + j.workspace.len()
        + j.endpoint_id.len()
        + j.event_id.len()
        + j.event_type.len()
        + j.key.len()
        + j.body.len()
}

impl Tail {
    /// An empty tail of a partition whose last job is `last`.
    pub(super) fn new(last: EntryId, max_bytes: usize) -> Tail {
        Tail {
            from: last,
            jobs: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// A job the writer just committed: the partition's newest.
    pub(super) fn push(&mut self, raw: RawJob) {
        debug_assert!(raw.job.entry > self.jobs.back().map_or(self.from, |j| j.job.entry));
        self.bytes += size(&raw);
        self.jobs.push_back(raw);
        while self.bytes > self.max_bytes {
            self.pop();
        }
    }

    fn pop(&mut self) -> Option<RawJob> {
        let raw = self.jobs.pop_front()?;
        self.bytes -= size(&raw);
        self.from = raw.job.entry;
        Some(raw)
    }

    /// Up to `count` jobs after `after`, or `None` when the tail does not reach back to
    /// `after` (the keyspace has jobs after it that the tail does not). Jobs up to `after`
    /// are dropped: the reader has them.
    pub(super) fn take(&mut self, after: EntryId, count: usize) -> Option<Vec<RawJob>> {
        while self.jobs.front().is_some_and(|j| j.job.entry <= after) {
            self.pop();
        }
        if after < self.from {
            return None;
        }
        let n = count.min(self.jobs.len());
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.extend(self.pop());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::delivery::{DeliveryId, Job, Progress};

    fn job(seq: u64, body: &str) -> RawJob {
        let entry = EntryId { ms: 1, seq };
        RawJob {
            job: Job {
                id: DeliveryId {
                    partition: 0,
                    entry,
                },
                entry,
                workspace: "ws".into(),
                endpoint_id: "ep".into(),
                rule_id: 1,
                event_id: "evt".into(),
                event_type: "t".into(),
                key: String::new(),
                body: Arc::from(body),
                manual: false,
                progress: Progress::NEW,
            },
            requeued: false,
        }
    }

    fn seqs(jobs: &[RawJob]) -> Vec<u64> {
        jobs.iter().map(|j| j.job.entry.seq).collect()
    }

    fn at(seq: u64) -> EntryId {
        EntryId { ms: 1, seq }
    }

    /// A tail of at most `max` bytes that was handed jobs 1 to `n`.
    fn handed(n: u64, body: &str, max: usize) -> Tail {
        let mut tail = Tail::new(at(0), max);
        for s in 1..=n {
            tail.push(job(s, body));
        }
        tail
    }

    #[test]
    fn a_reader_gets_what_followed_its_position_and_nothing_twice() {
        let mut tail = handed(5, "{}", budget(64));
        assert_eq!(seqs(&tail.take(at(0), 2).unwrap()), [1, 2]);
        assert_eq!(seqs(&tail.take(at(2), 10).unwrap()), [3, 4, 5]);
        assert!(tail.take(at(5), 10).unwrap().is_empty(), "nothing new");
        // A reader that starts again further back than the tail reaches reads the keyspace.
        assert!(tail.take(at(3), 10).is_none());
    }

    #[test]
    fn a_reader_ahead_of_the_tail_start_skips_what_it_has() {
        let mut tail = handed(4, "{}", budget(64));
        // Read 1 and 2 from the keyspace (the scan overlapped the tail): the tail serves 3, 4.
        assert_eq!(seqs(&tail.take(at(2), 10).unwrap()), [3, 4]);
    }

    #[test]
    fn a_full_tail_drops_its_oldest_and_sends_a_reader_behind_it_to_the_keyspace() {
        let body = "x".repeat(1000);
        let max = 3 * size(&job(1, &body));
        let mut tail = handed(5, &body, max);
        assert!(tail.take(at(0), 10).is_none(), "1 and 2 were dropped");
        assert!(tail.take(at(1), 10).is_none());
        assert_eq!(seqs(&tail.take(at(2), 10).unwrap()), [3, 4, 5]);
    }
}
