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

use redis::streams::StreamRangeReply;

use super::RedisStore;
use super::packed::{Packing, pack};
use super::reader::field;
use super::scripts::{
    CLAIM_SCRIPT, COMMIT_SCRIPT, EVENTS_SCRIPT, INGEST_SCRIPT, PART_SCRIPT, REQUEUE_SCRIPT,
    TRIM_SCRIPT,
};
use crate::delivery::{DeliveryId, EntryId, Progress, Status};
use crate::store::jobs::{CommitBatch, Idempotency, Ingested, NewEvent};
use crate::store::record::{Answered, Checkpoint, decode_progress};
use crate::store::{Counts, Result, StoreError};

/// Deliveries written per script call at most (a call holds the Redis thread while it runs,
/// and every other command waits behind it); a request that makes more is split in calls made
/// in order.
const MAX_PER_CALL: usize = 500;
/// Jobs a retention pass looks at.
const TRIM_BATCH: usize = 2000;

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
        expect: Option<(u64, u64)>,
    ) -> Result<Ingested> {
        let total: usize = events.iter().map(|e| e.deliveries.len()).sum();
        if self.is_cluster() || total > MAX_PER_CALL {
            // Written in several calls: the versions are checked once, before the first.
            if let Some(expect) = expect
                && self.versions(ws).await? != expect
            {
                return Ok(Ingested::Stale);
            }
        }
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
                match self
                    .ingest_one_call(ws, &events[start..end], None, None)
                    .await?
                {
                    Ingested::Written(a) => answer.extend(a),
                    other => return Ok(other),
                }
                start = end;
            }
            return Ok(Ingested::Written(answer));
        }
        self.ingest_one_call(ws, events, idem, expect).await
    }

    /// One call of the ingest script for `events`, checking the versions when `expect` names
    /// them.
    async fn ingest_one_call(
        &self,
        ws: &str,
        events: &[NewEvent],
        idem: Option<&Idempotency>,
        expect: Option<(u64, u64)>,
    ) -> Result<Ingested> {
        debug_assert!(events.len() <= super::log::EVENTS_PER_ENTRY);
        let mut inv = INGEST_SCRIPT.prepare_invoke();
        inv.key(self.events_key(ws));
        inv.key(match idem {
            Some(i) => self.idem_key(ws, &i.key),
            None => self.ws_key(ws, "idem:"),
        });
        inv.key(self.ws_key(ws, "rules:ver"));
        inv.key(self.ws_key(ws, "ep:ver"));
        // KEYS indexes (1-based, as Lua sees them) of each partition's stream; its counts key
        // follows it.
        let mut slot: BTreeMap<u32, usize> = BTreeMap::new();
        let mut next_key = 5;
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
            .arg(created.len())
            .arg(expect.map_or(String::new(), |(r, _)| r.to_string()))
            .arg(expect.map_or(String::new(), |(_, e)| e.to_string()));
        for e in events {
            let parts: Vec<String> = e
                .deliveries
                .iter()
                .map(|d| d.partition.to_string())
                .collect();
            inv.arg(&e.id)
                .arg(crate::store::log::event_ms(&e.id).unwrap_or(0))
                .arg(&e.event_type)
                .arg(e.body.as_bytes())
                .arg(parts.join(" "))
                .arg(e.deliveries.len());
            for d in &e.deliveries {
                inv.arg(slot[&d.partition]).arg(pack(&Packing {
                    workspace: ws,
                    endpoint: &d.endpoint_id,
                    rule: d.rule_id,
                    event_id: &e.id,
                    event_type: &e.event_type,
                    key: &d.key,
                    body: &d.body,
                }));
            }
        }
        for ((counts, ep), n) in &created {
            inv.arg(*counts).arg(format!("{ws}|{ep}|c")).arg(*n);
        }
        let reply: Vec<String> = inv.invoke_async(&mut self.conn()).await?;
        Ok(match reply.first().map(String::as_str) {
            Some("?") => Ingested::Stale,
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
                    inv.arg(pack(&Packing {
                        workspace: ws,
                        endpoint: &d.endpoint_id,
                        rule: d.rule_id,
                        event_id: &ids_ref[*e],
                        event_type: &events[*e].event_type,
                        key: &d.key,
                        body: &d.body,
                    }));
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
                .arg(ev.body.as_bytes());
        }
        let done: String = inv.invoke_async(&mut self.conn()).await?;
        if let Some(prev) = done.strip_prefix('=') {
            return Ok(Ingested::Answered(Answered::decode(prev).events));
        }
        Ok(Ingested::Written(answer.events))
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
            // A delivery whose endpoint is gone (no attempt) moves no count: its endpoint's
            // counts went with it (or with its deleted workspace).
            for o in b.outcomes.iter().filter(|o| o.attempt.is_some()) {
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
