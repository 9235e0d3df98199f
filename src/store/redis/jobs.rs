//! The jobs role on Redis: the keys of a partition, group-committed outcomes, requeues,
//! dead letters and retention (the writes of ingest are in `super::ingest`).
//!
//! Per delivery (one event with one delivery, no retries) the outcome costs at most one
//! command inside a script, the `HINCRBY` of its status count (one per endpoint and batch); per
//! group commit and partition, one `HSET` writes every state, a `GET` fences it and, when it
//! moved, a `SET` writes the checkpoint. The scripts cost one call per batch, not per delivery.

use std::collections::BTreeMap;

use redis::streams::StreamRangeReply;

use super::RedisStore;
use super::reader::field;
use super::scripts::{COMMIT_SCRIPT, REQUEUE_SCRIPT, TRIM_SCRIPT};
use crate::delivery::{DeliveryId, EntryId, Progress, Status};
use crate::store::jobs::CommitBatch;
use crate::store::record::{Checkpoint, decode_progress};
use crate::store::{Counts, Result, StoreError};

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

    pub(super) fn idem_key(&self, ws: &str, key: &str) -> String {
        self.ws_key(ws, &format!("idem:{key}"))
    }

    /// The cutoff of the time retention, as a stream id bound.
    pub(super) fn cutoff(&self) -> String {
        self.retention_cutoff_ms().max(0).to_string()
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
                let append = !o.is_first_attempt();
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
