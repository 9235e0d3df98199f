//! The partitions this node owns: reading their logs into the RuleRouter, and committing the
//! outcomes their endpoint actors send back.
//!
//! - **Reading** (`reader`): a partition's jobs are read from its checkpoint. On one Redis one
//!   task reads every owned partition with a single `XREAD` over all their streams (one call
//!   and one wake-up for many partitions, not one per partition); on a Redis Cluster (whose
//!   streams are in different slots) and on the embedded store each partition has a reader
//!   task of its own. A partition holds at most `partition_buffer` unfinished jobs (a semaphore
//!   permit rides with each job until its final outcome), so a backlog of millions stays in the
//!   store; the jobs read and not final yet are its open set. Every `RESCAN_EVERY` the open jobs
//!   that no endpoint queue holds are routed again, so no job read can be stranded; and
//!   retention runs over the partition.
//! - **Committing** (`committer`): one task per node takes the outcomes every actor sends it
//!   and writes them, grouped by partition with each partition's checkpoint, in one fenced
//!   round trip (one script on one Redis, one per partition concurrently on a cluster, one
//!   commit on the embedded store). There is no batching timer: a commit starts as soon as the
//!   previous one returned, with whatever gathered meanwhile, so batches grow with load and a
//!   lone strict endpoint waits one round trip. Each actor hears of its own outcome when it is
//!   durable, and only then sends that endpoint's next delivery.
//!
//! A partition owned under a Redis lease carries a [`Lease`]: its local deadline, on the
//! monotonic clock, is checked before every send, and its holder fences every commit.

mod committer;
mod reader;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backlog::Backlog;
use super::endpoint_actor::EndpointMsg;
use super::router::RouterMsg;
use crate::delivery::EntryId;
use crate::store::{Outcome, Store};

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
    /// deadline (SIGSTOP, a VM freeze) sees it passed when it resumes, because the monotonic
    /// clock kept running.
    pub fn valid(&self) -> bool {
        let now = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64;
        now < self.valid_until.load(Ordering::SeqCst)
    }
}

/// One outcome on its way to the committer, and the actor to tell.
pub struct Commit {
    pub outcome: Arc<Outcome>,
    /// The job's own entry (for the open set; a requeued job's entry is not its delivery's).
    pub entry: EntryId,
    pub reply: ActorRef<EndpointMsg>,
    pub partition: Arc<PartitionHandle>,
    /// Written by the attempt itself, not by its actor: the reply is
    /// [`EndpointMsg::AttemptCommitted`], which carries the outcome back to the actor.
    pub direct: bool,
}

/// The jobs read and not final yet, and how far the reader has read.
#[derive(Default)]
struct Open {
    entries: BTreeSet<EntryId>,
    read_upto: EntryId,
    /// When each open entry was routed (for the rescan).
    routed: BTreeMap<EntryId, Instant>,
    /// The checkpoint last written, and when.
    written: Option<(crate::store::Checkpoint, Instant)>,
}

/// How often a partition's checkpoint moves when no outcome needs it to: a new owner reads
/// again from `done_below`, so a checkpoint this old costs it a second of jobs looked up.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// A partition owned by this node, as its reader, its actors and the committer see it.
pub struct PartitionHandle {
    pub partition: u32,
    pub lease: Option<Arc<Lease>>,
    commits: mpsc::UnboundedSender<Commit>,
    open: Mutex<Open>,
}

impl std::fmt::Debug for PartitionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionHandle")
            .field("partition", &self.partition)
            .finish()
    }
}

impl PartitionHandle {
    /// Unix ms of the oldest job read and not final yet.
    pub fn oldest_open_ms(&self) -> Option<i64> {
        let open = self.open.lock().expect("open set");
        open.entries.first().map(|e| e.ms as i64)
    }

    /// Whether this node may send for the partition now.
    pub fn may_send(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.valid())
    }

    /// Hands an outcome to the committer; `false` when the node is stopping.
    pub fn commit(
        self: &Arc<Self>,
        outcome: Arc<Outcome>,
        entry: EntryId,
        reply: ActorRef<EndpointMsg>,
    ) -> bool {
        self.send_commit(outcome, entry, reply, false)
    }

    /// Sends an attempt's outcome to the committer without its actor deciding it first (a
    /// success of a `strict` endpoint, see [`crate::dispatch::endpoint_actor`]); the actor
    /// learns of the attempt and its commit in one message. `false` when the partition is no
    /// longer owned here.
    pub fn commit_attempt(
        self: &Arc<Self>,
        outcome: Arc<Outcome>,
        entry: EntryId,
        reply: ActorRef<EndpointMsg>,
    ) -> bool {
        self.send_commit(outcome, entry, reply, true)
    }

    fn send_commit(
        self: &Arc<Self>,
        outcome: Arc<Outcome>,
        entry: EntryId,
        reply: ActorRef<EndpointMsg>,
        direct: bool,
    ) -> bool {
        self.commits
            .send(Commit {
                outcome,
                entry,
                reply,
                partition: self.clone(),
                direct,
            })
            .is_ok()
    }

    /// Jobs were read (and will be routed) up to `position`.
    fn opened(&self, entries: impl IntoIterator<Item = EntryId>, position: EntryId) {
        let now = Instant::now();
        let mut open = self.open.lock().expect("open lock");
        for e in entries {
            open.entries.insert(e);
            open.routed.insert(e, now);
        }
        open.read_upto = open.read_upto.max(position);
    }

    /// The checkpoint to write with a batch of outcomes of `entries` that finishes
    /// `finishing`, or `None` when the stored one may stay. It must move when an outcome is
    /// of a job after the stored `read_upto`: a new owner takes jobs after it for new and
    /// would send a finished one again. Otherwise it moves at most every
    /// [`CHECKPOINT_EVERY`], so most batches write no checkpoint.
    fn checkpoint(
        &self,
        entries: impl IntoIterator<Item = EntryId>,
        finishing: &BTreeSet<EntryId>,
    ) -> Option<crate::store::Checkpoint> {
        let open = self.open.lock().expect("open lock");
        let done_below = open
            .entries
            .iter()
            .find(|e| !finishing.contains(e))
            .copied()
            .unwrap_or(open.read_upto.next());
        let next = crate::store::Checkpoint {
            done_below,
            read_upto: open.read_upto,
        };
        let due = match &open.written {
            None => true,
            Some((stored, at)) => {
                entries.into_iter().any(|e| e > stored.read_upto)
                    || (*stored != next && at.elapsed() >= CHECKPOINT_EVERY)
            }
        };
        due.then_some(next)
    }

    /// A checkpoint was written.
    fn checkpoint_written(&self, checkpoint: crate::store::Checkpoint) {
        self.open.lock().expect("open lock").written = Some((checkpoint, Instant::now()));
    }

    /// These jobs reached their final outcome.
    fn finished(&self, entries: impl IntoIterator<Item = EntryId>) {
        let mut open = self.open.lock().expect("open lock");
        for e in entries {
            open.entries.remove(&e);
            open.routed.remove(&e);
        }
    }
}

/// This node's dispatch plumbing: the committer, and on one Redis the reader of every
/// partition.
pub struct Dispatch {
    store: Store,
    router: ActorRef<RouterMsg>,
    node: String,
    buffer: usize,
    commits: mpsc::UnboundedSender<Commit>,
    committer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop_committing: CancellationToken,
    /// One Redis: the reader of every owned partition takes new ones here.
    shared_reader: Option<mpsc::UnboundedSender<reader::Owned>>,
    stop_reading: CancellationToken,
    /// What the readers measure of their partitions' backlogs (and, on Redis, the others').
    pub backlog: Arc<Backlog>,
}

/// Stops reading one owned partition.
pub struct PartitionOwner {
    pub stop: CancellationToken,
    done: oneshot::Receiver<()>,
}

impl PartitionOwner {
    /// Stops reading and waits until the partition's reader has let it go.
    pub async fn stop_reading(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

impl Dispatch {
    /// Starts the committer (and, on one Redis, the shared reader).
    pub fn start(
        store: Store,
        router: ActorRef<RouterMsg>,
        node: String,
        buffer: usize,
    ) -> Dispatch {
        let (commits, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::new(store.partitions()));
        let stop_committing = CancellationToken::new();
        let committer = tokio::spawn(committer::run(
            store.clone(),
            node.clone(),
            rx,
            stop_committing.clone(),
        ));
        let stop_reading = CancellationToken::new();
        let shared_reader = match &store {
            Store::Redis(r) if !r.is_cluster() => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(reader::read_shared(
                    reader::Common {
                        store: store.clone(),
                        router: router.clone(),
                        node: node.clone(),
                        buffer,
                        backlog: backlog.clone(),
                    },
                    rx,
                    stop_reading.clone(),
                ));
                Some(tx)
            }
            _ => None,
        };
        Dispatch {
            store,
            router,
            node,
            buffer,
            commits,
            committer: Mutex::new(Some(committer)),
            stop_committing,
            shared_reader,
            stop_reading,
            backlog,
        }
    }

    /// Starts reading `partition`, owned under `lease` (Redis) or for good (embedded).
    pub fn own(&self, partition: u32, lease: Option<Arc<Lease>>) -> PartitionOwner {
        let handle = Arc::new(PartitionHandle {
            partition,
            lease,
            commits: self.commits.clone(),
            open: Mutex::new(Open::default()),
        });
        let stop = CancellationToken::new();
        let (done_tx, done) = oneshot::channel();
        let owned = reader::Owned {
            handle,
            stop: stop.clone(),
            _done: done_tx,
        };
        let common = reader::Common {
            store: self.store.clone(),
            router: self.router.clone(),
            node: self.node.clone(),
            buffer: self.buffer,
            backlog: self.backlog.clone(),
        };
        match &self.shared_reader {
            Some(tx) => {
                let _ = tx.send(owned);
            }
            None => {
                tokio::spawn(reader::read_one(common, owned));
            }
        }
        PartitionOwner { stop, done }
    }

    /// Stops the shared reader and the committer; called once every actor has drained, so
    /// nothing is waiting to be committed.
    pub async fn stop(&self) {
        self.stop_reading.cancel();
        self.stop_committing.cancel();
        let committer = self.committer.lock().expect("committer lock").take();
        if let Some(c) = committer {
            let _ = c.await;
        }
    }
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

    #[test]
    fn a_checkpoint_moves_when_an_outcome_passes_the_stored_one_and_else_rarely() {
        let (commits, _rx) = mpsc::unbounded_channel();
        let handle = PartitionHandle {
            partition: 0,
            lease: None,
            commits,
            open: Mutex::new(Open::default()),
        };
        let e = |seq| EntryId { ms: 1, seq };
        handle.opened([e(1), e(2), e(3)], e(3));
        let none = BTreeSet::new();
        let first = handle
            .checkpoint([e(1)], &none)
            .expect("nothing written yet");
        assert_eq!((first.done_below, first.read_upto), (e(1), e(3)));
        handle.checkpoint_written(first);
        let done: BTreeSet<_> = [e(1)].into();
        assert_eq!(
            handle.checkpoint([e(1)], &done),
            None,
            "within the stored read_upto and the second: no write"
        );
        handle.opened([e(4)], e(4));
        let moved = handle
            .checkpoint([e(4)], &none)
            .expect("an outcome after the stored read_upto must move it");
        assert_eq!(moved.read_upto, e(4));
        handle.open.lock().unwrap().written = Some((first, Instant::now() - CHECKPOINT_EVERY));
        assert!(
            handle.checkpoint([e(2)], &done).is_some(),
            "a changed checkpoint moves once a second"
        );
    }
}
