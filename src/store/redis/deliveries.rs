//! Ingest and the delivery log: creating deliveries with their jobs, recording attempts,
//! listing and reading deliveries.

use std::collections::HashMap;

use redis::AsyncCommands;

use super::{GROUP, RedisStore};
use crate::delivery::{Attempt, Delivery, Job, NewDelivery, Status};
use crate::store::{DeliveryFilter, NewEvent, Page, Result, StoreError};

/// Creates deliveries, each only if it does not exist yet, and appends a job for each one
/// created. Deterministic delivery ids make a retried (or concurrent, on two nodes) ingest of
/// the same event a no-op instead of a duplicate.
///
/// On one Redis a whole ingest is one call, which also adds each delivery to the workspace
/// index. On a cluster a call holds one partition's deliveries (one slot) and leaves the
/// workspace index, another slot, to the caller: the script returns per delivery the seq it
/// is stored with (`+seq` when created now, `=seq` when it existed, with its first ingest's
/// seq), so the index written after gets the same member on every retry.
///
/// KEYS: the workspace index (on a cluster: any key of the partition, unused), then per
/// delivery: jobs stream, delivery hash, endpoint index, endpoint stats.
/// ARGV: workspace, `1` to add to the workspace index here, the index trim bound, then per
/// delivery: seq, endpoint id, delivery id, partition, endpoint index member (`seq|id`), `1`
/// to trim the endpoint index, field count, field/value pairs.
const CREATE_DELIVERIES: &str = r#"
local out = {}
local a = 4
for i = 2, #KEYS, 4 do
  local n = tonumber(ARGV[a + 6])
  local stored = redis.call('HGET', KEYS[i + 1], 'seq')
  if stored then
    out[#out + 1] = '=' .. stored
    if ARGV[2] == '1' then
      redis.call('ZADD', KEYS[1], 0, stored .. '|' .. ARGV[a + 2] .. '|' .. ARGV[a + 3])
    end
  else
    redis.call('HSET', KEYS[i + 1], unpack(ARGV, a + 7, a + 6 + n))
    redis.call('ZADD', KEYS[i + 2], 0, ARGV[a + 4])
    redis.call('HINCRBY', KEYS[i + 3], 'pending', 1)
    redis.call('XADD', KEYS[i], '*', 'w', ARGV[1], 'e', ARGV[a + 1], 'd', ARGV[a + 2])
    if ARGV[2] == '1' then redis.call('ZADD', KEYS[1], 0, ARGV[a + 4] .. '|' .. ARGV[a + 3]) end
    out[#out + 1] = '+' .. ARGV[a]
  end
  if ARGV[a + 5] == '1' then redis.call('ZREMRANGEBYLEX', KEYS[i + 2], '-', ARGV[3]) end
  a = a + 7 + n
end
return out
"#;

static CREATE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CREATE_DELIVERIES));

/// Puts a finished delivery back in its partition stream for one more attempt (manual retry,
/// replay): only if it is still final, so two replays of one window send it once.
///
/// KEYS: delivery hash, endpoint stats, jobs stream, attempts. ARGV: workspace, endpoint,
/// delivery id, the statuses it may be requeued from (space-separated), `1` for a manual retry.
const REQUEUE: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(' ' .. ARGV[4] .. ' ', ' ' .. status .. ' ', 1, true) then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'pending', 'nextAttemptAt', '')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[4])
redis.call('HINCRBY', KEYS[2], status, -1)
redis.call('HINCRBY', KEYS[2], 'pending', 1)
redis.call('XADD', KEYS[3], '*', 'w', ARGV[1], 'e', ARGV[2], 'd', ARGV[3], 'm', ARGV[5])
return 1
"#;

/// Records one attempt in one atomic step: the attempt (the delivery's log), the delivery's
/// status and schedule, the counts, the dead letter, and at a final outcome the XACK and the
/// retention TTLs. With a fencing holder (`node:token`), it refuses to write unless that holder
/// still owns the partition's lease, so a node that lost a partition cannot record over its
/// new owner. Every key is in the partition's slot.
///
/// KEYS: delivery, attempts, stats, dead letter, jobs stream, lease.
/// ARGV: attempt JSON, status, attempt number, next attempt, previous status, MINID cutoff,
/// delivery id, endpoint id, entry id, group, TTL seconds, holder ("" = not fenced).
const RECORD: &str = r#"
if ARGV[12] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[12] then
  return redis.error_reply('STALE_LEASE this node no longer owns the partition')
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'attemptCount', ARGV[3], 'nextAttemptAt', ARGV[4])
if ARGV[5] ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[3], ARGV[5], -1)
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
end
if ARGV[2] == 'failed' then
  redis.call('XADD', KEYS[4], 'MINID', '~', ARGV[6], '*', 'delivery', ARGV[7], 'endpoint', ARGV[8])
end
if ARGV[2] == 'succeeded' or ARGV[2] == 'failed' then
  redis.call('XACK', KEYS[5], ARGV[10], ARGV[9])
  redis.call('EXPIRE', KEYS[1], ARGV[11])
  redis.call('EXPIRE', KEYS[2], ARGV[11])
end
return 1
"#;

static RECORD_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RECORD));

static REQUEUE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(REQUEUE));

/// Deliveries created per script call at most (a call blocks Redis while it runs).
const MAX_PER_CALL: usize = 500;

/// An endpoint's index is trimmed by one delivery in this many (chosen by id).
const ENDPOINT_TRIM_EVERY: u32 = 32;

/// Deliveries examined per round trip when a list is filtered.
const SCAN_CHUNK: usize = 200;
/// Round trips a filtered list may make before it answers with what it found and a cursor.
const SCAN_ROUNDS: usize = 10;

/// A member of the workspace index: `seq|id|partition` (the endpoint indexes hold
/// `seq|id`; their partition is the endpoint's). Ordered by `seq`, then id.
fn ws_index_member(seq: &str, id: &str, partition: u32) -> String {
    format!("{seq}|{id}|{partition}")
}

/// The delivery id and, for a workspace-index member, its partition.
fn parse_member(member: &str) -> (&str, Option<u32>) {
    let mut parts = member.splitn(3, '|');
    let _seq = parts.next();
    let id = parts.next().unwrap_or(member);
    (id, parts.next().and_then(|p| p.parse().ok()))
}

fn delivery_fields(d: &Delivery) -> Vec<(&'static str, String)> {
    vec![
        ("id", d.id.clone()),
        ("eventId", d.event_id.clone()),
        ("eventType", d.event_type.clone()),
        ("endpointId", d.endpoint_id.clone()),
        ("ruleId", d.rule_id.to_string()),
        ("status", d.status.as_str().to_string()),
        ("createdAt", d.created_at.clone()),
        ("attemptCount", d.attempt_count.to_string()),
        ("body", d.body.clone()),
        ("seq", d.seq.clone()),
    ]
}

fn delivery_from_hash(mut h: HashMap<String, String>) -> Result<Option<Delivery>> {
    if h.is_empty() {
        return Ok(None);
    }
    let mut take = |k: &str| h.remove(k).unwrap_or_default();
    let status = take("status");
    let d = Delivery {
        id: take("id"),
        event_id: take("eventId"),
        event_type: take("eventType"),
        endpoint_id: take("endpointId"),
        rule_id: take("ruleId").parse().unwrap_or(0),
        status: Status::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        created_at: take("createdAt"),
        attempt_count: take("attemptCount").parse().unwrap_or(0),
        next_attempt_at: Some(take("nextAttemptAt")).filter(|s| !s.is_empty()),
        body: take("body"),
        seq: take("seq"),
    };
    Ok(Some(d))
}

impl RedisStore {
    pub(crate) fn stream_key(&self, partition: u32) -> String {
        self.key(&format!("{{p{partition}}}:jobs"))
    }

    fn delivery_key(&self, ws: &str, partition: u32, id: &str) -> String {
        self.part_key(partition, ws, &format!("dlv:{id}"))
    }

    fn attempts_key(&self, ws: &str, partition: u32, id: &str) -> String {
        self.part_key(partition, ws, &format!("dlv:{id}:att"))
    }

    fn endpoint_index_key(&self, ws: &str, endpoint: &str) -> String {
        self.part_key(
            self.partition_of(endpoint),
            ws,
            &format!("ep:{endpoint}:dlvs"),
        )
    }

    /// The dead-letter stream of a workspace's partition: one entry per exhausted delivery,
    /// read by replay (an endpoint's deliveries are all in one partition).
    fn dead_key(&self, ws: &str, partition: u32) -> String {
        self.part_key(partition, ws, "dead")
    }

    /// The partition of a delivery, from its id alone (the API's reads by id): one `EXISTS`
    /// per partition, concurrently. A per-delivery pointer would cost a write and a key for
    /// every delivery to save work on a rare read.
    async fn locate(&self, ws: &str, id: &str) -> Result<Option<u32>> {
        let probes = (0..self.partitions())
            .map(|p| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(self.delivery_key(ws, p, id));
                cmd
            })
            .collect();
        let found: Vec<u32> = self.conn().each(probes).await?;
        Ok(found.iter().position(|n| *n > 0).map(|p| p as u32))
    }

    /// Writes events, their deliveries and their jobs, and returns once all of it is written
    /// (as durable as Redis is configured to be: run it with AOF). The event records go in one
    /// pipeline (the workspace's slot) alongside the deliveries: on one Redis one script call
    /// for all of them, on a cluster one per partition and then the workspace index. Returns
    /// the deliveries created.
    pub async fn ingest(&self, ws: &str, events: &[NewEvent]) -> Result<u32> {
        let mut records = redis::pipe();
        for event in events {
            records
                .set_ex(
                    self.ws_key(ws, &format!("evt:{}", event.id)),
                    serde_json::to_string(event)?,
                    self.retention_secs() as u64,
                )
                .ignore();
        }
        // The list indexes forget entries older than the retention (the records themselves
        // expire by TTL once final; a pending delivery keeps its record and its job). The
        // workspace index is trimmed at every ingest, an endpoint's at one delivery in
        // ENDPOINT_TRIM_EVERY (by id), which keeps it bounded at a fraction of the writes.
        let cutoff = format!("({:013}", self.retention_cutoff_ms());
        records
            .cmd("ZREMRANGEBYLEX")
            .arg(self.ws_key(ws, "dlvs"))
            .arg("-")
            .arg(&cutoff)
            .ignore();
        let deliveries = events.iter().flat_map(|e| e.new_deliveries.iter());
        let groups: Vec<Vec<&NewDelivery>> = if self.is_cluster() {
            let mut by_partition: HashMap<u32, Vec<&NewDelivery>> = HashMap::new();
            for nd in deliveries {
                by_partition.entry(nd.partition).or_default().push(nd);
            }
            by_partition.into_values().collect()
        } else {
            vec![deliveries.collect()]
        };
        let index_here = !self.is_cluster();
        // Groups go concurrently. A call runs alone on the Redis thread, so a group that fans
        // out to many deliveries is split in calls of MAX_PER_CALL, made one after the other
        // so its jobs keep their order in each stream.
        let cutoff = &cutoff;
        let writes = groups.iter().map(|group| async move {
            let mut stored = Vec::with_capacity(group.len());
            for chunk in group.chunks(MAX_PER_CALL) {
                stored.extend(self.create_chunk(ws, chunk, index_here, cutoff).await?);
            }
            Ok::<_, redis::RedisError>(stored)
        });
        let mut records_conn = self.conn();
        let (_, written) = futures::future::try_join(
            records.exec_async(&mut records_conn),
            futures::future::try_join_all(writes),
        )
        .await?;
        let mut created = 0;
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.ws_key(ws, "dlvs"));
        for (group, stored) in groups.iter().zip(&written) {
            for (nd, seq) in group.iter().zip(stored) {
                created += u32::from(seq.starts_with('+'));
                zadd.arg(0)
                    .arg(ws_index_member(&seq[1..], &nd.delivery.id, nd.partition));
            }
        }
        if !index_here && written.iter().any(|stored| !stored.is_empty()) {
            let _: () = zadd.query_async(&mut self.conn()).await?;
        }
        Ok(created)
    }

    /// One call of the create script for `group` (all of one partition on a cluster); returns
    /// the seq each delivery is stored with (`+` created now, `=` existed before).
    async fn create_chunk(
        &self,
        ws: &str,
        group: &[&NewDelivery],
        index_here: bool,
        cutoff: &str,
    ) -> redis::RedisResult<Vec<String>> {
        let mut inv = CREATE_SCRIPT.prepare_invoke();
        if index_here {
            inv.key(self.ws_key(ws, "dlvs"));
        } else {
            inv.key(self.stream_key(group[0].partition));
        }
        inv.arg(ws)
            .arg(if index_here { "1" } else { "0" })
            .arg(cutoff);
        for nd in group {
            let d = &nd.delivery;
            let fields = delivery_fields(d);
            let trim = crate::delivery::partition_of(&d.id, ENDPOINT_TRIM_EVERY) == 0;
            inv.key(self.stream_key(nd.partition))
                .key(self.delivery_key(ws, nd.partition, &d.id))
                .key(self.endpoint_index_key(ws, &d.endpoint_id))
                .key(self.stats_key(ws, &d.endpoint_id))
                .arg(&d.seq)
                .arg(&d.endpoint_id)
                .arg(&d.id)
                .arg(nd.partition)
                .arg(format!("{}|{}", d.seq, d.id))
                .arg(if trim { "1" } else { "0" })
                .arg(fields.len() * 2);
            for (k, v) in fields {
                inv.arg(k).arg(v);
            }
        }
        inv.invoke_async(&mut self.conn()).await
    }

    /// Records `value` under an `Idempotency-Key` unless one is there (`SET NX`); returns
    /// what was there.
    pub async fn claim_key(
        &self,
        ws: &str,
        key: &str,
        value: &str,
        ttl_secs: u64,
    ) -> Result<Option<String>> {
        let k = self.ws_key(ws, &format!("idem:{key}"));
        let mut conn = self.conn();
        let set: Option<String> = redis::cmd("SET")
            .arg(&k)
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs.max(1))
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(None);
        }
        Ok(conn.get(&k).await?)
    }

    pub async fn put_key(&self, ws: &str, key: &str, value: &str, ttl_secs: u64) -> Result<()> {
        let _: () = self
            .conn()
            .set_ex(
                self.ws_key(ws, &format!("idem:{key}")),
                value,
                ttl_secs.max(1),
            )
            .await?;
        Ok(())
    }

    pub async fn delivery(&self, ws: &str, id: &str) -> Result<Option<Delivery>> {
        match self.locate(ws, id).await? {
            Some(p) => self.delivery_in(ws, p, id).await,
            None => Ok(None),
        }
    }

    /// A delivery whose partition is known (a job's).
    pub async fn delivery_in(
        &self,
        ws: &str,
        partition: u32,
        id: &str,
    ) -> Result<Option<Delivery>> {
        let h: HashMap<String, String> = self
            .conn()
            .hgetall(self.delivery_key(ws, partition, id))
            .await?;
        delivery_from_hash(h)
    }

    pub async fn attempts(&self, ws: &str, id: &str) -> Result<Vec<Attempt>> {
        let Some(p) = self.locate(ws, id).await? else {
            return Ok(Vec::new());
        };
        let raw: Vec<String> = self
            .conn()
            .lrange(self.attempts_key(ws, p, id), 0, -1)
            .await?;
        raw.iter()
            .map(|j| serde_json::from_str(j).map_err(StoreError::from))
            .collect()
    }

    /// Records one attempt: appended to the delivery's attempts, the delivery's status and
    /// schedule updated, and, at a final outcome, the job acknowledged, all in one script so a
    /// crash cannot leave an acknowledged job without its outcome.
    pub async fn record_attempt(
        &self,
        job: &Job,
        attempt: &Attempt,
        from: Status,
        status: Status,
    ) -> Result<()> {
        let ws = &job.workspace;
        let p = job.partition;
        let json = serde_json::to_string(attempt)?;
        let done: redis::RedisResult<i64> = RECORD_SCRIPT
            .key(self.delivery_key(ws, p, &job.delivery_id))
            .key(self.attempts_key(ws, p, &job.delivery_id))
            .key(self.stats_key(ws, &job.endpoint_id))
            .key(self.dead_key(ws, p))
            .key(self.stream_key(p))
            .key(self.lease_key(p))
            .arg(&json)
            .arg(status.as_str())
            .arg(attempt.attempt)
            .arg(attempt.next_attempt_at.clone().unwrap_or_default())
            .arg(from.as_str())
            .arg(self.retention_cutoff_ms())
            .arg(&job.delivery_id)
            .arg(&job.endpoint_id)
            .arg(&job.entry_id)
            .arg(GROUP)
            .arg(self.retention_secs())
            .arg(job.fence.as_deref().unwrap_or(""))
            .invoke_async(&mut self.conn())
            .await;
        match done {
            Err(e) if e.code() == Some("STALE_LEASE") => Err(StoreError::StaleLease(job.partition)),
            other => other.map(drop).map_err(StoreError::from),
        }
    }

    fn count_transition(&self, pipe: &mut redis::Pipeline, job: &Job, from: Status, to: Status) {
        if from != to {
            let key = self.stats_key(&job.workspace, &job.endpoint_id);
            pipe.hincr(&key, from.as_str(), -1)
                .ignore()
                .hincr(&key, to.as_str(), 1)
                .ignore();
        }
    }

    /// Requeues one finished delivery (from one of `from`); `false` when it was not in them.
    pub async fn requeue(
        &self,
        ws: &str,
        d: &Delivery,
        from: &[Status],
        manual: bool,
    ) -> Result<bool> {
        let partition = self.partition_of(&d.endpoint_id);
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let done: u32 = REQUEUE_SCRIPT
            .key(self.delivery_key(ws, partition, &d.id))
            .key(self.stats_key(ws, &d.endpoint_id))
            .key(self.stream_key(partition))
            .key(self.attempts_key(ws, partition, &d.id))
            .arg(ws)
            .arg(&d.endpoint_id)
            .arg(&d.id)
            .arg(from.join(" "))
            .arg(if manual { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(done == 1)
    }

    /// The deliveries of `endpoint` that went to the dead letter between `since_ms` and
    /// `until_ms`, each once, in the order they failed.
    pub async fn dead_letters(
        &self,
        ws: &str,
        endpoint: &str,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Vec<String>> {
        let end = until_ms.map_or("+".to_string(), |u| u.to_string());
        let entries: redis::streams::StreamRangeReply = self
            .conn()
            .xrange(
                self.dead_key(ws, self.partition_of(endpoint)),
                since_ms.to_string(),
                end,
            )
            .await?;
        let mut ids: Vec<String> = Vec::new();
        for e in entries.ids {
            let get = |k: &str| match e.map.get(k) {
                Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
                _ => None,
            };
            if get("endpoint").as_deref() == Some(endpoint)
                && let Some(id) = get("delivery")
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Acknowledges a job without an attempt (its delivery was already final, or is gone).
    pub async fn ack(&self, job: &Job) -> Result<()> {
        let _: u32 = self
            .conn()
            .xack(self.stream_key(job.partition), GROUP, &[&job.entry_id])
            .await?;
        Ok(())
    }

    /// Marks a delivery failed without an attempt (its endpoint was deleted) and acks its job.
    pub async fn fail_without_attempt(&self, job: &Job, from: Status) -> Result<()> {
        let dkey = self.delivery_key(&job.workspace, job.partition, &job.delivery_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&dkey, "status", Status::Failed.as_str())
            .xack(self.stream_key(job.partition), GROUP, &[&job.entry_id]);
        self.count_transition(&mut pipe, job, from, Status::Failed);
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Lists deliveries newest first. Filters on status scan the index in bounded chunks.
    pub async fn list_deliveries(
        &self,
        ws: &str,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>> {
        let after = cursor
            .map(|c| crate::store::cursor::decode("deliveries", c, |m| m.contains('|')))
            .transpose()?;
        let max = match (&after, filter.until_ms) {
            (Some(a), _) => format!("({a}"),
            (None, Some(u)) => format!("[{u:013}|\u{7f}"),
            (None, None) => "+".to_string(),
        };
        let min = filter
            .since_ms
            .map_or("-".to_string(), |s| format!("[{s:013}|"));
        let (index, endpoint_partition) = match &filter.endpoint_id {
            Some(ep) => (self.endpoint_index_key(ws, ep), Some(self.partition_of(ep))),
            None => (self.ws_key(ws, "dlvs"), None),
        };
        let mut out = Vec::new();
        let mut last_member: Option<String> = None;
        let mut max = max;
        for _ in 0..SCAN_ROUNDS {
            let members: Vec<String> = redis::cmd("ZREVRANGEBYLEX")
                .arg(&index)
                .arg(&max)
                .arg(&min)
                .arg("LIMIT")
                .arg(0)
                .arg(SCAN_CHUNK)
                .query_async(&mut self.conn())
                .await?;
            let exhausted = members.len() < SCAN_CHUNK;
            if members.is_empty() {
                return Ok(Page {
                    data: out,
                    next_cursor: None,
                });
            }
            // One command per delivery: on a cluster they are in many slots.
            let loads = members
                .iter()
                .map(|m| {
                    let (id, p) = parse_member(m);
                    let p = p.or(endpoint_partition).unwrap_or(0);
                    let mut cmd = redis::cmd("HGETALL");
                    cmd.arg(self.delivery_key(ws, p, id));
                    cmd
                })
                .collect();
            let hashes: Vec<HashMap<String, String>> = self.conn().each(loads).await?;
            for (m, h) in members.iter().zip(hashes) {
                last_member = Some(m.clone());
                let Some(d) = delivery_from_hash(h)? else {
                    continue;
                };
                let keep = filter.status.is_none_or(|s| s == d.status)
                    && filter.event_id.as_ref().is_none_or(|e| *e == d.event_id)
                    && filter
                        .endpoint_id
                        .as_ref()
                        .is_none_or(|e| *e == d.endpoint_id);
                if keep {
                    out.push(d);
                    if out.len() == limit {
                        let next = (!exhausted || m != members.last().unwrap_or(m))
                            .then(|| crate::store::cursor::encode("deliveries", m));
                        return Ok(Page {
                            data: out,
                            next_cursor: next,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Page {
                    data: out,
                    next_cursor: None,
                });
            }
            max = format!("({}", last_member.clone().unwrap_or_default());
        }
        Ok(Page {
            data: out,
            next_cursor: last_member.map(|m| crate::store::cursor::encode("deliveries", &m)),
        })
    }
}
