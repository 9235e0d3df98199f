//! The delivery log's reads on the embedded store: point reads of jobs and states, and
//! reverse range scans of a partition's jobs and a workspace's events.

use std::collections::HashMap;

use super::jobs::{decode_job, read_job};
use super::{EmbeddedStore, Ks, entry_key, event_key, fjall_error, key_entry, key_event};
use crate::delivery::{DeliveryId, EntryId, Job};
use crate::store::Result;
use crate::store::log::LoggedEvent;
use crate::store::record::EventRecord;

/// Events looked at, from an event id's time on, to find it.
const FIND_SCAN: usize = 2000;

impl EmbeddedStore {
    pub fn jobs(&self, ids: &[DeliveryId]) -> Result<Vec<Option<Job>>> {
        ids.iter()
            .map(|id| {
                Ok(read_job(self, *id)?
                    .filter(|raw| !raw.requeued)
                    .map(|raw| raw.job))
            })
            .collect()
    }

    pub fn states(&self, ids: &[DeliveryId]) -> Result<Vec<Option<String>>> {
        ids.iter()
            .map(|id| {
                Ok(self
                    .ks(Ks::S)
                    .get(entry_key(id.partition, id.entry))
                    .map_err(fjall_error)?
                    .map(|v| String::from_utf8_lossy(&v).into_owned()))
            })
            .collect()
    }

    pub fn jobs_before(
        &self,
        partition: u32,
        before: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<Job>> {
        let start = entry_key(partition, EntryId::ZERO);
        let end = entry_key(
            partition,
            before.unwrap_or(EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            }),
        );
        let mut out = Vec::new();
        for g in self.ks(Ks::Q).range(start..end).rev().take(count) {
            let (k, v) = g.into_inner().map_err(fjall_error)?;
            let Some((p, entry)) = key_entry(&k) else {
                continue;
            };
            out.push(decode_job(p, entry, &v)?.job);
        }
        Ok(out)
    }

    pub fn events_before(
        &self,
        ws: &str,
        before: Option<EntryId>,
        since_ms: Option<i64>,
        count: usize,
    ) -> Result<Vec<LoggedEvent>> {
        let start = event_key(
            ws,
            EntryId {
                ms: since_ms.map_or(0, |s| s.max(0) as u64),
                seq: 0,
            },
        );
        let end = event_key(
            ws,
            before.unwrap_or(EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            }),
        );
        let mut out = Vec::new();
        for g in self.ks(Ks::Ev).range(start..end).rev().take(count) {
            let (k, v) = g.into_inner().map_err(fjall_error)?;
            let Some(entry) = key_event(&k) else { continue };
            out.push(LoggedEvent {
                entry,
                record: serde_json::from_slice::<EventRecord>(&v)?,
            });
        }
        Ok(out)
    }

    pub fn find_event(&self, ws: &str, event_id: &str, ms: u64) -> Result<Option<LoggedEvent>> {
        let start = event_key(ws, EntryId { ms, seq: 0 });
        let end = event_key(
            ws,
            EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            },
        );
        for g in self.ks(Ks::Ev).range(start..=end).take(FIND_SCAN) {
            let (k, v) = g.into_inner().map_err(fjall_error)?;
            let record: EventRecord = serde_json::from_slice(&v)?;
            if record.v == event_id {
                return Ok(key_event(&k).map(|entry| LoggedEvent { entry, record }));
            }
        }
        Ok(None)
    }

    pub fn counts(&self, ws: &str, ep: &str) -> Result<HashMap<String, i64>> {
        Ok(self.get_json(&format!("n/{ws}/{ep}"))?.unwrap_or_default())
    }
}
