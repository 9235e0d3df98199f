//! Reading a partition's job stream as its fixed consumer.
//!
//! Each partition is read as consumer `p<N>` of group `dispatch`, whichever node owns it, so
//! a node taking a partition over inherits the previous owner's pending entries. A reader first
//! replays its pending entries (id `0`, in stream order), then reads new ones (`>`).

use std::time::Duration;

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};

use super::{Conn, GROUP, RedisStore};
use crate::delivery::Job;
use crate::store::Result;

enum Phase {
    /// Replaying this consumer's pending entries after the given id.
    Pending(String),
    New,
}

/// A partition's reader, on a connection of its own (blocking reads must not share one).
pub struct JobReader {
    conn: Conn,
    stream: String,
    consumer: String,
    partition: u32,
    phase: Phase,
    /// The lease holder the jobs are read under (stamped on each job for fenced writes).
    fence: Option<String>,
}

fn field(map: &std::collections::HashMap<String, Value>, k: &str) -> Option<String> {
    match map.get(k)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl RedisStore {
    /// Opens a reader for `partition`, creating the stream and group when missing.
    pub async fn job_reader(&self, partition: u32) -> Result<JobReader> {
        let conn = self.target.blocking().await?;
        let mut reader = JobReader {
            conn,
            stream: self.stream_key(partition),
            consumer: format!("p{partition}"),
            partition,
            phase: Phase::Pending("0".into()),
            fence: None,
        };
        reader.ensure_group().await?;
        Ok(reader)
    }
}

impl RedisStore {
    /// Drops the partition's acknowledged jobs from its stream (an acknowledged entry stays in
    /// a stream until trimmed). Everything below both the oldest pending entry and the group's
    /// last-delivered id is acknowledged, and that bound only moves forward (new pending
    /// entries come from new reads, above it), so reading it and trimming need no atomicity.
    /// Returns the entries removed.
    pub async fn trim_jobs(&self, partition: u32) -> Result<u64> {
        let stream = self.stream_key(partition);
        let mut conn = self.conn();
        let summary: redis::RedisResult<redis::streams::StreamPendingReply> =
            conn.xpending(&stream, GROUP).await;
        let groups: redis::RedisResult<Vec<std::collections::HashMap<String, Value>>> =
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut conn)
                .await;
        // No stream or no group yet: nothing to trim.
        let (Ok(summary), Ok(groups)) = (summary, groups) else {
            return Ok(0);
        };
        let Some(delivered) = groups.iter().find_map(|g| field(g, "last-delivered-id")) else {
            return Ok(0);
        };
        let bound = match summary {
            redis::streams::StreamPendingReply::Data(d) => {
                std::cmp::min_by_key(d.start_id, delivered, |id| stream_id(id))
            }
            _ => delivered,
        };
        if stream_id(&bound) == (0, 0) {
            return Ok(0);
        }
        Ok(redis::cmd("XTRIM")
            .arg(&stream)
            .arg("MINID")
            .arg(&bound)
            .query_async(&mut conn)
            .await?)
    }
}

/// A stream id as (ms, seq), for comparing.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

impl JobReader {
    /// Stamps every job read from now on with this lease holder.
    pub fn fenced(mut self, holder: String) -> Self {
        self.fence = Some(holder);
        self
    }

    /// Entries not yet read by the group (`lag` of `XINFO GROUPS`).
    pub async fn lag(&mut self) -> Result<i64> {
        let groups: Vec<std::collections::HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(&mut self.conn)
            .await?;
        Ok(groups
            .iter()
            .find(|g| field(g, "name").as_deref() == Some(GROUP))
            .and_then(|g| match g.get("lag") {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            })
            .unwrap_or(0))
    }

    async fn ensure_group(&mut self) -> Result<()> {
        let created: redis::RedisResult<()> = self
            .conn
            .xgroup_create_mkstream(&self.stream, GROUP, "0")
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Up to `count` jobs: pending ones first, then new ones (waiting up to `block`).
    /// A vanished group (`NOGROUP`, after a Redis restart without persistence) is recreated.
    pub async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Job>> {
        loop {
            let (id, opts) = match &self.phase {
                Phase::Pending(after) => (
                    after.clone(),
                    StreamReadOptions::default()
                        .group(GROUP, &self.consumer)
                        .count(count),
                ),
                Phase::New => (
                    ">".to_string(),
                    StreamReadOptions::default()
                        .group(GROUP, &self.consumer)
                        .count(count)
                        .block(block.as_millis() as usize),
                ),
            };
            let reply: redis::RedisResult<Option<StreamReadReply>> = self
                .conn
                .xread_options(&[&self.stream], &[&id], &opts)
                .await;
            let reply = match reply {
                Err(e) if e.code() == Some("NOGROUP") => {
                    tracing::warn!(stream = %self.stream, "consumer group vanished (NOGROUP); recreating it");
                    self.ensure_group().await?;
                    self.phase = Phase::Pending("0".into());
                    continue;
                }
                other => other?,
            };
            let entries: Vec<_> = reply
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                .unwrap_or_default();
            if let Phase::Pending(_) = self.phase {
                match entries.last() {
                    Some(last) => self.phase = Phase::Pending(last.id.clone()),
                    None => {
                        self.phase = Phase::New;
                        continue;
                    }
                }
            }
            let jobs = entries
                .into_iter()
                .map(|e| Job {
                    partition: self.partition,
                    workspace: field(&e.map, "w").unwrap_or_default(),
                    endpoint_id: field(&e.map, "e").unwrap_or_default(),
                    delivery_id: field(&e.map, "d").unwrap_or_default(),
                    fence: self.fence.clone(),
                    manual: field(&e.map, "m").as_deref() == Some("1"),
                    entry_id: e.id,
                })
                .collect();
            return Ok(jobs);
        }
    }
}
