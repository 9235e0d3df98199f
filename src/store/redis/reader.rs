//! A partition's reads on Redis: one stream per partition ([`JobReader`], a Redis Cluster) or
//! one `XREAD` over every owned stream ([`MultiReader`], one Redis), each on a connection of
//! its own, and the lag of a partition. Replies are parsed from the raw value, with no map
//! per entry.

use std::time::Duration;

use redis::Value;

use super::{Conn, RedisStore};
use crate::delivery::{DeliveryId, EntryId, Job, Progress};
use crate::store::Result;
use crate::store::jobs::RawJob;

pub(crate) fn field(map: &std::collections::HashMap<String, Value>, k: &str) -> Option<String> {
    match map.get(k)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A job from its stream entry (packed, or of the older layout of a field per part), `None`
/// for an entry that is not a job.
pub(crate) fn job_of(
    partition: u32,
    id: &str,
    map: &std::collections::HashMap<String, Value>,
) -> Option<RawJob> {
    let entry: EntryId = id.parse().ok()?;
    if let Some(Value::BulkString(packed)) = map.get("j") {
        return crate::store::packed::unpack(partition, entry, packed);
    }
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
/// path: no map, no copies); packed, or of the older layout; `None` for an entry that is not a
/// job.
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
            crate::store::packed::FIELD => {
                let Value::BulkString(packed) = value else {
                    return None;
                };
                return crate::store::packed::unpack(partition, entry, &packed);
            }
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
        // Before the first catch-up the count is unknown: the stream's length would count
        // the finished entries retention keeps, so it is not used (0 until then).
        Ok(match self.caught_up {
            Some((at, read)) => added.saturating_sub(at + read) as i64,
            None => 0,
        })
    }
}

impl RedisStore {
    /// Opens a reader of `partition` on a connection of its own.
    pub async fn job_reader(&self, partition: u32) -> Result<JobReader> {
        Ok(JobReader {
            conn: self.target.blocking().await?,
            stream: self.stream_key(partition),
            partition,
            lag: Lag::default(),
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
