//! The jobs role on Redis: ingest scripts, a partition's reader, group-committed outcomes,
//! requeues and retention.
//!
//! Per delivery (one event with one delivery, no retries) this is at most three commands
//! inside scripts: at ingest `XADD` of the job and `HINCRBY` of the endpoint's created count
//! (one per endpoint and request); at the outcome `HINCRBY` of its status count (one per
//! endpoint and batch). Per request, one `XADD` logs all its events in one entry of the
//! workspace's event log; per group commit and partition, one `HSET` writes every state, a
//! `GET` fences it and, when it moved, a `SET` writes the checkpoint. The scripts and the
//! partition reads cost one call per request or batch, not per delivery.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Value;
use redis::streams::StreamRangeReply;

use super::{Conn, RedisStore};
use crate::delivery::{DeliveryId, EntryId, Job, Progress, Status};
use crate::store::jobs::{CommitBatch, Idempotency, Ingested, NewEvent, RawJob};
use crate::store::record::{Answered, Checkpoint, decode_progress};
use crate::store::{Counts, Result, StoreError};

/// Ingest on one Redis, one call per request: the idempotency check, every job, the events
/// (in one entry of the workspace's log, after its newest entry and at the events' ids' time
/// or later, so an id finds its event from its time), the endpoints' created counts and the
/// idempotency record.
/// The script only moves arguments into commands: ids, fields and counts are built by the
/// caller, so its cost is the commands it makes.
///
/// KEYS: event log, idempotency record, then the jobs streams and counts of the partitions
/// touched. ARGV: workspace, `1` with an idempotency key, its fingerprint, its TTL, the event
/// log's MINID bound and cap, the number of events, the number of count moves; per event: id,
/// unix ms of the id, type, body (only when it has no delivery), its deliveries' partitions
/// (space-separated), number of deliveries; per delivery: KEYS index of its stream, endpoint,
/// rule, ordering key, body; per count move: KEYS index, field, increment.
/// Returns `{'=', record}` (the key was used with these events), `{'!'}` (with others), or
/// `{'+', entries of event 1, entries of event 2, ...}`.
const INGEST: &str = r#"
local ws = ARGV[1]
if ARGV[2] == '1' then
  local prev = redis.call('GET', KEYS[2])
  if prev then
    local nl = string.find(prev, '\n', 1, true)
    local fp = prev
    if nl then fp = string.sub(prev, 1, nl - 1) end
    if fp == ARGV[3] then return {'=', prev} end
    return {'!'}
  end
end
local head = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = 0
if #head > 0 then last = tonumber(string.match(head[1][1], '^(%d+)')) end
local out = {'+'}
local lines = {}
local logged = {}
local a = 9
for e = 1, tonumber(ARGV[7]) do
  local id, ems, etype, ebody, parts, n = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5])
  a = a + 6
  local jids = {}
  for i = 1, n do
    jids[i] = redis.call('XADD', KEYS[tonumber(ARGV[a])], '*', 'w', ws, 'e', ARGV[a + 1],
      'r', ARGV[a + 2], 'v', id, 't', etype, 'k', ARGV[a + 3], 'b', ARGV[a + 4])
    a = a + 5
  end
  if ems > last then last = ems end
  local d = table.concat(jids, ' ')
  if ebody ~= '' then
    logged[e] = id .. '\t' .. etype .. '\t' .. parts .. '\t' .. d .. '\t' .. ebody
  else
    logged[e] = id .. '\t' .. etype .. '\t' .. parts .. '\t' .. d
  end
  out[#out + 1] = d
  if ARGV[2] == '1' then lines[#lines + 1] = id .. '|' .. parts .. '|' .. d end
end
redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[5], string.format('%.0f', last) .. '-*', 'e', table.concat(logged, '\n'))
for i = 1, tonumber(ARGV[8]) do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[a])], ARGV[a + 1], ARGV[a + 2])
  a = a + 3
end
if last % 64 == 0 and tonumber(ARGV[6]) > 0 then
  redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[6])
end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[2], ARGV[3] .. '\n' .. table.concat(lines, '\n'), 'EX', ARGV[4])
end
return out
"#;

/// Redis Cluster, step 1 of an idempotent ingest (the workspace's slot): claims the key for
/// the fingerprint with the event ids. KEYS: idempotency record. ARGV: fingerprint, event ids
/// (space-separated), TTL. Returns `+` (claimed), `!` (used with other events), or what the key
/// holds: `#ids` (claimed, not finished: the same event ids again) or `=answer`.
const CLAIM: &str = r#"
local prev = redis.call('GET', KEYS[1])
if not prev then
  redis.call('SET', KEYS[1], ARGV[1] .. '\n#' .. ARGV[2], 'EX', ARGV[3])
  return '+'
end
local nl = string.find(prev, '\n', 1, true)
local fp, rest = prev, ''
if nl then fp = string.sub(prev, 1, nl - 1); rest = string.sub(prev, nl + 1) end
if fp ~= ARGV[1] then return '!' end
if string.sub(rest, 1, 1) == '#' then return rest end
return '=' .. prev
"#;

/// Redis Cluster, step 2 (one partition's slot): the partition's jobs and counts; with a key,
/// only once (a marker holds the entries written, for a retry). KEYS: jobs stream, counts,
/// marker. ARGV: workspace, `1` with a key, TTL, the number of jobs, the number of count
/// moves; per job: event id, type, endpoint, rule, ordering key, body; per count move: field,
/// increment. Returns the jobs' entries, space-separated.
const PART: &str = r#"
if ARGV[2] == '1' then
  local done = redis.call('GET', KEYS[3])
  if done then return done end
end
local ws = ARGV[1]
local ids = {}
local a = 6
for i = 1, tonumber(ARGV[4]) do
  ids[i] = redis.call('XADD', KEYS[1], '*', 'w', ws, 'e', ARGV[a + 2], 'r', ARGV[a + 3],
    'v', ARGV[a], 't', ARGV[a + 1], 'k', ARGV[a + 4], 'b', ARGV[a + 5])
  a = a + 6
end
for i = 1, tonumber(ARGV[5]) do
  redis.call('HINCRBY', KEYS[2], ARGV[a], ARGV[a + 1])
  a = a + 2
end
local out = table.concat(ids, ' ')
if ARGV[2] == '1' then redis.call('SET', KEYS[3], out, 'EX', ARGV[3]) end
return out
"#;

/// Redis Cluster, step 3 (the workspace's slot): the events, and with a key the answer, once:
/// if the key's claim was already answered, its answer is returned and nothing is written.
/// KEYS: event log, idempotency record. ARGV: `1` with a key, TTL, MINID bound, cap, the
/// answer to store, the number of events, then per event: unix ms, id, type, its deliveries'
/// entries and partitions (space-separated), body (or empty). Returns `=answer` or `+`.
const EVENTS: &str = r#"
if ARGV[1] == '1' then
  local prev = redis.call('GET', KEYS[2])
  if prev then
    local nl = string.find(prev, '\n', 1, true)
    if nl and string.sub(prev, nl + 1, nl + 1) ~= '#' then return '=' .. prev end
  end
end
local head = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = 0
if #head > 0 then last = tonumber(string.match(head[1][1], '^(%d+)')) end
local a = 7
local logged = {}
for e = 1, tonumber(ARGV[6]) do
  local ems = tonumber(ARGV[a])
  if ems > last then last = ems end
  if ARGV[a + 5] ~= '' then
    logged[e] = ARGV[a + 1] .. '\t' .. ARGV[a + 2] .. '\t' .. ARGV[a + 4] .. '\t' .. ARGV[a + 3] .. '\t' .. ARGV[a + 5]
  else
    logged[e] = ARGV[a + 1] .. '\t' .. ARGV[a + 2] .. '\t' .. ARGV[a + 4] .. '\t' .. ARGV[a + 3]
  end
  a = a + 6
end
redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[3], string.format('%.0f', last) .. '-*', 'e', table.concat(logged, '\n'))
if last % 64 == 0 and tonumber(ARGV[4]) > 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[4]) end
if ARGV[1] == '1' then redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[2]) end
return '+'
"#;

/// A group commit: for each partition's batch, fenced by its lease, each delivery's state
/// (its progress, its earlier attempts when `append`, the new attempt), the dead letter of
/// newly failed ones, the counts and the checkpoint. A batch whose lease has passed to another
/// node is skipped whole. KEYS, per batch: lease, states, counts, dead letter, checkpoint.
/// ARGV: dead-letter MINID bound, number of batches; per batch: holder (`""`: not fenced),
/// checkpoint (`""`: unchanged), number of outcomes, number of count moves; per outcome: entry, the state
/// (without `append`: whole; with it: the progress line), the attempt line (with `append`), `1`
/// to append, `1` for the dead letter, workspace, endpoint; per count move: field, delta.
/// Returns per batch `1` (written) or `0` (stale lease).
const COMMIT: &str = r#"
local out = {}
local a = 3
for b = 1, tonumber(ARGV[2]) do
  local k = (b - 1) * 5
  local holder, ck, n, m = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  if holder ~= '' and redis.call('GET', KEYS[k + 1]) ~= holder then
    out[b] = 0
    a = a + n * 7 + m * 2
  else
    -- Whole states in one HSET (in chunks, for Lua's stack), then the appends, in order.
    local whole, appends = {}, {}
    for i = 1, n do
      if ARGV[a + 3] == '1' then appends[#appends + 1] = a else
        whole[#whole + 1] = ARGV[a]
        whole[#whole + 1] = ARGV[a + 1]
        if #whole >= 1000 then redis.call('HSET', KEYS[k + 2], unpack(whole)); whole = {} end
      end
      if ARGV[a + 4] == '1' then
        redis.call('XADD', KEYS[k + 4], 'MINID', '~', ARGV[1], '*', 'd', ARGV[a], 'e', ARGV[a + 6], 'w', ARGV[a + 5])
      end
      a = a + 7
    end
    if #whole > 0 then redis.call('HSET', KEYS[k + 2], unpack(whole)) end
    for _, at in ipairs(appends) do
      local id, value = ARGV[at], ARGV[at + 1]
      local old = redis.call('HGET', KEYS[k + 2], id)
      if old then
        local nl = string.find(old, '\n', 1, true)
        if nl then value = value .. '\n' .. string.sub(old, nl + 1) end
      end
      if ARGV[at + 2] ~= '' then value = value .. '\n' .. ARGV[at + 2] end
      redis.call('HSET', KEYS[k + 2], id, value)
    end
    for i = 1, m do
      redis.call('HINCRBY', KEYS[k + 3], ARGV[a], ARGV[a + 1])
      a = a + 2
    end
    if ck ~= '' then redis.call('SET', KEYS[k + 5], ck) end
    out[b] = 1
  end
end
return out
"#;

/// Puts a finished delivery back in its partition's log (a manual retry, a replay), only if
/// its status is one of those given, so two replays of one window send it once. Its state
/// becomes pending (its attempts are kept) and a copy of its job is appended, naming the
/// delivery (`d`) and, for a manual retry, `m`. KEYS: jobs stream, states, counts. ARGV:
/// entry, workspace, allowed statuses (space-separated), `1` for a manual retry.
const REQUEUE: &str = r#"
local job = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #job == 0 then return 0 end
local fields = job[1][2]
local f = {}
for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
if f['w'] ~= ARGV[2] or f['d'] then return 0 end
local state = redis.call('HGET', KEYS[2], ARGV[1])
if not state then return 0 end
local nl = string.find(state, '\n', 1, true)
local header, rest = state, ''
if nl then header = string.sub(state, 1, nl - 1); rest = string.sub(state, nl) end
local p = cjson.decode(header)
if not string.find(' ' .. ARGV[3] .. ' ', ' ' .. p['s'] .. ' ', 1, true) then return 0 end
local fresh = '{"s":"pending","n":' .. tostring(p['n'] or 0) .. ',"f":' .. tostring(p['f'] or 0) .. '}'
redis.call('HSET', KEYS[2], ARGV[1], fresh .. rest)
local counter = ({succeeded = 's', failed = 'f', retrying = 'r'})[p['s']]
if counter then redis.call('HINCRBY', KEYS[3], f['w'] .. '|' .. f['e'] .. '|' .. counter, -1) end
redis.call('XADD', KEYS[1], '*', 'w', f['w'], 'e', f['e'], 'r', f['r'], 'v', f['v'], 't', f['t'],
  'k', f['k'] or '', 'b', f['b'], 'd', ARGV[1], 'm', ARGV[4])
return 1
"#;

/// Retention of one partition: of the jobs in `XRANGE start end COUNT count` (the caller
/// bounds it to the candidates: older than the retention, or the oldest beyond the cap),
/// drops those whose delivery is final, with their state (a copy's state is its delivery's,
/// dropped with the delivery's first job; a copy whose state is gone is dropped too). Read and
/// checked here, in one step, so a requeue between a read and the drop cannot lose its
/// delivery's state, and no job's body travels to the caller. KEYS: jobs stream, states.
/// ARGV: start, end, count. Returns {dropped, jobs looked at, the last one's entry}.
const TRIM: &str = r#"
local jobs = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local dels = {}
for _, job in ipairs(jobs) do
  local entry, key = job[1], job[1]
  local fields = job[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'd' then key = fields[i + 1] end
  end
  local state = redis.call('HGET', KEYS[2], key)
  local final = state and (string.find(state, '^{"s":"succeeded"') or string.find(state, '^{"s":"failed"'))
  if final or (not state and entry ~= key) then
    dels[#dels + 1] = entry
    if entry == key then redis.call('HDEL', KEYS[2], key) end
  end
end
if #dels > 0 then redis.call('XDEL', KEYS[1], unpack(dels)) end
local last = ''
if #jobs > 0 then last = jobs[#jobs][1] end
return {#dels, #jobs, last}
"#;

macro_rules! script {
    ($name:ident, $src:ident) => {
        static $name: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new($src));
    };
}
script!(INGEST_SCRIPT, INGEST);
script!(CLAIM_SCRIPT, CLAIM);
script!(PART_SCRIPT, PART);
script!(EVENTS_SCRIPT, EVENTS);
script!(COMMIT_SCRIPT, COMMIT);
script!(REQUEUE_SCRIPT, REQUEUE);
script!(TRIM_SCRIPT, TRIM);

/// Deliveries written per script call at most (a call holds the Redis thread while it runs,
/// and every other command waits behind it); a request that makes more is split in calls made
/// in order.
const MAX_PER_CALL: usize = 500;
/// Jobs a retention pass looks at.
const TRIM_BATCH: usize = 2000;

pub(crate) fn field(map: &std::collections::HashMap<String, Value>, k: &str) -> Option<String> {
    match map.get(k)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A job from its stream entry, `None` for an entry that is not a job.
pub(crate) fn job_of(
    partition: u32,
    id: &str,
    map: &std::collections::HashMap<String, Value>,
) -> Option<RawJob> {
    let entry: EntryId = id.parse().ok()?;
    let first = field(map, "d").and_then(|d| d.parse::<EntryId>().ok());
    let job = Job {
        id: DeliveryId {
            partition,
            entry: first.unwrap_or(entry),
        },
        entry,
        workspace: field(map, "w")?,
        endpoint_id: field(map, "e")?,
        rule_id: field(map, "r")?.parse().ok()?,
        event_id: field(map, "v").unwrap_or_default(),
        event_type: field(map, "t").unwrap_or_default(),
        key: field(map, "k").unwrap_or_default(),
        body: field(map, "b").unwrap_or_default().into(),
        manual: field(map, "m").as_deref() == Some("1"),
        progress: Progress::NEW,
    };
    Some(RawJob {
        job,
        requeued: first.is_some(),
    })
}

/// A job from a stream entry's field list as Redis sent it, taking its strings (the reader's
/// path: no map, no copies); `None` for an entry that is not a job.
fn job_of_fields(partition: u32, id: &[u8], fields: Vec<Value>) -> Option<RawJob> {
    let entry: EntryId = std::str::from_utf8(id).ok()?.parse().ok()?;
    let text = |v: Value| -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b).ok(),
            Value::SimpleString(s) => Some(s),
            _ => None,
        }
    };
    let (mut w, mut e, mut r, mut v, mut t, mut k, mut b, mut d, mut m) =
        (None, None, None, None, None, None, None, None, false);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let name = match &name {
            Value::BulkString(n) => n.as_slice(),
            Value::SimpleString(n) => n.as_bytes(),
            _ => continue,
        };
        match name {
            b"w" => w = text(value),
            b"e" => e = text(value),
            b"r" => r = text(value).and_then(|s| s.parse::<u64>().ok()),
            b"v" => v = text(value),
            b"t" => t = text(value),
            b"k" => k = text(value),
            b"b" => b = text(value),
            b"d" => d = text(value).and_then(|s| s.parse::<EntryId>().ok()),
            b"m" => m = text(value).as_deref() == Some("1"),
            _ => {}
        }
    }
    let job = Job {
        id: DeliveryId {
            partition,
            entry: d.unwrap_or(entry),
        },
        entry,
        workspace: w?,
        endpoint_id: e?,
        rule_id: r?,
        event_id: v.unwrap_or_default(),
        event_type: t.unwrap_or_default(),
        key: k.unwrap_or_default(),
        body: b.unwrap_or_default().into(),
        manual: m,
        progress: Progress::NEW,
    };
    Some(RawJob {
        job,
        requeued: d.is_some(),
    })
}

/// The jobs of an `XREAD` reply, per stream key (RESP2 arrays or a RESP3 map).
fn read_reply(reply: Value) -> Vec<(Vec<u8>, Vec<RawJob>)> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => {
                    let mut kv = kv.into_iter();
                    Some((kv.next()?, kv.next()?))
                }
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams,
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .filter_map(|(key, entries)| {
            let Value::BulkString(key) = key else {
                return None;
            };
            let Value::Array(entries) = entries else {
                return None;
            };
            Some((key, entries))
        })
        .map(|(key, entries)| {
            let jobs = entries
                .into_iter()
                .filter_map(|entry| {
                    let Value::Array(parts) = entry else {
                        return None;
                    };
                    let mut parts = parts.into_iter();
                    let Some(Value::BulkString(id)) = parts.next() else {
                        return None;
                    };
                    let Some(Value::Array(fields)) = parts.next() else {
                        return None;
                    };
                    // The partition is set by the caller, which knows the key's.
                    job_of_fields(0, &id, fields)
                })
                .collect();
            (key, jobs)
        })
        .collect()
}

/// A partition's reader, on a connection of its own (a blocking read must not share one).
pub struct JobReader {
    conn: Conn,
    stream: String,
    partition: u32,
    lag: Lag,
}

impl RedisStore {
    pub(crate) fn stream_key(&self, partition: u32) -> String {
        self.key(&format!("{{p{partition}}}:q"))
    }

    pub(crate) fn states_key(&self, partition: u32) -> String {
        self.key(&format!("{{p{partition}}}:s"))
    }

    pub(crate) fn counts_key(&self, partition: u32) -> String {
        self.key(&format!("{{p{partition}}}:n"))
    }

    pub(crate) fn dead_key(&self, partition: u32) -> String {
        self.key(&format!("{{p{partition}}}:dead"))
    }

    fn checkpoint_key(&self, partition: u32) -> String {
        self.key(&format!("{{p{partition}}}:ck"))
    }

    pub(crate) fn events_key(&self, ws: &str) -> String {
        self.ws_key(ws, "ev")
    }

    fn idem_key(&self, ws: &str, key: &str) -> String {
        self.ws_key(ws, &format!("idem:{key}"))
    }

    /// The cutoff of the time retention, as a stream id bound.
    fn cutoff(&self) -> String {
        self.retention_cutoff_ms().max(0).to_string()
    }

    pub async fn ingest(
        &self,
        ws: &str,
        events: &[NewEvent],
        idem: Option<&Idempotency>,
    ) -> Result<Ingested> {
        let total: usize = events.iter().map(|e| e.deliveries.len()).sum();
        if self.is_cluster() || (total > MAX_PER_CALL && idem.is_some()) {
            // A cluster's slots, or a keyed request too large for one call: the steps of the
            // cluster protocol (claim, partitions, events), each once for the key.
            return self.ingest_on_cluster(ws, events, idem).await;
        }
        if total > MAX_PER_CALL {
            // One call at a time, in order, so a long request never holds Redis for long.
            let mut answer = Vec::with_capacity(events.len());
            let mut start = 0;
            while start < events.len() {
                let mut end = start;
                let mut n = 0;
                while end < events.len()
                    && (end == start || n + events[end].deliveries.len() <= MAX_PER_CALL)
                {
                    n += events[end].deliveries.len();
                    end += 1;
                }
                match self.ingest_one_call(ws, &events[start..end], None).await? {
                    Ingested::Written(a) => answer.extend(a),
                    other => return Ok(other),
                }
                start = end;
            }
            return Ok(Ingested::Written(answer));
        }
        self.ingest_one_call(ws, events, idem).await
    }

    /// One call of the ingest script for `events`.
    async fn ingest_one_call(
        &self,
        ws: &str,
        events: &[NewEvent],
        idem: Option<&Idempotency>,
    ) -> Result<Ingested> {
        debug_assert!(events.len() <= super::log::EVENTS_PER_ENTRY);
        let mut inv = INGEST_SCRIPT.prepare_invoke();
        inv.key(self.events_key(ws));
        inv.key(match idem {
            Some(i) => self.idem_key(ws, &i.key),
            None => self.ws_key(ws, "idem:"),
        });
        // KEYS indexes (1-based, as Lua sees them) of each partition's stream; its counts key
        // follows it.
        let mut slot: BTreeMap<u32, usize> = BTreeMap::new();
        let mut next_key = 3;
        for e in events {
            for d in &e.deliveries {
                slot.entry(d.partition).or_insert_with(|| {
                    inv.key(self.stream_key(d.partition));
                    inv.key(self.counts_key(d.partition));
                    next_key += 2;
                    next_key - 2
                });
            }
        }
        let mut created: BTreeMap<(usize, &str), i64> = BTreeMap::new();
        for e in events {
            for d in &e.deliveries {
                *created
                    .entry((slot[&d.partition] + 1, &d.endpoint_id))
                    .or_default() += 1;
            }
        }
        inv.arg(ws)
            .arg(if idem.is_some() { "1" } else { "0" })
            .arg(idem.map_or("", |i| i.fingerprint.as_str()))
            .arg(idem.map_or(1, |i| i.ttl_secs.max(1)))
            .arg(self.cutoff())
            .arg(self.retention.max_per_partition)
            .arg(events.len())
            .arg(created.len());
        for e in events {
            let parts: Vec<String> = e
                .deliveries
                .iter()
                .map(|d| d.partition.to_string())
                .collect();
            inv.arg(&e.id)
                .arg(crate::store::log::event_ms(&e.id).unwrap_or(0))
                .arg(&e.event_type)
                .arg(if e.deliveries.is_empty() {
                    e.body.as_bytes()
                } else {
                    b""
                })
                .arg(parts.join(" "))
                .arg(e.deliveries.len());
            for d in &e.deliveries {
                inv.arg(slot[&d.partition])
                    .arg(&d.endpoint_id)
                    .arg(d.rule_id)
                    .arg(&d.key)
                    .arg(d.body.as_bytes());
            }
        }
        for ((counts, ep), n) in &created {
            inv.arg(*counts).arg(format!("{ws}|{ep}|c")).arg(*n);
        }
        let reply: Vec<String> = inv.invoke_async(&mut self.conn()).await?;
        Ok(match reply.first().map(String::as_str) {
            Some("!") => Ingested::Reused,
            Some("=") => {
                Ingested::Answered(Answered::decode(reply.get(1).map_or("", String::as_str)).events)
            }
            _ => Ingested::Written(
                events
                    .iter()
                    .zip(reply.iter().skip(1))
                    .map(|(e, entries)| (e.id.clone(), delivery_ids(e, entries)))
                    .collect(),
            ),
        })
    }

    /// Ingest on a Redis Cluster: the claim (with a key), one call per partition, then the
    /// events and the answer; see [`CLAIM`], [`PART`], [`EVENTS`]. A crash between the steps
    /// is repaired by the same request again (its key's claim and markers make each step
    /// once); without a key it can leave jobs whose event is not in the event log.
    async fn ingest_on_cluster(
        &self,
        ws: &str,
        events: &[NewEvent],
        idem: Option<&Idempotency>,
    ) -> Result<Ingested> {
        let mut ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        if let Some(i) = idem {
            let claim: String = CLAIM_SCRIPT
                .key(self.idem_key(ws, &i.key))
                .arg(&i.fingerprint)
                .arg(ids.join(" "))
                .arg(i.ttl_secs.max(1))
                .invoke_async(&mut self.conn())
                .await?;
            match claim.as_bytes().first() {
                Some(b'!') => return Ok(Ingested::Reused),
                Some(b'=') => return Ok(Ingested::Answered(Answered::decode(&claim[1..]).events)),
                Some(b'#') => {
                    let claimed: Vec<String> = claim[1..].split(' ').map(str::to_string).collect();
                    if claimed.len() == ids.len() {
                        ids = claimed;
                    }
                }
                _ => {}
            }
        }
        let mut by_partition: BTreeMap<u32, Vec<(usize, &crate::delivery::NewDelivery)>> =
            BTreeMap::new();
        for (e, ev) in events.iter().enumerate() {
            for d in &ev.deliveries {
                by_partition.entry(d.partition).or_default().push((e, d));
            }
        }
        let keyed = idem.is_some();
        let ids_ref = &ids;
        let writes = by_partition.iter().map(|(p, group)| async move {
            let mut written: Vec<DeliveryId> = Vec::with_capacity(group.len());
            for (n, chunk) in group.chunks(MAX_PER_CALL).enumerate() {
                let marker = match idem {
                    Some(i) => self.key(&format!("{{p{p}}}:idem:{ws}:{}:{n}", i.key)),
                    None => self.key(&format!("{{p{p}}}:idem:")),
                };
                let mut created: BTreeMap<&str, i64> = BTreeMap::new();
                for (_, d) in chunk {
                    *created.entry(&d.endpoint_id).or_default() += 1;
                }
                let mut inv = PART_SCRIPT.prepare_invoke();
                inv.key(self.stream_key(*p))
                    .key(self.counts_key(*p))
                    .key(marker)
                    .arg(ws)
                    .arg(if keyed { "1" } else { "0" })
                    .arg(idem.map_or(1, |i| i.ttl_secs.max(1)))
                    .arg(chunk.len())
                    .arg(created.len());
                for (e, d) in chunk {
                    inv.arg(&ids_ref[*e])
                        .arg(&events[*e].event_type)
                        .arg(&d.endpoint_id)
                        .arg(d.rule_id)
                        .arg(&d.key)
                        .arg(d.body.as_bytes());
                }
                for (ep, n) in &created {
                    inv.arg(format!("{ws}|{ep}|c")).arg(*n);
                }
                let out: String = inv.invoke_async(&mut self.conn()).await?;
                written.extend(out.split(' ').filter(|s| !s.is_empty()).filter_map(|e| {
                    e.parse::<EntryId>().ok().map(|entry| DeliveryId {
                        partition: *p,
                        entry,
                    })
                }));
            }
            Ok::<_, StoreError>((group, written))
        });
        let written = futures::future::try_join_all(writes).await?;
        let mut per_event: Vec<Vec<DeliveryId>> = vec![Vec::new(); events.len()];
        for (group, written) in written {
            for ((e, _), id) in group.iter().zip(written) {
                per_event[*e].push(id);
            }
        }
        let answer = Answered {
            fingerprint: idem.map(|i| i.fingerprint.clone()).unwrap_or_default(),
            events: ids
                .iter()
                .zip(&per_event)
                .map(|(id, ds)| (id.clone(), ds.iter().map(|d| d.to_string()).collect()))
                .collect(),
        };
        let mut inv = EVENTS_SCRIPT.prepare_invoke();
        inv.key(self.events_key(ws))
            .key(match idem {
                Some(i) => self.idem_key(ws, &i.key),
                None => self.ws_key(ws, "idem:"),
            })
            .arg(if keyed { "1" } else { "0" })
            .arg(idem.map_or(1, |i| i.ttl_secs.max(1)))
            .arg(self.cutoff())
            .arg(self.retention.max_per_partition)
            .arg(answer.encode())
            .arg(events.len());
        for ((ev, id), ds) in events.iter().zip(&ids).zip(&per_event) {
            let (partitions, entries) = crate::store::record::split_ids(ds);
            inv.arg(crate::store::log::event_ms(id).unwrap_or(0))
                .arg(id)
                .arg(&ev.event_type)
                .arg(entries)
                .arg(partitions)
                .arg(if ev.deliveries.is_empty() {
                    ev.body.as_bytes()
                } else {
                    b""
                });
        }
        let done: String = inv.invoke_async(&mut self.conn()).await?;
        if let Some(prev) = done.strip_prefix('=') {
            return Ok(Ingested::Answered(Answered::decode(prev).events));
        }
        Ok(Ingested::Written(answer.events))
    }

    /// Opens a reader of `partition` on a connection of its own.
    pub async fn job_reader(&self, partition: u32) -> Result<JobReader> {
        Ok(JobReader {
            conn: self.target.blocking().await?,
            stream: self.stream_key(partition),
            partition,
            lag: Lag::default(),
        })
    }

    pub async fn checkpoint(&self, partition: u32) -> Result<Checkpoint> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.checkpoint_key(partition))
            .query_async(&mut self.conn())
            .await?;
        Ok(raw.map(|r| Checkpoint::decode(&r)).unwrap_or_default())
    }

    /// The progress of deliveries of one partition, in one `HMGET`.
    pub async fn progress(
        &self,
        partition: u32,
        ids: &[DeliveryId],
    ) -> Result<Vec<Option<Progress>>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.states_key(partition));
        for id in ids {
            cmd.arg(id.entry.to_string());
        }
        let states: Vec<Option<String>> = cmd.query_async(&mut self.conn()).await?;
        states
            .iter()
            .map(|s| s.as_deref().map(decode_progress).transpose())
            .collect()
    }

    /// Several partitions' batches in one script (one Redis: every key is on it).
    pub async fn commit_many(&self, batches: &[CommitBatch]) -> Vec<Result<()>> {
        match self.commit_script(batches).await {
            Ok(written) => batches
                .iter()
                .zip(written.into_iter().chain(std::iter::repeat(0)))
                .map(|(b, w)| {
                    if w == 1 {
                        Ok(())
                    } else {
                        Err(StoreError::StaleLease(b.partition))
                    }
                })
                .collect(),
            Err(e) => batches
                .iter()
                .map(|_| Err(StoreError::Unavailable(e.to_string())))
                .collect(),
        }
    }

    async fn commit_script(&self, batches: &[CommitBatch]) -> Result<Vec<i64>> {
        let mut inv = COMMIT_SCRIPT.prepare_invoke();
        for b in batches {
            let p = b.partition;
            inv.key(self.lease_key(p))
                .key(self.states_key(p))
                .key(self.counts_key(p))
                .key(self.dead_key(p))
                .key(self.checkpoint_key(p));
        }
        inv.arg(self.cutoff()).arg(batches.len());
        for b in batches {
            let mut moves: BTreeMap<String, i64> = BTreeMap::new();
            for o in &b.outcomes {
                for (counter, delta) in Counts::moves(o.from, o.progress.status) {
                    *moves
                        .entry(format!("{}|{}|{counter}", o.workspace, o.endpoint_id))
                        .or_default() += delta;
                }
            }
            inv.arg(b.fence.as_deref().unwrap_or(""))
                .arg(b.checkpoint.map(|c| c.encode()).unwrap_or_default())
                .arg(b.outcomes.len())
                .arg(moves.len());
            for o in &b.outcomes {
                let progress = serde_json::to_string(&o.progress)?;
                let line = match &o.attempt {
                    Some(a) => serde_json::to_string(a)?,
                    None => String::new(),
                };
                let append =
                    o.attempt.as_ref().is_none_or(|a| a.n > 1) || o.from != Status::Pending;
                let dead = o.progress.status == Status::Failed && o.from != Status::Failed;
                let (state, line) = match (append, line.is_empty()) {
                    (true, _) => (progress, line),
                    (false, true) => (progress, String::new()),
                    (false, false) => (format!("{progress}\n{line}"), String::new()),
                };
                inv.arg(o.id.entry.to_string())
                    .arg(state)
                    .arg(line)
                    .arg(if append { "1" } else { "0" })
                    .arg(if dead { "1" } else { "0" })
                    .arg(&o.workspace)
                    .arg(&o.endpoint_id);
            }
            for (f, d) in &moves {
                inv.arg(f).arg(*d);
            }
        }
        Ok(inv.invoke_async(&mut self.conn()).await?)
    }

    pub async fn requeue(
        &self,
        ws: &str,
        id: DeliveryId,
        from: &[Status],
        manual: bool,
    ) -> Result<bool> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let done: i64 = REQUEUE_SCRIPT
            .key(self.stream_key(id.partition))
            .key(self.states_key(id.partition))
            .key(self.counts_key(id.partition))
            .arg(id.entry.to_string())
            .arg(ws)
            .arg(from.join(" "))
            .arg(if manual { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(done == 1)
    }

    /// The deliveries of `endpoint` that went to the dead letter between `since_ms` and
    /// `until_ms`.
    pub async fn dead_letters(
        &self,
        ws: &str,
        endpoint: &str,
        partition: u32,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Vec<DeliveryId>> {
        let end = until_ms.map_or("+".to_string(), |u| u.to_string());
        let entries: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.dead_key(partition))
            .arg(since_ms.max(0).to_string())
            .arg(end)
            .query_async(&mut self.conn())
            .await?;
        Ok(entries
            .ids
            .iter()
            .filter(|e| {
                field(&e.map, "e").as_deref() == Some(endpoint)
                    && field(&e.map, "w").as_deref() == Some(ws)
            })
            .filter_map(|e| field(&e.map, "d")?.parse().ok())
            .map(|entry| DeliveryId { partition, entry })
            .collect())
    }

    /// One retention pass over a partition's oldest jobs from `from` on: returns how many
    /// were dropped and where the next pass starts (back at the head once it has looked at
    /// every candidate). Only candidates are read: the oldest beyond the cap, or those older
    /// than the retention, so a partition with nothing to drop costs an `XLEN` and an empty
    /// range.
    pub async fn trim_partition(&self, partition: u32, from: EntryId) -> Result<(u64, EntryId)> {
        let stream = self.stream_key(partition);
        let mut conn = self.conn();
        let len: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await?;
        let over = len.saturating_sub(self.retention.max_per_partition);
        let cutoff = self.retention_cutoff_ms().max(0) as u64;
        let start = if from == EntryId::ZERO {
            "-".to_string()
        } else {
            format!("({from}")
        };
        let (end, count) = if over > 0 {
            ("+".to_string(), over.min(TRIM_BATCH as u64) as usize)
        } else if cutoff > 0 {
            (format!("({cutoff}-0"), TRIM_BATCH)
        } else {
            return Ok((0, EntryId::ZERO));
        };
        let (removed, seen, last): (i64, usize, String) = TRIM_SCRIPT
            .key(&stream)
            .key(self.states_key(partition))
            .arg(start)
            .arg(end)
            .arg(count)
            .invoke_async(&mut conn)
            .await?;
        let next = if seen < count {
            EntryId::ZERO
        } else {
            last.parse().unwrap_or(EntryId::ZERO)
        };
        Ok((removed.max(0) as u64, next))
    }
}

/// The delivery ids of an event's deliveries from the entries its ingest wrote.
fn delivery_ids(e: &NewEvent, entries: &str) -> Vec<String> {
    e.deliveries
        .iter()
        .zip(entries.split(' '))
        .filter_map(|(d, entry)| {
            Some(
                DeliveryId {
                    partition: d.partition,
                    entry: entry.parse().ok()?,
                }
                .to_string(),
            )
        })
        .collect()
}

/// A reader of several partitions' logs at once, on a connection of its own: one `XREAD` over
/// every stream (one Redis only; on a cluster the streams are in different slots).
pub struct MultiReader {
    conn: Conn,
}

impl RedisStore {
    pub async fn multi_reader(&self) -> Result<MultiReader> {
        Ok(MultiReader {
            conn: self.target.blocking().await?,
        })
    }
}

impl RedisStore {
    /// A partition's lag as [`Lag`] tracks it, on the shared connection.
    pub async fn partition_lag(
        &self,
        lag: &mut Lag,
        partition: u32,
        after: EntryId,
    ) -> Result<i64> {
        lag.measure(&mut self.conn(), &self.stream_key(partition), after)
            .await
    }
}

impl MultiReader {
    /// Up to `count` jobs of each partition after its cursor, waiting up to `block` for any.
    pub async fn read(
        &mut self,
        store: &RedisStore,
        from: &[(u32, EntryId)],
        count: usize,
        block: Duration,
    ) -> Result<Vec<(u32, Vec<RawJob>)>> {
        let keys: Vec<String> = from.iter().map(|(p, _)| store.stream_key(*p)).collect();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&keys);
        for (_, after) in from {
            cmd.arg(after.to_string());
        }
        let reply: Value = cmd.query_async(&mut self.conn).await?;
        let by_key: std::collections::HashMap<&[u8], u32> = keys
            .iter()
            .zip(from)
            .map(|(k, (p, _))| (k.as_bytes(), *p))
            .collect();
        Ok(read_reply(reply)
            .into_iter()
            .filter_map(|(key, mut jobs)| {
                let p = *by_key.get(key.as_slice())?;
                for raw in &mut jobs {
                    raw.job.id.partition = p;
                }
                Some((p, jobs))
            })
            .collect())
    }
}

impl JobReader {
    /// Up to `count` jobs after `after`, waiting up to `block` for new ones.
    pub async fn read(
        &mut self,
        after: EntryId,
        count: usize,
        block: Duration,
    ) -> Result<Vec<RawJob>> {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(after.to_string())
            .query_async(&mut self.conn)
            .await?;
        let mut jobs: Vec<RawJob> = read_reply(reply)
            .into_iter()
            .flat_map(|(_, jobs)| jobs)
            .collect();
        self.lag.read(jobs.len());
        for raw in &mut jobs {
            raw.job.id.partition = self.partition;
        }
        Ok(jobs)
    }

    /// Entries after `after` (see [`Lag`]).
    pub async fn lag(&mut self, after: EntryId) -> Result<i64> {
        self.lag.measure(&mut self.conn, &self.stream, after).await
    }
}

/// The lag of a partition's reader: exact once the reader has caught up with the stream once
/// (`XINFO STREAM`'s `entries-added` then, plus what it has read since), the stream's length
/// before that.
#[derive(Debug, Default)]
pub struct Lag {
    caught_up: Option<(u64, u64)>,
}

impl Lag {
    /// `n` more entries were read.
    pub fn read(&mut self, n: usize) {
        if let Some((_, read)) = &mut self.caught_up {
            *read += n as u64;
        }
    }

    pub async fn measure(&mut self, conn: &mut Conn, stream: &str, after: EntryId) -> Result<i64> {
        let info: redis::RedisResult<std::collections::HashMap<String, Value>> =
            redis::cmd("XINFO")
                .arg("STREAM")
                .arg(stream)
                .query_async(conn)
                .await;
        let Ok(info) = info else {
            return Ok(0);
        };
        let int = |k: &str| match info.get(k) {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        };
        let last: EntryId = field(&info, "last-generated-id")
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let added = int("entries-added");
        if last <= after {
            self.caught_up = Some((added, 0));
            return Ok(0);
        }
        Ok(match self.caught_up {
            Some((at, read)) => added.saturating_sub(at + read) as i64,
            None => int("length") as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn an_xread_reply_becomes_jobs_without_a_map() {
        let fields = |extra: &[(&str, &str)]| {
            let mut f = vec![];
            for (k, v) in [
                ("w", "ws"),
                ("e", "ep_1"),
                ("r", "7"),
                ("v", "evt_1"),
                ("t", "member:created"),
                ("k", "acct-1"),
                ("b", "{}"),
            ]
            .iter()
            .chain(extra)
            {
                f.push(bulk(k));
                f.push(bulk(v));
            }
            Value::Array(f)
        };
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("p:{p3}:q"),
            Value::Array(vec![
                Value::Array(vec![bulk("5-1"), fields(&[])]),
                Value::Array(vec![bulk("6-0"), fields(&[("d", "5-1"), ("m", "1")])]),
                Value::Array(vec![bulk("7-0"), Value::Array(vec![bulk("x"), bulk("y")])]),
            ]),
        ])]);
        let read = read_reply(reply);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, b"p:{p3}:q");
        let jobs = &read[0].1;
        assert_eq!(jobs.len(), 2, "an entry that is not a job is skipped");
        let first = &jobs[0].job;
        assert_eq!(
            (first.entry.to_string(), first.rule_id, first.key.as_str()),
            ("5-1".to_string(), 7, "acct-1")
        );
        assert!(!jobs[0].requeued && !first.manual);
        let copy = &jobs[1];
        assert!(copy.requeued && copy.job.manual);
        assert_eq!(
            copy.job.id.entry.to_string(),
            "5-1",
            "a copy names its delivery"
        );
        assert_eq!(copy.job.entry.to_string(), "6-0");
        assert!(read_reply(Value::Nil).is_empty(), "a read that timed out");
    }
}
