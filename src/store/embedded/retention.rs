//! Retention on the embedded store: a partition's oldest finished jobs (by time and by the
//! per-partition cap), its old dead letters and, with partition 0's pass, the event log's old
//! entries, each pass one write of the group commit.

use std::sync::atomic::Ordering;

use super::jobs::decode_job;
use super::{EmbeddedStore, Ks, entry_key, event_key, fjall_error, key_entry};
use crate::delivery::EntryId;
use crate::store::Result;
use crate::store::record::decode_progress;

/// Jobs a retention pass looks at.
const TRIM_BATCH: usize = 2000;

impl EmbeddedStore {
    /// One retention pass over a partition's oldest jobs from `from` on (and its dead letters
    /// older than the retention).
    pub async fn trim_partition(&self, partition: u32, from: EntryId) -> Result<(u64, EntryId)> {
        let retention = self.settings().retention;
        let cutoff = (chrono::Utc::now().timestamp_millis() - retention.time.as_millis() as i64)
            .max(0) as u64;
        let start = entry_key(partition, from.next());
        let end = entry_key(
            partition,
            EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            },
        );
        let held = self.jobs_held(partition);
        let over = held.saturating_sub(retention.max_per_partition);
        let mut candidates: Vec<(EntryId, Option<EntryId>)> = Vec::new();
        let mut next = EntryId::ZERO;
        let mut young = false;
        let mut seen = 0;
        for g in self.ks(Ks::Q).range(start..=end) {
            let (k, v) = g.into_inner().map_err(fjall_error)?;
            let Some((_, entry)) = key_entry(&k) else {
                continue;
            };
            if entry.ms >= cutoff && (seen as u64) >= over {
                young = true;
                break;
            }
            seen += 1;
            let raw = decode_job(partition, entry, &v)?;
            candidates.push((entry, raw.requeued.then_some(raw.job.id.entry)));
            next = entry;
            if seen == TRIM_BATCH {
                break;
            }
        }
        if young || seen < TRIM_BATCH {
            next = EntryId::ZERO;
        }
        let dead_end = entry_key(partition, EntryId { ms: cutoff, seq: 0 });
        let dead: Vec<Vec<u8>> = self
            .ks(Ks::Dead)
            .range(entry_key(partition, EntryId::ZERO)..dead_end)
            .take(TRIM_BATCH)
            .filter_map(|g| g.key().ok().map(|k| k.to_vec()))
            .collect();
        let events = if partition == 0 {
            self.old_events(cutoff)?
        } else {
            Vec::new()
        };
        if candidates.is_empty() && dead.is_empty() && events.is_empty() {
            return Ok((0, next));
        }
        let removed = self
            .write(move |tx| {
                let mut removed = 0u64;
                for (entry, first) in &candidates {
                    let state_key = entry_key(partition, first.unwrap_or(*entry));
                    let state = tx.get(Ks::S, &state_key)?;
                    let final_ = match &state {
                        Some(s) => decode_progress(&String::from_utf8_lossy(s))?
                            .status
                            .is_final(),
                        None => first.is_some(),
                    };
                    if final_ {
                        tx.remove(Ks::Q, &entry_key(partition, *entry));
                        if first.is_none() {
                            tx.remove(Ks::S, &state_key);
                        }
                        removed += 1;
                    }
                }
                for k in &dead {
                    tx.remove(Ks::Dead, k);
                }
                for k in &events {
                    tx.remove(Ks::Ev, k);
                }
                Ok(removed)
            })
            .await?;
        self.held(partition)
            .fetch_sub(removed as i64, Ordering::Relaxed);
        Ok((removed, next))
    }

    /// Keys of events older than `cutoff_ms` (up to a batch), over every workspace: the event
    /// log's retention, run with partition 0's.
    fn old_events(&self, cutoff_ms: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for key in self.scan_keys("ws/")? {
            let ws = &key["ws/".len()..];
            let from = event_key(ws, EntryId::ZERO);
            let to = event_key(
                ws,
                EntryId {
                    ms: cutoff_ms,
                    seq: 0,
                },
            );
            for g in self.ks(Ks::Ev).range(from..to).take(TRIM_BATCH - out.len()) {
                out.push(g.key().map_err(fjall_error)?.to_vec());
            }
            if out.len() >= TRIM_BATCH {
                break;
            }
        }
        Ok(out)
    }

    /// Jobs of a partition still in the log (for the cap).
    fn jobs_held(&self, partition: u32) -> u64 {
        let held = self.held(partition);
        if held.load(Ordering::Relaxed) < 0 {
            let n = self.ks(Ks::Q).prefix(partition.to_be_bytes()).count() as i64;
            held.store(n, Ordering::Relaxed);
        }
        held.load(Ordering::Relaxed).max(0) as u64
    }
}
