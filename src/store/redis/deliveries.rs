//! Ingest and the delivery log: creating deliveries with their jobs, recording attempts,
//! listing and reading deliveries.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use redis::AsyncCommands;

use super::{GROUP, RedisStore};
use crate::delivery::{Attempt, Delivery, Job, NewDelivery, Status};
use crate::store::{DeliveryFilter, NewEvent, Page, Result, StoreError};

/// Creates the deliveries of one partition, each only if it does not exist yet, and appends a
/// job for each one created. Deterministic delivery ids make a retried (or concurrent, on two
/// nodes) ingest of the same event a no-op instead of a duplicate.
///
/// KEYS: ws index, jobs stream, then per delivery: delivery hash, endpoint index, endpoint stats.
/// ARGV: workspace, then per delivery: index member, endpoint id, delivery id, field count,
/// field/value pairs.
const CREATE_DELIVERIES: &str = r#"
local created = 0
local a = 2
for i = 3, #KEYS, 3 do
  local member, endpoint, id, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local fields = {}
  for j = 1, n do fields[j] = ARGV[a + 3 + j] end
  a = a + 4 + n
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], unpack(fields))
    redis.call('ZADD', KEYS[1], 0, member)
    redis.call('ZADD', KEYS[i + 1], 0, member)
    redis.call('HINCRBY', KEYS[i + 2], 'pending', 1)
    redis.call('XADD', KEYS[2], '*', 'w', ARGV[1], 'e', endpoint, 'd', id)
    created = created + 1
  end
end
return created
"#;

static CREATE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CREATE_DELIVERIES));

/// Puts a finished delivery back in its partition stream for one more attempt (manual retry,
/// replay): only if it is still final, so two replays of one window send it once.
///
/// KEYS: delivery hash, endpoint stats, jobs stream. ARGV: workspace, endpoint, delivery id,
/// the statuses it may be requeued from (space-separated).
const REQUEUE: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(' ' .. ARGV[4] .. ' ', ' ' .. status .. ' ', 1, true) then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'pending', 'nextAttemptAt', '')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[1] .. ':att')
redis.call('HINCRBY', KEYS[2], status, -1)
redis.call('HINCRBY', KEYS[2], 'pending', 1)
redis.call('XADD', KEYS[3], '*', 'w', ARGV[1], 'e', ARGV[2], 'd', ARGV[3])
return 1
"#;

/// Records one attempt in one atomic step: the attempt, the delivery's status and schedule,
/// the log, the counts, the dead letter, and at a final outcome the XACK and the retention
/// TTLs. With a fencing holder (`node:token`), it refuses to write unless that holder still
/// owns the partition's lease, so a node that lost a partition cannot record over its new owner.
///
/// KEYS: delivery, attempts, log, stats, dead letter, jobs stream, lease.
/// ARGV: attempt JSON, status, attempt number, next attempt, previous status, MINID cutoff,
/// delivery id, endpoint id, entry id, group, TTL seconds, holder ("" = not fenced).
const RECORD: &str = r#"
if ARGV[12] ~= '' and redis.call('GET', KEYS[7]) ~= ARGV[12] then
  return redis.error_reply('STALE_LEASE this node no longer owns the partition')
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'attemptCount', ARGV[3], 'nextAttemptAt', ARGV[4])
redis.call('XADD', KEYS[3], 'MINID', '~', ARGV[6], '*', 'delivery', ARGV[7], 'endpoint', ARGV[8], 'status', ARGV[2], 'attempt', ARGV[1])
if ARGV[5] ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[4], ARGV[5], -1)
  redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
end
if ARGV[2] == 'failed' then
  redis.call('XADD', KEYS[5], 'MINID', '~', ARGV[6], '*', 'delivery', ARGV[7], 'endpoint', ARGV[8])
end
if ARGV[2] == 'succeeded' or ARGV[2] == 'failed' then
  redis.call('XACK', KEYS[6], ARGV[10], ARGV[9])
  redis.call('EXPIRE', KEYS[1], ARGV[11])
  redis.call('EXPIRE', KEYS[2], ARGV[11])
end
return 1
"#;

static RECORD_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RECORD));

static REQUEUE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(REQUEUE));

/// Deliveries examined per round trip when a list is filtered.
const SCAN_CHUNK: usize = 200;
/// Round trips a filtered list may make before it answers with what it found and a cursor.
const SCAN_ROUNDS: usize = 10;

fn index_member(seq: &str, id: &str) -> String {
    format!("{seq}|{id}")
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

    /// Writes events, their deliveries and their jobs: the event records in one pipeline, and
    /// one script call per partition, all concurrently. Returns once all of it is written (as
    /// durable as Redis is configured to be: run it with AOF). Returns the deliveries created.
    pub async fn ingest(&self, ws: &str, events: &[NewEvent]) -> Result<u32> {
        let mut by_partition: HashMap<u32, Vec<&NewDelivery>> = HashMap::new();
        let mut records = redis::pipe();
        for event in events {
            records
                .set_ex(
                    self.ws_key(ws, &format!("evt:{}", event.id)),
                    serde_json::to_string(event)?,
                    self.retention_secs() as u64,
                )
                .ignore();
            for nd in &event.new_deliveries {
                by_partition.entry(nd.partition).or_default().push(nd);
            }
        }
        // The list indexes forget entries older than the retention (the records themselves
        // expire by TTL once final; a pending delivery keeps its record and its job).
        let cutoff = format!("({:013}", self.retention_cutoff_ms());
        let mut indexes = vec![self.ws_key(ws, "dlvs")];
        indexes.extend(
            events
                .iter()
                .flat_map(|e| {
                    e.new_deliveries
                        .iter()
                        .map(|nd| nd.delivery.endpoint_id.as_str())
                })
                .collect::<std::collections::HashSet<_>>()
                .into_iter()
                .map(|ep| self.ws_key(ws, &format!("ep:{ep}:dlvs"))),
        );
        for index in indexes {
            records
                .cmd("ZREMRANGEBYLEX")
                .arg(index)
                .arg("-")
                .arg(&cutoff)
                .ignore();
        }
        let mut conn = self.conn();
        let records = records.exec_async(&mut conn);
        let writes = by_partition.into_iter().map(|(partition, ds)| {
            let mut inv = CREATE_SCRIPT.prepare_invoke();
            inv.key(self.ws_key(ws, "dlvs"))
                .key(self.stream_key(partition))
                .arg(ws);
            for nd in ds {
                let d = &nd.delivery;
                let fields = delivery_fields(d);
                inv.key(self.ws_key(ws, &format!("dlv:{}", d.id)))
                    .key(self.ws_key(ws, &format!("ep:{}:dlvs", d.endpoint_id)))
                    .key(self.stats_key(ws, &d.endpoint_id))
                    .arg(index_member(&d.seq, &d.id))
                    .arg(&d.endpoint_id)
                    .arg(&d.id)
                    .arg(fields.len() * 2);
                for (k, v) in fields {
                    inv.arg(k).arg(v);
                }
            }
            let mut conn = self.conn();
            async move { inv.invoke_async::<u32>(&mut conn).await }
        });
        let (_, created) =
            futures::future::try_join(records, futures::future::try_join_all(writes)).await?;
        Ok(created.into_iter().sum())
    }

    /// The stored 202 answer of an `Idempotency-Key`, if the key was seen within its TTL.
    pub async fn idempotent_answer(&self, ws: &str, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .get(self.ws_key(ws, &format!("idem:{key}")))
            .await?)
    }

    pub async fn remember_answer(
        &self,
        ws: &str,
        key: &str,
        answer: &str,
        ttl_secs: u64,
    ) -> Result<()> {
        let _: () = self
            .conn()
            .set_ex(self.ws_key(ws, &format!("idem:{key}")), answer, ttl_secs)
            .await?;
        Ok(())
    }

    pub async fn delivery(&self, ws: &str, id: &str) -> Result<Option<Delivery>> {
        let h: HashMap<String, String> = self
            .conn()
            .hgetall(self.ws_key(ws, &format!("dlv:{id}")))
            .await?;
        delivery_from_hash(h)
    }

    pub async fn attempts(&self, ws: &str, id: &str) -> Result<Vec<Attempt>> {
        let raw: Vec<String> = self
            .conn()
            .lrange(self.ws_key(ws, &format!("dlv:{id}:att")), 0, -1)
            .await?;
        raw.iter()
            .map(|j| serde_json::from_str(j).map_err(StoreError::from))
            .collect()
    }

    /// Records one attempt: appended to the delivery's attempts and the workspace's log, the
    /// delivery's status and schedule updated, and, at a final outcome, the job acknowledged,
    /// all in one transaction so a crash cannot leave an acknowledged job without its outcome.
    pub async fn record_attempt(
        &self,
        job: &Job,
        attempt: &Attempt,
        from: Status,
        status: Status,
    ) -> Result<()> {
        let ws = &job.workspace;
        let dkey = self.ws_key(ws, &format!("dlv:{}", job.delivery_id));
        let json = serde_json::to_string(attempt)?;
        let done: redis::RedisResult<i64> = RECORD_SCRIPT
            .key(&dkey)
            .key(format!("{dkey}:att"))
            .key(self.ws_key(ws, "log"))
            .key(self.stats_key(ws, &job.endpoint_id))
            .key(self.dead_key(ws))
            .key(self.stream_key(job.partition))
            .key(self.lease_key(job.partition))
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

    /// The dead-letter stream of a workspace: one entry per exhausted delivery, read by replay.
    fn dead_key(&self, ws: &str) -> String {
        self.ws_key(ws, "dead")
    }

    /// Requeues one finished delivery (from one of `from`); `false` when it was not in them.
    pub async fn requeue(&self, ws: &str, d: &Delivery, from: &[Status]) -> Result<bool> {
        let partition = crate::delivery::partition_of(&d.endpoint_id, self.partitions);
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let done: u32 = REQUEUE_SCRIPT
            .key(self.ws_key(ws, &format!("dlv:{}", d.id)))
            .key(self.stats_key(ws, &d.endpoint_id))
            .key(self.stream_key(partition))
            .arg(ws)
            .arg(&d.endpoint_id)
            .arg(&d.id)
            .arg(from.join(" "))
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
            .xrange(self.dead_key(ws), since_ms.to_string(), end)
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
        let dkey = self.ws_key(&job.workspace, &format!("dlv:{}", job.delivery_id));
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
        let after = match cursor {
            Some(c) => Some(
                B64.decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or(StoreError::BadCursor)?,
            ),
            None => None,
        };
        let max = match (&after, filter.until_ms) {
            (Some(a), _) => format!("({a}"),
            (None, Some(u)) => format!("[{u:013}|\u{7f}"),
            (None, None) => "+".to_string(),
        };
        let min = filter
            .since_ms
            .map_or("-".to_string(), |s| format!("[{s:013}|"));
        let index = match (&filter.endpoint_id, &filter.event_id) {
            (Some(ep), _) => self.ws_key(ws, &format!("ep:{ep}:dlvs")),
            _ => self.ws_key(ws, "dlvs"),
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
            let mut loads = redis::pipe();
            for m in &members {
                let id = m.split_once('|').map_or(m.as_str(), |(_, id)| id);
                loads.hgetall(self.ws_key(ws, &format!("dlv:{id}")));
            }
            let hashes: Vec<HashMap<String, String>> = loads.query_async(&mut self.conn()).await?;
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
                            .then(|| B64.encode(m.as_bytes()));
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
            next_cursor: last_member.map(|m| B64.encode(m.as_bytes())),
        })
    }
}
