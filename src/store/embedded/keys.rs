//! The embedded store's keys: a job's, a state's and a dead letter's by partition and entry, an
//! event's by workspace and entry, big-endian so that key order is log order; and the entry
//! ids the writer numbers them with.

use crate::delivery::EntryId;

/// The key of partition `p`'s entry `e` in `q`, `s` and `dead`.
pub(crate) fn entry_key(p: u32, e: EntryId) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&p.to_be_bytes());
    k[4..12].copy_from_slice(&e.ms.to_be_bytes());
    k[12..].copy_from_slice(&e.seq.to_be_bytes());
    k
}

/// The partition and entry of an `entry_key`.
pub(crate) fn key_entry(k: &[u8]) -> Option<(u32, EntryId)> {
    if k.len() != 20 {
        return None;
    }
    let p = u32::from_be_bytes(k[..4].try_into().ok()?);
    let ms = u64::from_be_bytes(k[4..12].try_into().ok()?);
    let seq = u64::from_be_bytes(k[12..].try_into().ok()?);
    Some((p, EntryId { ms, seq }))
}

/// The key of a workspace's event `e` in `ev`.
pub(crate) fn event_key(ws: &str, e: EntryId) -> Vec<u8> {
    let mut k = Vec::with_capacity(ws.len() + 17);
    k.extend_from_slice(ws.as_bytes());
    k.push(0);
    k.extend_from_slice(&e.ms.to_be_bytes());
    k.extend_from_slice(&e.seq.to_be_bytes());
    k
}

/// The entry of an `event_key`.
pub(crate) fn key_event(k: &[u8]) -> Option<EntryId> {
    let tail = k.len().checked_sub(16)?;
    Some(EntryId {
        ms: u64::from_be_bytes(k[tail..tail + 8].try_into().ok()?),
        seq: u64::from_be_bytes(k[tail + 8..].try_into().ok()?),
    })
}

/// The next entry id after `last`, at `now_ms` or later.
pub(crate) fn next_id(last: EntryId, now_ms: u64) -> EntryId {
    if now_ms > last.ms {
        EntryId { ms: now_ms, seq: 0 }
    } else {
        last.next()
    }
}

pub(crate) fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}
