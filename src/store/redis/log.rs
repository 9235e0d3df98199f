//! The delivery log's reads on Redis: jobs by id (`XRANGE` of one entry), states (`HMGET`),
//! a partition's jobs and a workspace's events newest first (`XREVRANGE`), and the counts.
//! Reads that span slots are one command per key, issued concurrently.

use std::collections::{BTreeMap, HashMap};

use redis::streams::StreamRangeReply;

use super::RedisStore;
use super::jobs::{field, job_of};
use crate::delivery::{DeliveryId, EntryId, Job};
use crate::store::Result;
use crate::store::log::LoggedEvent;
use crate::store::record::EventRecord;

/// Entries of the event log looked at, past an event id's time, to find it.
const FIND_SCAN: usize = 200;
const FIND_ROUNDS: usize = 10;

fn event_of(id: &str, map: &HashMap<String, redis::Value>) -> Option<LoggedEvent> {
    Some(LoggedEvent {
        entry: id.parse().ok()?,
        record: EventRecord {
            v: field(map, "v")?,
            t: field(map, "t").unwrap_or_default(),
            d: field(map, "d").unwrap_or_default(),
            p: field(map, "p").unwrap_or_default(),
            b: field(map, "b"),
        },
    })
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

    pub async fn events_before(
        &self,
        ws: &str,
        before: Option<EntryId>,
        since_ms: Option<i64>,
        count: usize,
    ) -> Result<Vec<LoggedEvent>> {
        let end = before.map_or("+".to_string(), |b| format!("({b}"));
        let start = since_ms.map_or("-".to_string(), |s| s.max(0).to_string());
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.events_key(ws))
            .arg(end)
            .arg(start)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        Ok(reply
            .ids
            .iter()
            .filter_map(|e| event_of(&e.id, &e.map))
            .collect())
    }

    /// The event `event_id`: its entry is at the id's time or just after (ingest never stamps
    /// an event earlier than its id, and later only behind an event stamped later still).
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
                if field(&e.map, "v").as_deref() == Some(event_id) {
                    return Ok(event_of(&e.id, &e.map));
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
