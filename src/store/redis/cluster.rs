//! Cluster state in Redis: partition leases with fencing tokens, and node membership.
//!
//! A lease is `P:{p<N>}:lease` = `"{node}:{token}"`, set with `NX PX`; the token comes from
//! `INCR P:{p<N>}:fence`, so every acquisition of a partition has a larger token than the one
//! before. Renewal and release are scripts that act only if the holder string still matches.
//! Membership is a sorted set of node ids scored by their last heartbeat, plus one JSON record
//! per node with a TTL.

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::RedisStore;
use crate::store::Result;

const ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
local holder = ARGV[1] .. ':' .. token
redis.call('SET', KEYS[1], holder, 'PX', ARGV[2])
return holder
"#;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

static ACQUIRE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ACQUIRE));
static RENEW_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RENEW));
static RELEASE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RELEASE));

/// What a node says about itself in each heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub id: String,
    pub addr: String,
    pub started_at: String,
    pub partitions: Vec<u32>,
}

impl RedisStore {
    /// Writes this node's backlog readings (partition → `jobs oldest_ms at_ms`) and reads
    /// everyone's, in one round trip.
    pub async fn share_backlog(
        &self,
        mine: &[(String, String)],
    ) -> Result<std::collections::HashMap<String, String>> {
        let key = self.key("backlog");
        let mut pipe = redis::pipe();
        if !mine.is_empty() {
            pipe.hset_multiple(&key, mine).ignore();
        }
        pipe.hgetall(&key);
        let (all,): (std::collections::HashMap<String, String>,) =
            pipe.query_async(&mut self.conn()).await?;
        Ok(all)
    }

    pub(crate) fn lease_key(&self, partition: u32) -> String {
        self.key(&format!("{{p{partition}}}:lease"))
    }

    fn fence_key(&self, partition: u32) -> String {
        self.key(&format!("{{p{partition}}}:fence"))
    }

    /// Takes the partition's lease if nobody holds it; returns the holder string (`node:token`).
    pub async fn acquire_lease(
        &self,
        partition: u32,
        node: &str,
        lease_ms: u64,
    ) -> Result<Option<String>> {
        Ok(ACQUIRE_SCRIPT
            .key(self.lease_key(partition))
            .key(self.fence_key(partition))
            .arg(node)
            .arg(lease_ms)
            .invoke_async(&mut self.conn())
            .await?)
    }

    /// Extends the lease if `holder` still holds it.
    pub async fn renew_lease(&self, partition: u32, holder: &str, lease_ms: u64) -> Result<bool> {
        let n: i64 = RENEW_SCRIPT
            .key(self.lease_key(partition))
            .arg(holder)
            .arg(lease_ms)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(n == 1)
    }

    pub async fn release_lease(&self, partition: u32, holder: &str) -> Result<()> {
        let _: i64 = RELEASE_SCRIPT
            .key(self.lease_key(partition))
            .arg(holder)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The holder of every partition's lease (`None` where free), in one round trip.
    pub async fn lease_holders(&self) -> Result<Vec<Option<String>>> {
        let keys: Vec<String> = (0..self.partitions).map(|p| self.lease_key(p)).collect();
        Ok(redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await?)
    }

    /// Records a heartbeat; the record lives `ttl_ms`.
    pub async fn heartbeat(&self, info: &NodeInfo, ttl_ms: u64) -> Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        // Two slots, so two commands: the record first, so a listed node always has one.
        let mut conn = self.conn();
        let _: () = conn
            .pset_ex(
                self.key(&format!("node:{}", info.id)),
                serde_json::to_string(info)?,
                ttl_ms,
            )
            .await?;
        let _: () = conn.zadd(self.key("nodes"), &info.id, now).await?;
        Ok(())
    }

    /// Nodes that heartbeated within `ttl_ms`, with their records.
    pub async fn live_nodes(&self, ttl_ms: u64) -> Result<Vec<NodeInfo>> {
        let since = chrono::Utc::now().timestamp_millis() - ttl_ms as i64;
        let mut conn = self.conn();
        let _: () = conn
            .zrembyscore(self.key("nodes"), "-inf", format!("({since}"))
            .await?;
        let ids: Vec<String> = conn.zrangebyscore(self.key("nodes"), since, "+inf").await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(&format!("node:{id}")))
            .collect();
        let records: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut nodes: Vec<NodeInfo> = records
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// The pub/sub channel of endpoint changes.
    pub fn changes_channel(&self) -> String {
        self.key("changes")
    }

    pub async fn publish_change(&self, ws: &str, endpoint: &str) -> Result<()> {
        self.publish(&crate::store::Change::Endpoint {
            workspace: ws.to_string(),
            endpoint: endpoint.to_string(),
        })
        .await
        .map(drop)
    }

    /// Publishes a change to every node; how many subscribers heard it.
    pub async fn publish(&self, change: &crate::store::Change) -> Result<usize> {
        Ok(self
            .conn()
            .publish(self.changes_channel(), change.encode())
            .await?)
    }

    /// This node evicted the keys of change `nonce`.
    pub async fn confirm_eviction(&self, nonce: &str, node: &str) -> Result<()> {
        let key = self.key(&format!("evicted:{nonce}"));
        redis::pipe()
            .sadd(&key, node)
            .ignore()
            .expire(&key, 60)
            .ignore()
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The nodes that confirmed the eviction of change `nonce`.
    pub async fn confirmed_by(&self, nonce: &str) -> Result<std::collections::HashSet<String>> {
        Ok(self
            .conn()
            .smembers(self.key(&format!("evicted:{nonce}")))
            .await?)
    }

    /// The nodes in the membership (the dead are pruned as heartbeats are checked).
    pub async fn node_ids(&self) -> Result<Vec<String>> {
        Ok(self.conn().zrange(self.key("nodes"), 0, -1).await?)
    }

    /// A pub/sub connection (separate from the shared one).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        Ok(self.target.pubsub().await?)
    }

    /// Leaves the membership at once (a graceful stop), so the others rebalance without waiting.
    pub async fn leave(&self, node: &str) -> Result<()> {
        let mut conn = self.conn();
        let _: () = conn.zrem(self.key("nodes"), node).await?;
        let _: () = conn.del(self.key(&format!("node:{node}"))).await?;
        Ok(())
    }

    /// A partition's log length (jobs not yet dropped by retention) and its checkpoint.
    pub async fn partition_summary(
        &self,
        partition: u32,
    ) -> Result<(u64, crate::store::Checkpoint)> {
        let len: u64 = redis::cmd("XLEN")
            .arg(self.stream_key(partition))
            .query_async(&mut self.conn())
            .await?;
        Ok((len, self.checkpoint(partition).await?))
    }
}
