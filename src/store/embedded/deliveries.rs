//! Ingest and the delivery log in the embedded store. Same semantics as the Redis backend:
//! deliveries are created only if their id is new, a final outcome acknowledges its job in the
//! same commit, failed deliveries go to the dead letter.

use std::collections::HashMap;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::jobs::StoredJob;
use super::{Ctx, EmbeddedStore, JOBS, KV, backend, get_json, put_json, scan_json};
use crate::delivery::{Attempt, Delivery, Job, Status};
use crate::store::{Counts, DeliveryFilter, Health, NewEvent, Page, Result};

type Kv<'t> = redb::Table<'t, &'static str, &'static [u8]>;

/// A delivery as stored: the record plus the fields the API never shows.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    d: Delivery,
    body: String,
    seq: String,
}

impl Stored {
    fn into_delivery(self) -> Delivery {
        Delivery {
            body: self.body,
            seq: self.seq,
            ..self.d
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Remembered {
    expires_ms: i64,
    answer: String,
}

fn dlv_key(ws: &str, id: &str) -> String {
    format!("dlv/{ws}/{id}")
}

fn bump(kv: &mut Kv, ws: &str, ep: &str, from: Option<Status>, to: Status) -> Result<()> {
    let key = format!("stats/{ws}/{ep}");
    let mut counts: HashMap<String, i64> = get_json(kv, &key)?.unwrap_or_default();
    if let Some(f) = from {
        *counts.entry(f.as_str().into()).or_default() -= 1;
    }
    *counts.entry(to.as_str().into()).or_default() += 1;
    put_json(kv, &key, &counts)
}

fn enqueue(
    txn: &redb::WriteTransaction,
    ctx: &mut Ctx,
    partition: u32,
    job: &StoredJob,
) -> Result<()> {
    let seq = ctx
        .next_seq
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    EmbeddedStore::insert_job(
        &mut txn.open_table(JOBS).map_err(backend)?,
        partition,
        seq,
        job,
    )?;
    ctx.touched.push(partition);
    Ok(())
}

impl EmbeddedStore {
    pub async fn ingest(&self, ws: &str, events: &[NewEvent]) -> Result<u32> {
        let (ws, events) = (ws.to_string(), events.to_vec());
        self.write(move |txn, ctx| {
            let mut created = 0;
            for ev in &events {
                let mut kv = txn.open_table(KV).map_err(backend)?;
                put_json(&mut kv, &format!("evt/{ws}/{}", ev.id), ev)?;
                for nd in &ev.new_deliveries {
                    let d = &nd.delivery;
                    let key = dlv_key(&ws, &d.id);
                    if kv.get(key.as_str()).map_err(backend)?.is_some() {
                        continue;
                    }
                    let stored = Stored {
                        d: d.clone(),
                        body: d.body.clone(),
                        seq: d.seq.clone(),
                    };
                    put_json(&mut kv, &key, &stored)?;
                    kv.insert(
                        format!("idx/{ws}/{}|{}", d.seq, d.id).as_str(),
                        [].as_slice(),
                    )
                    .map_err(backend)?;
                    kv.insert(
                        format!("epidx/{ws}/{}/{}|{}", d.endpoint_id, d.seq, d.id).as_str(),
                        [].as_slice(),
                    )
                    .map_err(backend)?;
                    bump(&mut kv, &ws, &d.endpoint_id, None, Status::Pending)?;
                    let job = StoredJob {
                        w: ws.clone(),
                        e: d.endpoint_id.clone(),
                        d: d.id.clone(),
                        m: false,
                    };
                    enqueue(txn, ctx, nd.partition, &job)?;
                    created += 1;
                }
            }
            Ok(created)
        })
        .await
    }

    /// Records `value` under an `Idempotency-Key` unless a live one is there; returns what
    /// was there.
    pub async fn claim_key(
        &self,
        ws: &str,
        key: &str,
        value: &str,
        ttl_secs: u64,
    ) -> Result<Option<String>> {
        let k = format!("idem/{ws}/{key}");
        let fresh = Remembered {
            expires_ms: chrono::Utc::now().timestamp_millis() + ttl_secs as i64 * 1000,
            answer: value.into(),
        };
        self.write(move |txn, _| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let now = chrono::Utc::now().timestamp_millis();
            if let Some(r) = get_json::<Remembered>(&kv, &k)?
                && r.expires_ms > now
            {
                return Ok(Some(r.answer));
            }
            put_json(&mut kv, &k, &fresh)?;
            Ok(None)
        })
        .await
    }

    pub async fn put_key(&self, ws: &str, key: &str, value: &str, ttl_secs: u64) -> Result<()> {
        let k = format!("idem/{ws}/{key}");
        let r = Remembered {
            expires_ms: chrono::Utc::now().timestamp_millis() + ttl_secs as i64 * 1000,
            answer: value.into(),
        };
        self.write(move |txn, _| put_json(&mut txn.open_table(KV).map_err(backend)?, &k, &r))
            .await
    }

    pub async fn delivery(&self, ws: &str, id: &str) -> Result<Option<Delivery>> {
        Ok(self
            .read(|kv| get_json::<Stored>(kv, &dlv_key(ws, id)))?
            .map(Stored::into_delivery))
    }

    pub async fn attempts(&self, ws: &str, id: &str) -> Result<Vec<Attempt>> {
        self.read(|kv| scan_json(kv, &format!("att/{ws}/{id}/")))
    }

    pub async fn record_attempt(
        &self,
        job: &Job,
        attempt: &Attempt,
        from: Status,
        to: Status,
    ) -> Result<()> {
        let (job, attempt) = (job.clone(), attempt.clone());
        let seq = if to.is_final() {
            Some(Self::entry_seq(&job)?)
        } else {
            None
        };
        self.write(move |txn, ctx| {
            let ws = &job.workspace;
            let mut kv = txn.open_table(KV).map_err(backend)?;
            put_json(
                &mut kv,
                &format!("att/{ws}/{}/{:06}", job.delivery_id, attempt.attempt),
                &attempt,
            )?;
            let key = dlv_key(ws, &job.delivery_id);
            if let Some(mut stored) = get_json::<Stored>(&kv, &key)? {
                stored.d.status = to;
                stored.d.attempt_count = attempt.attempt;
                stored.d.next_attempt_at = attempt.next_attempt_at.clone();
                put_json(&mut kv, &key, &stored)?;
            }
            if from != to {
                bump(&mut kv, ws, &job.endpoint_id, Some(from), to)?;
            }
            if to == Status::Failed {
                let n = ctx
                    .next_seq
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    % 10_000_000;
                let now = chrono::Utc::now().timestamp_millis();
                let dead =
                    serde_json::json!({"delivery": job.delivery_id, "endpoint": job.endpoint_id});
                put_json(&mut kv, &format!("dead/{ws}/{now:013}{n:07}"), &dead)?;
            }
            if let Some(seq) = seq {
                txn.open_table(JOBS)
                    .map_err(backend)?
                    .remove((job.partition, seq))
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn fail_without_attempt(&self, job: &Job, from: Status) -> Result<()> {
        let job = job.clone();
        let seq = Self::entry_seq(&job)?;
        self.write(move |txn, _| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let key = dlv_key(&job.workspace, &job.delivery_id);
            if let Some(mut stored) = get_json::<Stored>(&kv, &key)? {
                stored.d.status = Status::Failed;
                put_json(&mut kv, &key, &stored)?;
                if from != Status::Failed {
                    bump(
                        &mut kv,
                        &job.workspace,
                        &job.endpoint_id,
                        Some(from),
                        Status::Failed,
                    )?;
                }
            }
            txn.open_table(JOBS)
                .map_err(backend)?
                .remove((job.partition, seq))
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    pub async fn requeue(
        &self,
        ws: &str,
        d: &Delivery,
        from: &[Status],
        manual: bool,
    ) -> Result<bool> {
        let (ws, id, from) = (ws.to_string(), d.id.clone(), from.to_vec());
        let partition = crate::delivery::partition_of(&d.endpoint_id, self.partitions());
        self.write(move |txn, ctx| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let key = dlv_key(&ws, &id);
            let Some(mut stored) = get_json::<Stored>(&kv, &key)? else {
                return Ok(false);
            };
            let old = stored.d.status;
            if !from.contains(&old) {
                return Ok(false);
            }
            stored.d.status = Status::Pending;
            stored.d.next_attempt_at = None;
            put_json(&mut kv, &key, &stored)?;
            bump(
                &mut kv,
                &ws,
                &stored.d.endpoint_id,
                Some(old),
                Status::Pending,
            )?;
            drop(kv);
            enqueue(
                txn,
                ctx,
                partition,
                &StoredJob {
                    w: ws.clone(),
                    e: stored.d.endpoint_id.clone(),
                    d: id.clone(),
                    m: manual,
                },
            )?;
            Ok(true)
        })
        .await
    }

    pub async fn dead_letters(
        &self,
        ws: &str,
        endpoint: &str,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Vec<String>> {
        let from = format!("dead/{ws}/{since_ms:013}");
        let to = match until_ms {
            Some(u) => format!("dead/{ws}/{:013}", u + 1),
            None => format!("dead/{ws}/\u{10FFFF}"),
        };
        self.read(|kv| {
            let mut ids: Vec<String> = Vec::new();
            for item in kv.range(from.as_str()..to.as_str()).map_err(backend)? {
                let (_, v) = item.map_err(backend)?;
                let entry: serde_json::Value = serde_json::from_slice(v.value())?;
                if entry["endpoint"] == endpoint
                    && let Some(id) = entry["delivery"].as_str()
                    && !ids.iter().any(|i| i == id)
                {
                    ids.push(id.to_string());
                }
            }
            Ok(ids)
        })
    }

    pub async fn list_deliveries(
        &self,
        ws: &str,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>> {
        let after = cursor
            .map(|c| crate::store::cursor::decode("deliveries", c, |m| m.contains('|')))
            .transpose()?;
        let prefix = match &filter.endpoint_id {
            Some(ep) => format!("epidx/{ws}/{ep}/"),
            None => format!("idx/{ws}/"),
        };
        let low = match filter.since_ms {
            Some(s) => format!("{prefix}{s:013}"),
            None => prefix.clone(),
        };
        let high = match (&after, filter.until_ms) {
            (Some(a), _) => format!("{prefix}{a}"),
            (None, Some(u)) => format!("{prefix}{:013}", u + 1),
            (None, None) => format!("{prefix}\u{10FFFF}"),
        };
        self.read(|kv| {
            let mut out = Vec::new();
            let mut entries = kv
                .range(low.as_str()..high.as_str())
                .map_err(backend)?
                .rev()
                .peekable();
            while let Some(item) = entries.next() {
                let (k, _) = item.map_err(backend)?;
                let member = &k.value()[prefix.len()..];
                let id = member.split_once('|').map_or(member, |(_, id)| id);
                let Some(d) = get_json::<Stored>(kv, &dlv_key(ws, id))?.map(Stored::into_delivery)
                else {
                    continue;
                };
                let keep = filter.status.is_none_or(|s| s == d.status)
                    && filter.event_id.as_ref().is_none_or(|e| *e == d.event_id);
                if keep {
                    out.push(d);
                    if out.len() == limit {
                        // A cursor only when the index goes on past this page.
                        let next_cursor = entries
                            .peek()
                            .is_some()
                            .then(|| crate::store::cursor::encode("deliveries", member));
                        return Ok(Page {
                            data: out,
                            next_cursor,
                        });
                    }
                }
            }
            Ok(Page {
                data: out,
                next_cursor: None,
            })
        })
    }

    pub async fn save_health(&self, ws: &str, ep: &str, health: &Health) -> Result<()> {
        let (key, health) = (format!("health/{ws}/{ep}"), health.clone());
        self.write(move |txn, _| put_json(&mut txn.open_table(KV).map_err(backend)?, &key, &health))
            .await
    }

    pub async fn health(&self, ws: &str, ep: &str) -> Result<Health> {
        Ok(self
            .read(|kv| get_json(kv, &format!("health/{ws}/{ep}")))?
            .unwrap_or_default())
    }

    pub async fn counts(&self, ws: &str, ep: &str) -> Result<Counts> {
        let c: HashMap<String, i64> = self
            .read(|kv| get_json(kv, &format!("stats/{ws}/{ep}")))?
            .unwrap_or_default();
        Ok(Counts::from_map(&c))
    }
}

/// Deliveries removed per trim, so one sweep never holds the writer for long.
const TRIM_BATCH: usize = 5_000;

impl EmbeddedStore {
    /// Removes finished deliveries (with their attempts and index entries), log and dead-letter
    /// entries older than the retention. A delivery that is not final is kept, whatever its age.
    pub async fn trim(&self) -> Result<u64> {
        let cutoff = chrono::Utc::now().timestamp_millis() - self.retention.as_millis() as i64;
        let (deliveries, entries) = self.read(|kv| {
            let workspaces: Vec<crate::workspace::Workspace> = scan_json(kv, "ws/")?;
            let mut deliveries = Vec::new();
            let mut entries = Vec::new();
            for ws in workspaces.iter().map(|w| w.uuid.as_str()) {
                let idx = format!("idx/{ws}/");
                for item in kv
                    .range(idx.as_str()..format!("{idx}{cutoff:013}").as_str())
                    .map_err(backend)?
                {
                    let (k, _) = item.map_err(backend)?;
                    let member = k.value()[idx.len()..].to_string();
                    let id = member
                        .split_once('|')
                        .map_or(member.as_str(), |(_, id)| id)
                        .to_string();
                    if let Some(d) = get_json::<Stored>(kv, &dlv_key(ws, &id))?
                        && d.d.status.is_final()
                    {
                        deliveries.push((ws.to_string(), id, member, d.d.endpoint_id.clone()));
                    }
                    if deliveries.len() >= TRIM_BATCH {
                        break;
                    }
                }
                for prefix in [format!("log/{ws}/"), format!("dead/{ws}/")] {
                    // `log/` is no longer written; older databases still have entries to age out.
                    for item in kv
                        .range(prefix.as_str()..format!("{prefix}{cutoff:013}").as_str())
                        .map_err(backend)?
                        .take(TRIM_BATCH)
                    {
                        entries.push(item.map_err(backend)?.0.value().to_string());
                    }
                }
            }
            Ok((deliveries, entries))
        })?;
        if deliveries.is_empty() && entries.is_empty() {
            return Ok(0);
        }
        self.write(move |txn, _| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let mut removed = 0;
            for (ws, id, member, endpoint) in &deliveries {
                // Re-checked in the write: a replay may have made it pending since the read.
                let final_now = get_json::<Stored>(&kv, &dlv_key(ws, id))?
                    .is_some_and(|d| d.d.status.is_final());
                if !final_now {
                    continue;
                }
                let attempts = format!("att/{ws}/{id}/");
                let keys: Vec<String> = kv
                    .range(attempts.as_str()..format!("{attempts}\u{10FFFF}").as_str())
                    .map_err(backend)?
                    .map(|i| i.map(|(k, _)| k.value().to_string()).map_err(backend))
                    .collect::<Result<_>>()?;
                for k in keys.iter().map(String::as_str).chain([
                    dlv_key(ws, id).as_str(),
                    format!("idx/{ws}/{member}").as_str(),
                    format!("epidx/{ws}/{endpoint}/{member}").as_str(),
                ]) {
                    kv.remove(k).map_err(backend)?;
                }
                removed += 1;
            }
            for k in &entries {
                kv.remove(k.as_str()).map_err(backend)?;
            }
            Ok(removed)
        })
        .await
    }
}
