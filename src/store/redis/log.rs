//! The delivery log's reads on Redis: jobs by id (`XRANGE` of one entry), states (`HMGET`),
//! a partition's jobs and a workspace's events newest first (`XREVRANGE`), and the counts.
//! Reads that span slots are one command per key, issued concurrently.

use std::collections::{BTreeMap, HashMap};

use redis::streams::StreamRangeReply;

use super::RedisStore;
use super::reader::{field, job_of};
use crate::delivery::{DeliveryId, EntryId, Job};
use crate::store::Result;
use crate::store::log::LoggedEvent;
use crate::store::record::EventRecord;

/// Entries of the event log looked at, past an event id's time, to find it.
const FIND_SCAN: usize = 200;
const FIND_ROUNDS: usize = 10;

/// Events one entry of the event log holds at most (see [`position`]).
pub(crate) const EVENTS_PER_ENTRY: usize = 1 << POSITION_BITS;
const POSITION_BITS: u32 = 16;

/// The position of the `index`th event of entry `entry` in the event log, as an [`EntryId`]
/// the delivery log's cursors can carry: the entry's time, and its sequence number shifted
/// left with the index in the low bits. Positions order as the events do.
fn position(entry: EntryId, index: usize) -> EntryId {
    EntryId {
        ms: entry.ms,
        seq: (entry.seq << POSITION_BITS) | index as u64,
    }
}

/// The entry a position is in, and the event's index in it.
fn entry_of(position: EntryId) -> (EntryId, usize) {
    (
        EntryId {
            ms: position.ms,
            seq: position.seq >> POSITION_BITS,
        },
        (position.seq & (EVENTS_PER_ENTRY as u64 - 1)) as usize,
    )
}

/// The events of one entry of a workspace's event log, in order. An entry holds the events of
/// one ingest call, one line each: id, type, partitions and entries of its deliveries, and
/// its body when no delivery carries it, tab-separated (none of them holds a tab or a
/// newline: types are names, bodies compact JSON).
fn events_of(id: &str, map: &HashMap<String, redis::Value>) -> Vec<LoggedEvent> {
    let Ok(entry) = id.parse::<EntryId>() else {
        return Vec::new();
    };
    let lines = field(map, "e").unwrap_or_default();
    lines
        .split('\n')
        .enumerate()
        .filter_map(|(i, line)| {
            let mut f = line.splitn(5, '\t');
            let record = EventRecord {
                v: f.next().filter(|v| !v.is_empty())?.to_string(),
                t: f.next().unwrap_or_default().to_string(),
                p: f.next().unwrap_or_default().to_string(),
                d: f.next().unwrap_or_default().to_string(),
                b: f.next().map(str::to_string),
            };
            Some(LoggedEvent {
                entry: position(entry, i),
                record,
            })
        })
        .collect()
}

impl RedisStore {
    pub async fn jobs(&self, ids: &[DeliveryId]) -> Result<Vec<Option<Job>>> {
        let cmds = ids
            .iter()
            .map(|id| {
                let mut cmd = redis::cmd("XRANGE");
                let e = id.entry.to_string();
                cmd.arg(self.stream_key(id.partition)).arg(&e).arg(&e);
                cmd
            })
            .collect();
        let replies: Vec<StreamRangeReply> = self.conn().each(cmds).await?;
        Ok(ids
            .iter()
            .zip(replies)
            .map(|(id, r)| {
                r.ids
                    .first()
                    .and_then(|e| job_of(id.partition, &e.id, &e.map))
                    .filter(|raw| !raw.requeued)
                    .map(|raw| raw.job)
            })
            .collect())
    }

    pub async fn states(&self, ids: &[DeliveryId]) -> Result<Vec<Option<String>>> {
        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            by_partition.entry(id.partition).or_default().push(i);
        }
        let cmds = by_partition
            .iter()
            .map(|(p, at)| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.states_key(*p));
                for i in at {
                    cmd.arg(ids[*i].entry.to_string());
                }
                cmd
            })
            .collect();
        let replies: Vec<Vec<Option<String>>> = self.conn().each(cmds).await?;
        let mut out = vec![None; ids.len()];
        for (at, states) in by_partition.values().zip(replies) {
            for (i, s) in at.iter().zip(states) {
                out[*i] = s;
            }
        }
        Ok(out)
    }

    /// A partition's jobs before `before` (exclusive), newest first.
    pub async fn jobs_before(
        &self,
        partition: u32,
        before: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<Job>> {
        let end = before.map_or("+".to_string(), |b| format!("({b}"));
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.stream_key(partition))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        Ok(reply
            .ids
            .iter()
            .filter_map(|e| job_of(partition, &e.id, &e.map))
            .map(|raw| raw.job)
            .collect())
    }

    /// The workspace's events before position `before` (exclusive; `None`: the newest),
    /// newest first, not older than `since_ms`: up to `count`, reading entries in growing
    /// chunks (an entry holds a whole request's events).
    pub async fn events_before(
        &self,
        ws: &str,
        before: Option<EntryId>,
        since_ms: Option<i64>,
        count: usize,
    ) -> Result<Vec<LoggedEvent>> {
        let start = since_ms.map_or("-".to_string(), |s| s.max(0).to_string());
        // The entry of `before` is read too (inclusive) for its events before it.
        let mut end = before.map_or("+".to_string(), |b| entry_of(b).0.to_string());
        let mut chunk = 4usize;
        let mut out = Vec::new();
        loop {
            let reply: StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(self.events_key(ws))
                .arg(&end)
                .arg(&start)
                .arg("COUNT")
                .arg(chunk)
                .query_async(&mut self.conn())
                .await?;
            for e in &reply.ids {
                let mut events = events_of(&e.id, &e.map);
                events.retain(|ev| before.is_none_or(|b| ev.entry < b));
                out.extend(events.into_iter().rev());
                if out.len() >= count {
                    out.truncate(count);
                    return Ok(out);
                }
            }
            match reply.ids.last() {
                Some(last) if reply.ids.len() == chunk => end = format!("({}", last.id),
                _ => return Ok(out),
            }
            chunk = (chunk * 2).min(count.max(4));
        }
    }

    /// The event `event_id`: its entry is at the id's time or just after (ingest never stamps
    /// an entry earlier than its events' ids, and later only behind an entry stamped later
    /// still).
    pub async fn find_event(
        &self,
        ws: &str,
        event_id: &str,
        ms: u64,
    ) -> Result<Option<LoggedEvent>> {
        let mut start = format!("{ms}-0");
        for _ in 0..FIND_ROUNDS {
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(self.events_key(ws))
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(FIND_SCAN)
                .query_async(&mut self.conn())
                .await?;
            for e in &reply.ids {
                if let Some(found) = events_of(&e.id, &e.map)
                    .into_iter()
                    .find(|ev| ev.record.v == event_id)
                {
                    return Ok(Some(found));
                }
            }
            match reply.ids.last() {
                Some(last) if reply.ids.len() == FIND_SCAN => start = format!("({}", last.id),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// An endpoint's stored counters (`c`, `r`, `s`, `f`).
    pub async fn counts(&self, ws: &str, ep: &str) -> Result<HashMap<String, i64>> {
        let p = self.partition_of(ep);
        let fields = ["c", "r", "s", "f"];
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.counts_key(p));
        for f in fields {
            cmd.arg(format!("{ws}|{ep}|{f}"));
        }
        let values: Vec<Option<i64>> = cmd.query_async(&mut self.conn()).await?;
        Ok(fields
            .iter()
            .zip(values)
            .filter_map(|(f, v)| v.map(|v| (f.to_string(), v)))
            .collect())
    }
}
