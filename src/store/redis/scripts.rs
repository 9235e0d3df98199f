//! The Lua scripts of the jobs role. Each one only moves its arguments into commands: ids,
//! fields and counts are built by the caller, so a script costs the commands it makes and
//! holds the Redis thread no longer than they take.

/// Ingest on one Redis: one call for the requests that gathered while the previous call ran
/// (`super::ingest`), each one as it would be alone. Per request: the versions check, the
/// idempotency check, every job, the events (in one entry of the workspace's log, after its
/// newest entry and at the events' ids' time or later, so an id finds its event from its time),
/// the endpoints' created counts and the idempotency record.
/// The script only moves arguments into commands: ids, fields and counts are built by the
/// caller, so its cost is the commands it makes. What the requests of one call share is done
/// once per call: the versions are read once per workspace, the log's newest entry once per
/// log (then known from the entry just added), and the count moves are summed and applied
/// after the last request, one `HINCRBY` per counter (eight one-event requests of one
/// workspace make 14 to 21 of their 56 commands fewer).
///
/// ARGV[1] is the number of requests; then each request's section: the number of its KEYS and
/// of its ARGV (these two included), then its own fields. A section's KEYS: event log,
/// idempotency record, the workspace's rule and endpoint versions, then the jobs streams and
/// counts of the partitions touched. Its ARGV: workspace, `1` with an idempotency key, its
/// fingerprint, its TTL, the event log's MINID bound and cap, the number of events, the number
/// of count moves, the rule and endpoint versions the events were planned with (empty: not
/// checked); per event: id, unix ms of the id, type, body (when no delivery carries it as it
/// is), its deliveries' partitions (space-separated), number of deliveries; per delivery: the
/// index among the section's KEYS of its stream, the packed job (`super::packed`); per count
/// move: KEYS index, field, increment.
/// Returns one reply per request: `{'?'}` (a version moved: nothing written), `{'=', record}`
/// (the key was used with these events), `{'!'}` (with others), or `{'+', entries of event 1,
/// entries of event 2, ...}`.
const INGEST: &str = r#"
-- Shared by the requests of the call: versions by key pair, the newest entry's ms by log,
-- the count moves by key (each a list of its fields, in order, and their sums).
local versions, heads, moves, moved = {}, {}, {}, {}
local function request(k, b)
  -- The section's KEYS are KEYS[k + 1 ...], its fields ARGV[b ...] (indexed directly in the
  -- loops: a Lua call per field would cost more than the commands).
  local keyed = ARGV[b + 1] == '1'
  local fpr, ttl, minid, cap = ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], tonumber(ARGV[b + 5])
  local nev, nmoves = tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7])
  local log, idem = KEYS[k + 1], KEYS[k + 2]
  if ARGV[b + 8] ~= '' then
    local vk = KEYS[k + 3] .. ' ' .. KEYS[k + 4]
    local v = versions[vk]
    if not v then
      v = redis.call('MGET', KEYS[k + 3], KEYS[k + 4])
      versions[vk] = v
    end
    if (v[1] or '0') ~= ARGV[b + 8] or (v[2] or '0') ~= ARGV[b + 9] then return {'?'} end
  end
  if keyed then
    local prev = redis.call('GET', idem)
    if prev then
      local nl = string.find(prev, '\n', 1, true)
      local fp = prev
      if nl then fp = string.sub(prev, 1, nl - 1) end
      if fp == fpr then return {'=', prev} end
      return {'!'}
    end
  end
  local last = heads[log]
  if not last then
    local head = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
    last = 0
    if #head > 0 then last = tonumber(string.match(head[1][1], '^(%d+)')) end
  end
  local out = {'+'}
  local lines = {}
  local logged = {}
  local a = b + 10
  for e = 1, nev do
    local id, ems, etype, ebody, parts, n = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5])
    a = a + 6
    local jids = {}
    for i = 1, n do
      jids[i] = redis.call('XADD', KEYS[k + tonumber(ARGV[a])], '*', 'j', ARGV[a + 1])
      a = a + 2
    end
    if ems > last then last = ems end
    local d = table.concat(jids, ' ')
    if ebody ~= '' then
      logged[e] = id .. '\t' .. etype .. '\t' .. parts .. '\t' .. d .. '\t' .. ebody
    else
      logged[e] = id .. '\t' .. etype .. '\t' .. parts .. '\t' .. d
    end
    out[#out + 1] = d
    if keyed then lines[#lines + 1] = id .. '|' .. parts .. '|' .. d end
  end
  redis.call('XADD', log, 'MINID', '~', minid, string.format('%.0f', last) .. '-*', 'e', table.concat(logged, '\n'))
  heads[log] = last
  for i = 1, nmoves do
    local key, field = KEYS[k + tonumber(ARGV[a])], ARGV[a + 1]
    local by = moves[key]
    if not by then
      by = {}
      moves[key] = by
      moved[#moved + 1] = key
    end
    if not by[field] then
      by[field] = 0
      by[#by + 1] = field
    end
    by[field] = by[field] + tonumber(ARGV[a + 2])
    a = a + 3
  end
  if last % 64 == 0 and cap > 0 then
    redis.call('XTRIM', log, 'MAXLEN', '~', cap)
  end
  if keyed then
    redis.call('SET', idem, fpr .. '\n' .. table.concat(lines, '\n'), 'EX', ttl)
  end
  return out
end
local replies = {}
local k, b = 0, 2
for r = 1, tonumber(ARGV[1]) do
  replies[r] = request(k, b + 2)
  k = k + tonumber(ARGV[b])
  b = b + tonumber(ARGV[b + 1])
end
for _, key in ipairs(moved) do
  local by = moves[key]
  for _, field in ipairs(by) do
    if by[field] ~= 0 then redis.call('HINCRBY', key, field, by[field]) end
  end
end
return replies
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
/// moves; per job: the packed job (`super::packed`); per count move: field, increment.
/// Returns the jobs' entries, space-separated.
const PART: &str = r#"
if ARGV[2] == '1' then
  local done = redis.call('GET', KEYS[3])
  if done then return done end
end
local ids = {}
local a = 6
for i = 1, tonumber(ARGV[4]) do
  ids[i] = redis.call('XADD', KEYS[1], '*', 'j', ARGV[a])
  a = a + 1
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

/// Lua's reading of a job entry's fields, packed (`super::packed`) or of the older layout of
/// a field per part, into a table of `d` (empty for a delivery's first job), `m`, `w`, `e`,
/// `r`, `v`, `t`, `k`, `b`; `nil` for an entry that is not a job.
macro_rules! job_of_lua {
    () => {
        r#"
local function job_of(fields)
  local f = {}
  for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
  if f['j'] then
    local d, m, w, e, r, v, t, kl, tail = string.match(f['j'],
      '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(%d+)\t(.*)$')
    if not d then return nil end
    kl = tonumber(kl)
    return {d = d, m = m, w = w, e = e, r = r, v = v, t = t,
      k = string.sub(tail, 1, kl), b = string.sub(tail, kl + 1)}
  end
  if not f['w'] then return nil end
  return {d = f['d'] or '', m = f['m'] or '', w = f['w'], e = f['e'], r = f['r'], v = f['v'] or '',
    t = f['t'] or '', k = f['k'] or '', b = f['b'] or ''}
end
"#
    };
}

/// Puts a finished delivery back in its partition's log (a manual retry, a replay), only if
/// its status is one of those given, so two replays of one window send it once. Its state
/// becomes pending (its attempts are kept) and a copy of its job is appended, naming the
/// delivery (`d`) and, for a manual retry, `m`. KEYS: jobs stream, states, counts. ARGV:
/// entry, workspace, allowed statuses (space-separated), `1` for a manual retry.
const REQUEUE: &str = concat!(
    job_of_lua!(),
    r#"
local job = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #job == 0 then return 0 end
local f = job_of(job[1][2])
if not f or f['w'] ~= ARGV[2] or f['d'] ~= '' then return 0 end
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
redis.call('XADD', KEYS[1], '*', 'j', table.concat({ARGV[1], ARGV[4], f['w'], f['e'], f['r'],
  f['v'], f['t'], tostring(#f['k'])}, '\t') .. '\t' .. f['k'] .. f['b'])
return 1
"#
);

/// Retention of one partition: of the jobs in `XRANGE start end COUNT count` (the caller
/// bounds it to the candidates: older than the retention, or the oldest beyond the cap),
/// drops those whose delivery is final, with their state (a copy's state is its delivery's,
/// dropped with the delivery's first job; a copy whose state is gone is dropped too). Read and
/// checked here, in one step, so a requeue between a read and the drop cannot lose its
/// delivery's state, and no job's body travels to the caller. KEYS: jobs stream, states.
/// ARGV: start, end, count. Returns {dropped, jobs looked at, the last one's entry}.
const TRIM: &str = concat!(
    job_of_lua!(),
    r#"
local jobs = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local dels = {}
for _, job in ipairs(jobs) do
  local entry, key = job[1], job[1]
  local f = job_of(job[2])
  if f and f['d'] ~= '' then key = f['d'] end
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
"#
);

macro_rules! script {
    ($name:ident, $src:ident) => {
        pub(super) static $name: std::sync::LazyLock<redis::Script> =
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
