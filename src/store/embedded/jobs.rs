//! The jobs role on the embedded store: ingest, a partition's reader, outcome batches and
//! requeues, each a single write of the group commit (retention is `super::retention`). A job
//! is stored packed (`store::packed`); jobs stored before as JSON records are still read.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{EmbeddedStore, Ks, Tx, backend, entry_key, event_key, fjall_error, key_entry, now_ms};
use crate::delivery::{DeliveryId, EntryId, Job, Progress, Status};
use crate::store::jobs::{CommitBatch, Idempotency, Ingested, NewEvent, Outcome, RawJob};
use crate::store::packed::{Packing, pack, pack_copy, unpack};
use crate::store::record::{
    Answered, Checkpoint, EventRecord, JobRecord, decode_progress, encode_state, split_ids,
    state_attempts,
};
use crate::store::{Counts, Result};

/// A dead letter.
#[derive(serde::Serialize, serde::Deserialize)]
struct DeadRecord {
    d: String,
    e: String,
    w: String,
}

/// The job stored as `value` under partition `partition`'s `entry`: packed, or a JSON record
/// of the earlier layout (a packed value never starts with `{`).
pub(super) fn decode_job(partition: u32, entry: EntryId, value: &[u8]) -> Result<RawJob> {
    if value.first() == Some(&b'{') {
        return json_job(partition, entry, value);
    }
    unpack(partition, entry, value).ok_or_else(|| backend("a job value of another shape"))
}

fn json_job(partition: u32, entry: EntryId, value: &[u8]) -> Result<RawJob> {
    let r: JobRecord = serde_json::from_slice(value)?;
    let first = r.d.as_deref().and_then(|d| d.parse::<EntryId>().ok());
    Ok(RawJob {
        requeued: first.is_some(),
        job: Job {
            id: DeliveryId {
                partition,
                entry: first.unwrap_or(entry),
            },
            entry,
            workspace: r.w,
            endpoint_id: r.e,
            rule_id: r.r,
            event_id: r.v,
            event_type: r.t,
            key: r.k,
            body: r.b.into(),
            manual: r.m,
            progress: Progress::NEW,
        },
    })
}

pub(crate) fn read_job(store: &EmbeddedStore, id: DeliveryId) -> Result<Option<RawJob>> {
    match store
        .ks(Ks::Q)
        .get(entry_key(id.partition, id.entry))
        .map_err(fjall_error)?
    {
        Some(v) => Ok(Some(decode_job(id.partition, id.entry, &v)?)),
        None => Ok(None),
    }
}

/// Writes one outcome: the delivery's state with its attempt, the counts, the dead letter.
fn record(tx: &mut Tx, o: &Outcome) -> Result<()> {
    let key = entry_key(o.id.partition, o.id.entry);
    let mut attempts = match o.is_first_attempt() {
        true => String::new(),
        false => tx
            .get(Ks::S, &key)?
            .map(|v| state_attempts(&String::from_utf8_lossy(&v)).to_string())
            .unwrap_or_default(),
    };
    if let Some(a) = &o.attempt {
        if !attempts.is_empty() {
            attempts.push('\n');
        }
        attempts.push_str(&serde_json::to_string(a)?);
    }
    let state = encode_state(&o.progress, &attempts)?;
    tx.put(Ks::S, &key, state.into_bytes());
    tx.count(
        &o.workspace,
        &o.endpoint_id,
        // A delivery whose endpoint is gone (no attempt) moves no count: its endpoint's
        // counts went with it (or with its deleted workspace).
        &if o.attempt.is_some() {
            Counts::moves(o.from, o.progress.status)
        } else {
            Vec::new()
        },
    )?;
    if o.progress.status == Status::Failed && o.from != Status::Failed {
        let entry = tx.next_dead(o.id.partition);
        let dead = DeadRecord {
            d: o.id.entry.to_string(),
            e: o.endpoint_id.clone(),
            w: o.workspace.clone(),
        };
        tx.put(
            Ks::Dead,
            &entry_key(o.id.partition, entry),
            serde_json::to_vec(&dead)?,
        );
    }
    Ok(())
}

/// An idempotency record as stored, with its expiry.
#[derive(serde::Serialize, serde::Deserialize)]
struct Remembered {
    expires_ms: i64,
    answer: String,
}

/// A partition's reader.
pub struct JobReader {
    store: EmbeddedStore,
    partition: u32,
}

impl EmbeddedStore {
    pub async fn ingest(
        &self,
        ws: &str,
        events: &[NewEvent],
        idem: Option<&Idempotency>,
    ) -> Result<Ingested> {
        let (ws, events, idem) = (ws.to_string(), events.to_vec(), idem.cloned());
        self.write(move |tx| {
            let now = chrono::Utc::now().timestamp_millis();
            let idem_key = idem.as_ref().map(|i| format!("idem/{ws}/{}", i.key));
            if let (Some(i), Some(k)) = (&idem, &idem_key)
                && let Some(r) = tx.get_json::<Remembered>(k)?
                && r.expires_ms > now
            {
                let prev = Answered::decode(&r.answer);
                if prev.fingerprint != i.fingerprint {
                    return Ok(Ingested::Reused);
                }
                return Ok(Ingested::Answered(prev.events));
            }
            let mut answer = Vec::with_capacity(events.len());
            let mut created: HashMap<(u32, String), i64> = HashMap::new();
            for ev in &events {
                let mut ids = Vec::with_capacity(ev.deliveries.len());
                for d in &ev.deliveries {
                    let entry = tx.next_job(d.partition);
                    let value = pack(&Packing {
                        workspace: &ws,
                        endpoint: &d.endpoint_id,
                        rule: d.rule_id,
                        event_id: &ev.id,
                        event_type: &ev.event_type,
                        key: &d.key,
                        body: &d.body,
                    });
                    let id = DeliveryId {
                        partition: d.partition,
                        entry,
                    };
                    let job = Job {
                        id,
                        entry,
                        workspace: ws.clone(),
                        endpoint_id: d.endpoint_id.clone(),
                        rule_id: d.rule_id,
                        event_id: ev.id.clone(),
                        event_type: ev.event_type.clone(),
                        key: d.key.clone(),
                        body: d.body.clone(),
                        manual: false,
                        progress: Progress::NEW,
                    };
                    let raw = RawJob {
                        job,
                        requeued: false,
                    };
                    tx.put_job(d.partition, value, raw);
                    *created
                        .entry((d.partition, d.endpoint_id.clone()))
                        .or_default() += 1;
                    ids.push(id);
                }
                let ms = crate::store::log::event_ms(&ev.id).unwrap_or_else(now_ms);
                let entry = tx.next_event(&ws, ms);
                let (p, d) = split_ids(&ids);
                let record = EventRecord {
                    v: ev.id.clone(),
                    t: ev.event_type.clone(),
                    d,
                    p,
                    b: (!ev.body.is_empty()).then(|| ev.body.to_string()),
                };
                tx.put(Ks::Ev, &event_key(&ws, entry), serde_json::to_vec(&record)?);
                answer.push((ev.id.clone(), ids.iter().map(|i| i.to_string()).collect()));
            }
            for ((_, ep), n) in created {
                tx.count(&ws, &ep, &[("c", n)])?;
            }
            if let (Some(i), Some(k)) = (&idem, &idem_key) {
                let record = Answered {
                    fingerprint: i.fingerprint.clone(),
                    events: answer.clone(),
                };
                tx.put_json(
                    k,
                    &Remembered {
                        expires_ms: now + i.ttl_secs as i64 * 1000,
                        answer: record.encode(),
                    },
                )?;
            }
            Ok(Ingested::Written(answer))
        })
        .await
    }

    /// A reader of `partition` that starts after `after` (it counts the jobs after it, once,
    /// for the lag gauge).
    pub fn job_reader(&self, partition: u32, after: EntryId) -> JobReader {
        let start = entry_key(partition, after.next());
        let end = entry_key(
            partition,
            EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            },
        );
        let behind = self.ks(Ks::Q).range(start..=end).count() as i64;
        self.unread(partition).store(behind, Ordering::Relaxed);
        JobReader {
            store: self.clone(),
            partition,
        }
    }

    pub fn checkpoint(&self, partition: u32) -> Result<Checkpoint> {
        Ok(self
            .get_json::<String>(&format!("ck/{partition}"))?
            .map(|c| Checkpoint::decode(&c))
            .unwrap_or_default())
    }

    pub fn progress(&self, ids: &[DeliveryId]) -> Result<Vec<Option<Progress>>> {
        ids.iter()
            .map(|id| {
                let v = self
                    .ks(Ks::S)
                    .get(entry_key(id.partition, id.entry))
                    .map_err(fjall_error)?;
                v.map(|v| decode_progress(&String::from_utf8_lossy(&v)))
                    .transpose()
            })
            .collect()
    }

    /// Several partitions' batches in one write of the group commit.
    pub async fn commit_many(&self, batches: Vec<CommitBatch>) -> Vec<Result<()>> {
        let n = batches.len();
        let written = self
            .write(move |tx| {
                for b in &batches {
                    for o in &b.outcomes {
                        record(tx, o)?;
                    }
                    if let Some(ck) = &b.checkpoint {
                        tx.put_json(&format!("ck/{}", b.partition), &ck.encode())?;
                    }
                }
                Ok(())
            })
            .await;
        match written {
            Ok(()) => (0..n).map(|_| Ok(())).collect(),
            Err(e) => (0..n)
                .map(|_| Err(crate::store::StoreError::Unavailable(e.to_string())))
                .collect(),
        }
    }

    pub async fn requeue(
        &self,
        ws: &str,
        id: DeliveryId,
        from: &[Status],
        manual: bool,
    ) -> Result<bool> {
        let (ws, from) = (ws.to_string(), from.to_vec());
        self.write(move |tx| {
            let key = entry_key(id.partition, id.entry);
            let Some(value) = tx.get(Ks::Q, &key)? else {
                return Ok(false);
            };
            let RawJob { mut job, requeued } = decode_job(id.partition, id.entry, &value)?;
            if job.workspace != ws || requeued {
                return Ok(false);
            }
            let Some(state) = tx.get(Ks::S, &key)? else {
                return Ok(false);
            };
            let state = String::from_utf8_lossy(&state).into_owned();
            let progress = decode_progress(&state)?;
            if !from.contains(&progress.status) {
                return Ok(false);
            }
            let fresh = Progress {
                status: Status::Pending,
                next_attempt_ms: None,
                throttled_since_ms: None,
                ..progress
            };
            tx.put(
                Ks::S,
                &key,
                encode_state(&fresh, state_attempts(&state))?.into_bytes(),
            );
            tx.count(
                &ws,
                &job.endpoint_id,
                &Counts::moves(progress.status, Status::Pending),
            )?;
            let value = pack_copy(&job, id.entry, manual);
            job.entry = tx.next_job(id.partition);
            job.manual = manual;
            let raw = RawJob {
                job,
                requeued: true,
            };
            tx.put_job(id.partition, value, raw);
            Ok(true)
        })
        .await
    }

    pub fn dead_letters(
        &self,
        ws: &str,
        endpoint: &str,
        partition: u32,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Vec<DeliveryId>> {
        let from = entry_key(
            partition,
            EntryId {
                ms: since_ms.max(0) as u64,
                seq: 0,
            },
        );
        let to = entry_key(
            partition,
            EntryId {
                ms: until_ms.map_or(u64::MAX, |u| u.max(0) as u64),
                seq: u64::MAX,
            },
        );
        let mut out = Vec::new();
        for g in self.ks(Ks::Dead).range(from..=to) {
            let v = g.value().map_err(fjall_error)?;
            let dead: DeadRecord = serde_json::from_slice(&v)?;
            if dead.w == ws
                && dead.e == endpoint
                && let Ok(entry) = dead.d.parse()
            {
                out.push(DeliveryId { partition, entry });
            }
        }
        Ok(out)
    }
}

impl JobReader {
    /// Up to `count` jobs after `after`: from the partition's tail when it reaches back that
    /// far, else from the keyspace.
    fn next_batch(&self, after: EntryId, count: usize) -> Result<Vec<RawJob>> {
        if let Some(jobs) = self.store.take_tail(self.partition, after, count) {
            return Ok(jobs);
        }
        self.scan(after, count)
    }

    fn scan(&self, after: EntryId, count: usize) -> Result<Vec<RawJob>> {
        let start = entry_key(self.partition, after.next());
        let end = entry_key(
            self.partition,
            EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            },
        );
        let mut out = Vec::new();
        for g in self.store.ks(Ks::Q).range(start..=end).take(count) {
            let (k, v) = g.into_inner().map_err(fjall_error)?;
            let (_, entry) = key_entry(&k).ok_or_else(|| backend("a job key of another shape"))?;
            out.push(decode_job(self.partition, entry, &v)?);
        }
        Ok(out)
    }

    /// Up to `count` jobs after `after`, waiting up to `block` for new ones.
    pub async fn read(
        &mut self,
        after: EntryId,
        count: usize,
        block: Duration,
    ) -> Result<Vec<RawJob>> {
        let mut jobs = self.next_batch(after, count)?;
        if jobs.is_empty() {
            // A write between the scan and this wait leaves a permit in the Notify: no lost
            // wake-up.
            let _ = tokio::time::timeout(block, self.store.wake(self.partition).notified()).await;
            jobs = self.next_batch(after, count)?;
        }
        self.store
            .unread(self.partition)
            .fetch_sub(jobs.len() as i64, Ordering::Relaxed);
        Ok(jobs)
    }

    /// Jobs after the reader's position.
    pub fn lag(&self) -> i64 {
        self.store
            .unread(self.partition)
            .load(Ordering::Relaxed)
            .max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_stored_as_json_records_by_an_earlier_version_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let entry = EntryId { ms: 7, seq: 1 };
        {
            let store = EmbeddedStore::open(dir.path(), 4).unwrap();
            let old = JobRecord {
                w: "ws".into(),
                e: "ep".into(),
                r: 3,
                v: "evt".into(),
                t: "member:created".into(),
                k: String::new(),
                b: "{\"a\":1}".into(),
                d: None,
                m: false,
            };
            store
                .ks(Ks::Q)
                .insert(entry_key(2, entry), serde_json::to_vec(&old).unwrap())
                .unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), 4).unwrap();
        let mut reader = store.job_reader(2, EntryId::ZERO);
        let jobs = reader
            .read(EntryId::ZERO, 10, Duration::from_millis(1))
            .await
            .unwrap();
        assert_eq!(
            jobs.len(),
            1,
            "the reader scans past its tail to the old job"
        );
        let job = &jobs[0].job;
        assert_eq!(
            (job.entry, job.rule_id, &*job.body),
            (entry, 3, "{\"a\":1}")
        );
        let by_id = read_job(&store, job.id).unwrap().expect("read by id");
        assert_eq!(by_id.job.endpoint_id, "ep");
    }
}
