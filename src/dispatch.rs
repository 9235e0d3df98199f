//! Dispatch: from a job in a partition stream to an HTTP POST, per endpoint, in order.
//!
//! # Supervision tree
//!
//! ```text
//! node (tokio tasks)
//! ├── partition consumer p0 ─┐  XREADGROUP as consumer `p<N>`, bounded by `partition_buffer`
//! ├── ...                    ├──▶ RuleRouter (actor, supervisor)
//! └── partition consumer pN ─┘      ├── EndpointActor(ws, ep A)   spawn_linked on first job
//!                                   ├── EndpointActor(ws, ep B)   restarted if it panics
//!                                   └── ...                       stopped when idle
//! ```
//!
//! The consumers are plain tasks, not actors: each spends its life in a blocking `XREADGROUP`
//! on its own connection, which an actor's mailbox could not interrupt anyway.
//!
//! The RuleRouter owns one [`EndpointQueue`] per endpoint and lends it to that endpoint's actor.
//! Because the supervisor holds the queue, an actor that panics loses nothing: its replacement
//! starts on the same queue (and re-reads attempt counts and schedules from the store). The
//! router also decides idle stops, under the queue's lock, so a job can never be routed to an
//! actor that is already stopping.

mod consumer;
mod endpoint_actor;
pub mod policy;
mod router;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;

use crate::deliverer::Deliverer;
use crate::delivery::Job;
use crate::store::Store;

pub use consumer::{spawn_consumers, spawn_fenced_consumer};
pub use endpoint_actor::{EndpointActor, EndpointMsg};
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
    pub rules: Arc<crate::rule::cache::RuleCache>,
}

/// A job and the consumer buffer slot it occupies until its final outcome.
#[derive(Debug)]
pub struct QueuedJob {
    pub job: Job,
    _permit: Option<OwnedSemaphorePermit>,
}

impl QueuedJob {
    pub fn new(job: Job, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            job,
            _permit: permit,
        }
    }
}

/// The FIFO of one endpoint. Jobs stay in it until their final outcome.
pub type EndpointQueue = Arc<Mutex<VecDeque<QueuedJob>>>;

/// `(workspace, endpoint id)`.
pub type EndpointKey = (String, String);
