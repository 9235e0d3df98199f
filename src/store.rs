//! The store: every durable byte of Switchyard, behind one type with two backends.
//!
//! - [`RedisStore`]: the cluster backend (streams, hashes, Lua scripts), in `store::redis`.
//! - [`EmbeddedStore`]: a single-node, on-disk default built on `redb`, in `store::embedded`,
//!   so `switchyard serve` works on a fresh machine with nothing else installed.
//!
//! [`Store`] is an enum rather than a trait object: the set of backends is closed, every call
//! is a plain `match` (no boxing of futures on the hot path), and both backends answer the
//! same conformance tests (`tests/it/store_conformance.rs`). Logic that is the same for both
//! (replay ordering) lives here once.

pub mod cursor;
pub mod embedded;
pub mod redis;

use serde::{Deserialize, Serialize};

use crate::delivery::{Attempt, Delivery, Job, NewDelivery, Status};
use crate::endpoint::Endpoint;
pub use crate::endpoint::health::Health;
use crate::rule::Rule;
use crate::workspace::Workspace;
pub use embedded::EmbeddedStore;
pub use redis::RedisStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
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
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How long finished deliveries and their log are kept unless configured otherwise: 30 days.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// An accepted event and its deliveries, written at ingest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    pub created_at: String,
    pub deliveries: Vec<String>,
    #[serde(skip)]
    pub new_deliveries: Vec<NewDelivery>,
}

/// What an `Idempotency-Key` holds: the fingerprint of the body it was first used with, and
/// the answer once there is one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Remembered {
    #[serde(rename = "fp")]
    fingerprint: String,
    answer: Option<String>,
}

/// What [`Store::claim_idempotency`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key was unused: this request has it now.
    New,
    /// The same body was sent with the key before and is still being written (or its writer
    /// crashed): write again (ingest is idempotent), then answer.
    InProgress,
    /// The same body was sent and answered: this is its answer.
    Answered(String),
    /// The key was used with another body.
    Reused,
}

/// Filters of `GET /v1/deliveries`.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<String>,
    pub event_id: Option<String>,
    pub status: Option<Status>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// One page of a list, newest first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Deliveries of an endpoint by status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub pending: i64,
    pub retrying: i64,
    pub succeeded: i64,
    pub failed: i64,
}

impl Counts {
    /// From the stored per-status counters (a missing or negative one reads as 0).
    pub fn from_map(m: &std::collections::HashMap<String, i64>) -> Counts {
        let get = |k: &str| m.get(k).copied().unwrap_or(0).max(0);
        Counts {
            pending: get("pending"),
            retrying: get("retrying"),
            succeeded: get("succeeded"),
            failed: get("failed"),
        }
    }
}

/// The store of a node.
#[derive(Clone)]
pub enum Store {
    Redis(RedisStore),
    Embedded(EmbeddedStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Redis($s) => $e,
            Store::Embedded($s) => $e,
        }
    };
}

impl Store {
    /// The Redis store when `redis_url` is set, else the embedded store in `data_dir`.
    pub async fn open(config: &crate::config::Config) -> Result<Store> {
        match &config.redis_url {
            Some(url) => Ok(Store::Redis(
                RedisStore::connect(url, &config.key_prefix, config.partitions).await?,
            )),
            None => Ok(Store::Embedded(EmbeddedStore::open(
                &config.data_dir,
                config.partitions,
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

    /// Removes what is past the retention. Redis does it by itself (TTLs set at a final
    /// outcome, `MINID` on every stream append); the embedded store sweeps here. A delivery
    /// that is not final is never removed. Returns the deliveries removed.
    pub async fn trim(&self) -> Result<u64> {
        match self {
            Store::Redis(_) => Ok(0),
            Store::Embedded(s) => s.trim().await,
        }
    }

    /// Drops a partition's acknowledged jobs from its stream (Redis; the embedded store deletes
    /// a job when it is acknowledged). Returns how many.
    pub async fn trim_jobs(&self, partition: u32) -> Result<u64> {
        match self {
            Store::Redis(s) => s.trim_jobs(partition).await,
            Store::Embedded(_) => Ok(0),
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

    pub async fn create_workspace(&self, ws: &Workspace) -> Result<String> {
        each!(self, s => s.create_workspace(ws).await)
    }

    pub async fn workspace(&self, uuid: &str) -> Result<Option<Workspace>> {
        each!(self, s => s.workspace(uuid).await)
    }

    pub async fn add_api_key(&self, uuid: &str) -> Result<Option<String>> {
        each!(self, s => s.add_api_key(uuid).await)
    }

    pub async fn workspace_for_key(&self, key: &str) -> Result<Option<Workspace>> {
        each!(self, s => s.workspace_for_key(key).await)
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

    pub async fn rules_version(&self, ws: &str) -> Result<u64> {
        each!(self, s => s.rules_version(ws).await)
    }

    /// All rules of a workspace (newest first) and the version they were read at.
    pub async fn rules(&self, ws: &str) -> Result<(u64, Vec<Rule>)> {
        each!(self, s => s.rules(ws).await)
    }

    /// Writes events, their deliveries (each only if its id is new) and their jobs; returns
    /// once all of it is durable. Returns how many deliveries were created.
    pub async fn ingest(&self, ws: &str, events: &[NewEvent]) -> Result<u32> {
        each!(self, s => s.ingest(ws, events).await)
    }

    /// Claims an `Idempotency-Key` for a request whose body has `fingerprint`: the first
    /// request with the key claims it; a later one with the same body gets the first one's
    /// answer (or [`Claim::InProgress`] while it has none yet), with another body
    /// [`Claim::Reused`]. Claiming before the write, in one atomic step, is what makes two
    /// concurrent requests with one key and two bodies tell each other apart.
    pub async fn claim_idempotency(
        &self,
        ws: &str,
        key: &str,
        fingerprint: &str,
        ttl_secs: u64,
    ) -> Result<Claim> {
        let mine = serde_json::to_string(&Remembered {
            fingerprint: fingerprint.to_string(),
            answer: None,
        })?;
        let there = each!(self, s => s.claim_key(ws, key, &mine, ttl_secs).await)?;
        let Some(there) = there else {
            return Ok(Claim::New);
        };
        let there: Remembered = serde_json::from_str(&there)?;
        Ok(match there.answer {
            _ if there.fingerprint != fingerprint => Claim::Reused,
            Some(answer) => Claim::Answered(answer),
            None => Claim::InProgress,
        })
    }

    /// Stores the 202 answer of a claimed `Idempotency-Key`.
    pub async fn remember_answer(
        &self,
        ws: &str,
        key: &str,
        fingerprint: &str,
        answer: &str,
        ttl_secs: u64,
    ) -> Result<()> {
        let value = serde_json::to_string(&Remembered {
            fingerprint: fingerprint.to_string(),
            answer: Some(answer.to_string()),
        })?;
        each!(self, s => s.put_key(ws, key, &value, ttl_secs).await)
    }

    pub async fn delivery(&self, ws: &str, id: &str) -> Result<Option<Delivery>> {
        each!(self, s => s.delivery(ws, id).await)
    }

    /// The delivery of a job (whose partition is known, so Redis needs no lookup).
    pub async fn job_delivery(&self, job: &Job) -> Result<Option<Delivery>> {
        match self {
            Store::Redis(s) => {
                s.delivery_in(&job.workspace, job.partition, &job.delivery_id)
                    .await
            }
            Store::Embedded(s) => s.delivery(&job.workspace, &job.delivery_id).await,
        }
    }

    pub async fn attempts(&self, ws: &str, id: &str) -> Result<Vec<Attempt>> {
        each!(self, s => s.attempts(ws, id).await)
    }

    /// Records one attempt and the delivery's new status; at a final outcome acknowledges the
    /// job in the same write, and a `failed` delivery goes to the dead letter.
    pub async fn record_attempt(
        &self,
        job: &Job,
        attempt: &Attempt,
        from: Status,
        to: Status,
    ) -> Result<()> {
        each!(self, s => s.record_attempt(job, attempt, from, to).await)
    }

    /// Acknowledges a job whose delivery was already final (a duplicate) or is gone.
    pub async fn ack(&self, job: &Job) -> Result<()> {
        each!(self, s => s.ack(job).await)
    }

    /// Fails a delivery without an attempt (its endpoint was deleted) and acks its job.
    pub async fn fail_without_attempt(&self, job: &Job, from: Status) -> Result<()> {
        each!(self, s => s.fail_without_attempt(job, from).await)
    }

    /// Puts a finished delivery (in one of `from`) back in its partition for one more attempt;
    /// a `manual` one is sent at once, whatever the endpoint's breaker says.
    pub async fn requeue(
        &self,
        ws: &str,
        d: &Delivery,
        from: &[Status],
        manual: bool,
    ) -> Result<bool> {
        each!(self, s => s.requeue(ws, d, from, manual).await)
    }

    /// Requeues, in ingest order, the deliveries of `endpoint` that went to the dead letter in
    /// the window and are still failed. Returns how many.
    pub async fn replay(
        &self,
        ws: &str,
        endpoint: &str,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<u32> {
        let ids = each!(self, s => s.dead_letters(ws, endpoint, since_ms, until_ms).await)?;
        let mut deliveries = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(d) = self.delivery(ws, &id).await? {
                deliveries.push(d);
            }
        }
        deliveries.sort_by(|a, b| a.seq.cmp(&b.seq));
        let mut replayed = 0;
        for d in &deliveries {
            if self.requeue(ws, d, &[Status::Failed], false).await? {
                replayed += 1;
            }
        }
        Ok(replayed)
    }

    /// Lists deliveries newest first.
    pub async fn list_deliveries(
        &self,
        ws: &str,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>> {
        each!(self, s => s.list_deliveries(ws, filter, limit, cursor).await)
    }

    pub async fn save_health(&self, ws: &str, ep: &str, health: &Health) -> Result<()> {
        each!(self, s => s.save_health(ws, ep, health).await)
    }

    pub async fn health(&self, ws: &str, ep: &str) -> Result<Health> {
        each!(self, s => s.health(ws, ep).await)
    }

    pub async fn counts(&self, ws: &str, ep: &str) -> Result<Counts> {
        each!(self, s => s.counts(ws, ep).await)
    }

    /// A reader of `partition`'s jobs: this consumer's unfinished jobs first, in order, then new.
    pub async fn job_reader(&self, partition: u32) -> Result<JobReader> {
        Ok(match self {
            Store::Redis(s) => JobReader::Redis(s.job_reader(partition).await?),
            Store::Embedded(s) => JobReader::Embedded(s.job_reader(partition)),
        })
    }
}

/// A partition's job reader.
pub enum JobReader {
    Redis(redis::JobReader),
    Embedded(embedded::JobReader),
}

impl JobReader {
    /// Stamps the jobs it reads with a lease holder (Redis; a single node needs no fence).
    pub fn fenced(self, holder: Option<String>) -> Self {
        match (self, holder) {
            (JobReader::Redis(r), Some(h)) => JobReader::Redis(r.fenced(h)),
            (reader, _) => reader,
        }
    }

    /// Entries of the partition not yet read by its consumer (`switchyard_partition_lag`).
    pub async fn lag(&mut self) -> Result<i64> {
        match self {
            JobReader::Redis(r) => r.lag().await,
            JobReader::Embedded(r) => Ok(r.lag()),
        }
    }

    /// Up to `count` jobs, waiting up to `block` for new ones.
    pub async fn read(&mut self, count: usize, block: std::time::Duration) -> Result<Vec<Job>> {
        match self {
            JobReader::Redis(r) => r.read(count, block).await,
            JobReader::Embedded(r) => r.read(count, block).await,
        }
    }
}
