//! The Redis backend: the cluster store, on one Redis server or a Redis Cluster.
//!
//! One shared multiplexed connection ([`Conn`]) carries every command except the blocking
//! stream reads, which each partition consumer makes on a connection of its own with no
//! response timeout (a blocking read stalls a multiplexed connection, and the default 500 ms
//! response timeout would cut `BLOCK` short).
//!
//! The key layout (`docs/architecture.md`) has two kinds of hash tags so that it runs on a
//! Redis Cluster unchanged: a workspace's own records share the slot of `{W}` (`P:ws:{W}:...`:
//! endpoints, rules, the event log, idempotency records), and everything a delivery's life
//! writes atomically — its job, its state, the counts, the dead letter, the checkpoint and the
//! lease — shares its partition's slot (`P:{pN}:...`). On one Redis an ingest is one script
//! over both kinds; on a cluster it is one script per slot, ordered so that a retry of the same
//! request repairs a crash between them.

mod cluster;
mod conn;
mod health;
mod ingest;
mod jobs;
mod log;
mod reader;
mod scripts;
mod tenants;

use redis::AsyncCommands;

use crate::endpoint::Endpoint;
use crate::rule::Rule;

pub use cluster::NodeInfo;
pub use conn::Conn;
pub use reader::{JobReader, Lag, MultiReader};

use super::jobs::Retention;
use super::{Result, StoreError};

/// Claims a routine tick once: KEYS tick, last-fired; ARGV scheduled ms, TTL seconds.
const CLAIM: &str = r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[1]) > last then redis.call('SET', KEYS[2], ARGV[1]) end
  return 1
end
return 0
"#;

static CLAIM_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CLAIM));

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        let unavailable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal();
        if unavailable {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Backend(e.to_string())
        }
    }
}

/// The Redis store. Cheap to clone: the connection manager is shared.
#[derive(Clone)]
pub struct RedisStore {
    target: std::sync::Arc<conn::Target>,
    conn: Conn,
    prefix: String,
    partitions: u32,
    /// How long and how many finished deliveries are kept.
    retention: Retention,
    /// The ingest requests waiting for the next grouped call (`ingest`).
    group: std::sync::Arc<ingest::Group>,
}

impl RedisStore {
    /// Connects (and keeps reconnecting in the background when the link drops). `url` is one
    /// server, or comma-separated seeds of a Redis Cluster (found out with `INFO cluster`).
    pub async fn connect(url: &str, prefix: &str, partitions: u32) -> Result<RedisStore> {
        let target = conn::Target::discover(url).await?;
        let conn = target.shared().await?;
        Ok(RedisStore {
            target: std::sync::Arc::new(target),
            conn,
            prefix: prefix.to_string(),
            partitions,
            retention: Retention::default(),
            group: Default::default(),
        })
    }

    /// Keeps finished deliveries as `retention` says (default 30 days, 1,000,000 per
    /// partition).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The oldest stream id (unix ms) a trimmed stream keeps.
    pub(crate) fn retention_cutoff_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() - self.retention.time.as_millis() as i64
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Whether the store runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }

    pub(crate) fn conn(&self) -> Conn {
        self.conn.clone()
    }

    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}:{}", self.prefix, rest)
    }

    /// A workspace record: `P:ws:{W}` or `P:ws:{W}:rest`, all in the slot of `{W}`.
    pub(crate) fn ws_key(&self, ws: &str, rest: &str) -> String {
        if rest.is_empty() {
            self.key(&format!("ws:{{{ws}}}"))
        } else {
            self.key(&format!("ws:{{{ws}}}:{rest}"))
        }
    }

    /// The partition whose slot holds an endpoint's deliveries.
    pub(crate) fn partition_of(&self, endpoint: &str) -> u32 {
        crate::delivery::partition_of(endpoint, self.partitions)
    }

    /// Round trip to Redis, for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    // ---- endpoints --------------------------------------------------------------------------

    /// Saves an endpoint and bumps the workspace's endpoint version in one transaction, so
    /// every node's cache sees the change on its next ingest.
    pub async fn put_endpoint(&self, ws: &str, ep: &Endpoint) -> Result<()> {
        let json = serde_json::to_string(ep)?;
        redis::pipe()
            .atomic()
            .hset(self.ws_key(ws, "ep"), &ep.id, json)
            .incr(self.ws_key(ws, "ep:ver"), 1)
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    pub async fn endpoint(&self, ws: &str, id: &str) -> Result<Option<Endpoint>> {
        let json: Option<String> = self.conn().hget(self.ws_key(ws, "ep"), id).await?;
        json.map(|j| serde_json::from_str(&j).map_err(StoreError::from))
            .transpose()
    }

    /// Every endpoint of a workspace, newest first (ids are time-ordered UUIDv7).
    pub async fn endpoints(&self, ws: &str) -> Result<Vec<Endpoint>> {
        let all: Vec<String> = self.conn().hvals(self.ws_key(ws, "ep")).await?;
        let mut eps = all
            .iter()
            .map(|j| serde_json::from_str::<Endpoint>(j))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        eps.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(eps)
    }

    /// The endpoints of these ids that exist, in one round trip.
    pub async fn endpoints_by_id(
        &self,
        ws: &str,
        ids: std::collections::HashSet<&str>,
    ) -> Result<std::collections::HashMap<String, Endpoint>> {
        let ids: Vec<&str> = ids.into_iter().collect();
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let found: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.ws_key(ws, "ep"))
            .arg(&ids)
            .query_async(&mut self.conn())
            .await?;
        let mut out = std::collections::HashMap::new();
        for json in found.into_iter().flatten() {
            let ep: Endpoint = serde_json::from_str(&json)?;
            out.insert(ep.id.clone(), ep);
        }
        Ok(out)
    }

    /// Deletes an endpoint; `false` when it did not exist.
    pub async fn delete_endpoint(&self, ws: &str, id: &str) -> Result<bool> {
        let (n, _): (u32, u64) = redis::pipe()
            .atomic()
            .hdel(self.ws_key(ws, "ep"), id)
            .incr(self.ws_key(ws, "ep:ver"), 1)
            .query_async(&mut self.conn())
            .await?;
        Ok(n > 0)
    }

    // ---- rules ------------------------------------------------------------------------------

    pub async fn next_rule_id(&self, ws: &str) -> Result<u64> {
        Ok(self.conn().incr(self.ws_key(ws, "rules:seq"), 1).await?)
    }

    /// Saves a rule and bumps the rule-set version in one transaction, so every node's cache
    /// sees the change on its next version check. The global routine set is another slot: a
    /// routine joins it before its rule is written and leaves it after, so a crash between
    /// the two leaves at most a member whose rule has no schedule (the scheduler skips it).
    pub async fn put_rule(&self, ws: &str, rule: &Rule) -> Result<()> {
        let json = serde_json::to_string(rule)?;
        let member = format!("{ws}\t{}", rule.id);
        let mut conn = self.conn();
        if rule.spec.schedule.is_some() {
            let _: () = conn.sadd(self.key("routines"), &member).await?;
        }
        redis::pipe()
            .atomic()
            .hset(self.ws_key(ws, "rules"), rule.id, json)
            .incr(self.ws_key(ws, "rules:ver"), 1)
            .exec_async(&mut conn)
            .await?;
        if rule.spec.schedule.is_none() {
            let _: () = conn.srem(self.key("routines"), &member).await?;
        }
        Ok(())
    }

    /// Every routine of every workspace, with its workspace.
    pub async fn routines(&self) -> Result<Vec<(String, Rule)>> {
        let members: Vec<String> = self.conn().smembers(self.key("routines")).await?;
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            let Some((ws, id)) = m.split_once('\t') else {
                continue;
            };
            if let Some(rule) = self.rule(ws, id.parse().unwrap_or(0)).await? {
                out.push((ws.to_string(), rule));
            }
        }
        Ok(out)
    }

    /// Claims one tick of a routine for this node (`SET NX`, kept a week) and moves the
    /// routine's last-fired mark forward; `false` when another node (or an earlier pass) has it.
    pub async fn claim_tick(&self, ws: &str, uuid: &str, at_ms: i64) -> Result<bool> {
        let claimed: i64 = CLAIM_SCRIPT
            .key(self.ws_key(ws, &format!("tick:{uuid}:{at_ms}")))
            .key(self.ws_key(ws, &format!("routine:{uuid}:last")))
            .arg(at_ms)
            .arg(7 * 24 * 3600)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(claimed == 1)
    }

    /// The scheduled time (unix ms) of the routine's last claimed tick.
    pub async fn routine_last(&self, ws: &str, uuid: &str) -> Result<Option<i64>> {
        Ok(self
            .conn()
            .get(self.ws_key(ws, &format!("routine:{uuid}:last")))
            .await?)
    }

    pub async fn rule(&self, ws: &str, id: u64) -> Result<Option<Rule>> {
        let json: Option<String> = self.conn().hget(self.ws_key(ws, "rules"), id).await?;
        json.map(|j| serde_json::from_str(&j).map_err(StoreError::from))
            .transpose()
    }

    pub async fn delete_rule(&self, ws: &str, id: u64) -> Result<bool> {
        let mut conn = self.conn();
        let (n, _): (u32, u64) = redis::pipe()
            .atomic()
            .hdel(self.ws_key(ws, "rules"), id)
            .incr(self.ws_key(ws, "rules:ver"), 1)
            .query_async(&mut conn)
            .await?;
        let _: () = conn
            .srem(self.key("routines"), format!("{ws}\t{id}"))
            .await?;
        Ok(n > 0)
    }

    pub async fn versions(&self, ws: &str) -> Result<(u64, u64)> {
        let (r, e): (Option<u64>, Option<u64>) = redis::cmd("MGET")
            .arg(self.ws_key(ws, "rules:ver"))
            .arg(self.ws_key(ws, "ep:ver"))
            .query_async(&mut self.conn())
            .await?;
        Ok((r.unwrap_or(0), e.unwrap_or(0)))
    }

    /// All rules of a workspace with the version they were read at (one transaction).
    pub async fn rules(&self, ws: &str) -> Result<(u64, Vec<Rule>)> {
        let (ver, all): (Option<u64>, Vec<String>) = redis::pipe()
            .atomic()
            .get(self.ws_key(ws, "rules:ver"))
            .hvals(self.ws_key(ws, "rules"))
            .query_async(&mut self.conn())
            .await?;
        let mut rules = all
            .iter()
            .map(|j| serde_json::from_str::<Rule>(j))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        rules.sort_by_key(|r| std::cmp::Reverse(r.id));
        Ok((ver.unwrap_or(0), rules))
    }
}
