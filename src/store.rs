//! The store: every durable byte of Switchyard, behind one type with two backends.
//!
//! - [`RedisStore`]: the cluster backend (streams, hashes, Lua scripts), in `store::redis`.
//! - [`EmbeddedStore`]: a single-node, on-disk, log-structured default (fjall), in
//!   `store::embedded`, so `switchyard serve` works on a fresh machine with nothing else
//!   installed.
//!
//! [`Store`] is an enum rather than a trait object: the set of backends is closed, every call
//! is a plain `match` (no boxing of futures on the hot path), and both backends answer the
//! same conformance tests (`tests/it/store_conformance.rs`). Its face is split by role, one
//! file each: configuration (endpoints, rules, routines, health) here; [`tenants`]
//! (workspaces and their API keys);
//! [`jobs`] (ingest, a partition's reader, group-committed outcomes, requeues, retention);
//! [`log`] (the delivery and event log as the API reads it). [`record`] holds the stored forms
//! both backends share, and `packed` the one form of a job in either's partition log.

/// Calls the same method on whichever backend the store is.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Redis($s) => $e,
            Store::Embedded($s) => $e,
        }
    };
}

pub mod cursor;
pub mod embedded;
pub mod jobs;
pub mod log;
mod packed;
pub mod record;
pub mod redis;
pub mod tenants;

use serde::Serialize;

use crate::delivery::Status;
use crate::endpoint::Endpoint;
pub use crate::endpoint::health::Health;
use crate::rule::Rule;
pub use embedded::EmbeddedStore;
pub use jobs::{Idempotency, Ingested, JobReader, NewEvent, Outcome};
pub use record::Checkpoint;
pub use redis::RedisStore;
pub use tenants::Change;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or did not answer in time: retry later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Backend(String),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("the cursor is not a cursor of this list")]
    BadCursor,
    /// The embedded store's directory is open in another process.
    #[error("{0}")]
    InUse(String),
    /// A fenced write from a node that no longer holds the partition's lease.
    #[error("partition {0} is no longer owned by this node")]
    StaleLease(u32),
    /// The embedded store's disk is (nearly) full: nothing was written; retry when there is
    /// room (the store starts writing again by itself).
    #[error("{0}")]
    InsufficientStorage(String),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How long finished deliveries and their log are kept unless configured otherwise: 30 days.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Filters of `GET /v1/deliveries`.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<String>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub status: Option<Status>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// One page of a list, newest first.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "{T}Page")]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Deliveries of an endpoint by status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Counts {
    pub pending: i64,
    pub retrying: i64,
    pub succeeded: i64,
    pub failed: i64,
}

impl Counts {
    /// From the stored counters: `c` created, `r` retrying, `s` succeeded, `f` failed (pending
    /// is what is neither), so an outcome moves one counter, not two.
    pub fn from_stored(m: &std::collections::HashMap<String, i64>) -> Counts {
        let get = |k: &str| m.get(k).copied().unwrap_or(0).max(0);
        let (retrying, succeeded, failed) = (get("r"), get("s"), get("f"));
        Counts {
            pending: (get("c") - retrying - succeeded - failed).max(0),
            retrying,
            succeeded,
            failed,
        }
    }

    /// The counter moves of a status change: `(counter, delta)` pairs.
    pub fn moves(from: Status, to: Status) -> Vec<(&'static str, i64)> {
        let counter = |s: Status| match s {
            Status::Pending => None,
            Status::Retrying => Some("r"),
            Status::Succeeded => Some("s"),
            Status::Failed => Some("f"),
        };
        if from == to {
            return Vec::new();
        }
        counter(from)
            .map(|c| (c, -1))
            .into_iter()
            .chain(counter(to).map(|c| (c, 1)))
            .collect()
    }
}

/// The store of a node.
#[derive(Clone)]
pub enum Store {
    Redis(RedisStore),
    Embedded(EmbeddedStore),
}

impl Store {
    /// The Redis store when `redis_url` is set, else the embedded store in `data_dir`.
    pub async fn open(config: &crate::config::Config) -> Result<Store> {
        let retention = jobs::Retention {
            time: std::time::Duration::from_secs(config.retention_secs),
            max_per_partition: config.retention_max_per_partition,
        };
        match &config.redis_url {
            Some(url) => Ok(Store::Redis(
                RedisStore::connect(url, &config.key_prefix, config.partitions)
                    .await?
                    .with_retention(retention),
            )),
            None => Ok(Store::Embedded(EmbeddedStore::open_with(
                &config.data_dir,
                config.partitions,
                embedded::Settings {
                    retention,
                    min_free_bytes: config.min_free_disk_bytes,
                },
            )?)),
        }
    }

    pub fn partitions(&self) -> u32 {
        each!(self, s => s.partitions())
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Embedded(_) => "embedded",
        }
    }

    /// Tells every node that an endpoint changed, so its owner reloads it (Redis pub/sub; a
    /// single embedded node has only its own router, told directly by the API).
    pub async fn publish_change(&self, ws: &str, endpoint: &str) -> Result<()> {
        match self {
            Store::Redis(s) => s.publish_change(ws, endpoint).await,
            Store::Embedded(_) => Ok(()),
        }
    }

    pub async fn ping(&self) -> Result<()> {
        each!(self, s => s.ping().await)
    }

    pub async fn put_endpoint(&self, ws: &str, ep: &Endpoint) -> Result<()> {
        each!(self, s => s.put_endpoint(ws, ep).await)
    }

    pub async fn endpoint(&self, ws: &str, id: &str) -> Result<Option<Endpoint>> {
        each!(self, s => s.endpoint(ws, id).await)
    }

    /// Every endpoint of a workspace, newest first.
    pub async fn endpoints(&self, ws: &str) -> Result<Vec<Endpoint>> {
        each!(self, s => s.endpoints(ws).await)
    }

    /// The endpoints of these ids that exist.
    pub async fn endpoints_by_id(
        &self,
        ws: &str,
        ids: std::collections::HashSet<&str>,
    ) -> Result<std::collections::HashMap<String, Endpoint>> {
        each!(self, s => s.endpoints_by_id(ws, ids).await)
    }

    pub async fn delete_endpoint(&self, ws: &str, id: &str) -> Result<bool> {
        each!(self, s => s.delete_endpoint(ws, id).await)
    }

    pub async fn next_rule_id(&self, ws: &str) -> Result<u64> {
        each!(self, s => s.next_rule_id(ws).await)
    }

    /// Saves a rule and bumps the workspace's rule version in one write.
    pub async fn put_rule(&self, ws: &str, rule: &Rule) -> Result<()> {
        each!(self, s => s.put_rule(ws, rule).await)
    }

    pub async fn rule(&self, ws: &str, id: u64) -> Result<Option<Rule>> {
        each!(self, s => s.rule(ws, id).await)
    }

    pub async fn delete_rule(&self, ws: &str, id: u64) -> Result<bool> {
        each!(self, s => s.delete_rule(ws, id).await)
    }

    /// Every routine of every workspace.
    pub async fn routines(&self) -> Result<Vec<(String, Rule)>> {
        each!(self, s => s.routines().await)
    }

    /// Claims a routine's tick for this node; `false` when it was already claimed.
    pub async fn claim_tick(&self, ws: &str, uuid: &str, at_ms: i64) -> Result<bool> {
        each!(self, s => s.claim_tick(ws, uuid, at_ms).await)
    }

    /// The scheduled time (unix ms) of a routine's last claimed tick.
    pub async fn routine_last(&self, ws: &str, uuid: &str) -> Result<Option<i64>> {
        each!(self, s => s.routine_last(ws, uuid).await)
    }

    /// The workspace's rule-set and endpoint versions (each bumped by every change), read
    /// together so a cache of both costs one round trip.
    pub async fn versions(&self, ws: &str) -> Result<(u64, u64)> {
        each!(self, s => s.versions(ws).await)
    }

    /// All rules of a workspace (newest first) and the version they were read at.
    pub async fn rules(&self, ws: &str) -> Result<(u64, Vec<Rule>)> {
        each!(self, s => s.rules(ws).await)
    }

    pub async fn save_health(&self, ws: &str, ep: &str, health: &Health) -> Result<()> {
        each!(self, s => s.save_health(ws, ep, health).await)
    }

    pub async fn health(&self, ws: &str, ep: &str) -> Result<Health> {
        each!(self, s => s.health(ws, ep).await)
    }
}
