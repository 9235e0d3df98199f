//! Dispatch: from a job in a partition stream to an HTTP POST, per endpoint, in order.
//!
//! # Supervision tree
//!
//! ```text
//! node (tokio tasks)
//! ├── partition p0: reader ─┐  reads its log from the checkpoint, bounded by `partition_buffer`
//! │                committer ◀──┐ outcomes, one fenced commit per batch
//! ├── ...                   ├──▶ RuleRouter (actor, supervisor)
//! └── partition pN ─────────┘ │    ├── EndpointActor(ws, ep A)   spawn_linked on first job
//!                             └────┤── EndpointActor(ws, ep B)   restarted if it panics
//!                                  └── ...                       stopped when idle
//! ```
//!
//! A partition's reader and committer are plain tasks, not actors: the reader spends its life
//! in a blocking read on its own connection, which a mailbox could not interrupt anyway, and
//! the committer is a loop over a channel (see [`partition`]).
//!
//! The RuleRouter owns one [`EndpointQueue`] per endpoint and lends it to that endpoint's actor.
//! Because the supervisor holds the queue, an actor that panics loses nothing: its replacement
//! starts on the same queue (and re-reads attempt counts and schedules from the store). The
//! router also decides idle stops, under the queue's lock, so a job can never be routed to an
//! actor that is already stopping.

pub mod backlog;
mod endpoint_actor;
pub mod partition;
pub mod policy;
mod router;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;

use crate::deliverer::Deliverer;
use crate::delivery::Job;
use crate::store::Store;

pub use backlog::Backlog;
pub use endpoint_actor::{EndpointActor, EndpointMsg};
pub use partition::{Dispatch, Lease, PartitionHandle, PartitionOwner};
pub use router::{RouterMsg, RuleRouter};

/// What every dispatch actor shares.
pub struct DispatchContext {
    pub store: Store,
    pub deliverer: Deliverer,
    /// An endpoint actor with an empty queue for this long asks to be stopped.
    pub idle: std::time::Duration,
    pub policy: policy::DispatchPolicy,
    /// This node's id, the `node` label of its metrics.
    pub node: String,
    /// The rule sets (shared with the API), to route the operational events actors emit.
    pub rules: Arc<crate::ingest::cache::WorkspaceCache>,
}

/// A job, the reader's buffer slot it occupies until its final outcome, and its partition
/// (where its outcome goes, and the lease its sends depend on).
#[derive(Debug)]
pub struct QueuedJob {
    /// Shared with the attempt in flight (no copy of its strings per attempt).
    pub job: Arc<Job>,
    pub partition: Arc<PartitionHandle>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl QueuedJob {
    pub fn new(
        job: Job,
        permit: Option<OwnedSemaphorePermit>,
        partition: Arc<PartitionHandle>,
    ) -> Self {
        Self {
            job: Arc::new(job),
            partition,
            _permit: permit,
        }
    }

    /// Routed again by a partition's rescan (such a job holds no buffer slot).
    pub fn rerouted(&self) -> bool {
        self._permit.is_none()
    }
}

/// The FIFO of one endpoint. Jobs stay in it until their final outcome.
pub type EndpointQueue = Arc<Mutex<VecDeque<QueuedJob>>>;

/// `(workspace, endpoint id)`.
pub type EndpointKey = (String, String);
