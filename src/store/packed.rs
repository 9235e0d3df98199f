//! A job as both backends store it in a partition's log: one value holding every part of it.
//!
//! Why one value: Redis parses, stores, copies into the AOF and into each `XREAD` reply every
//! field name and value as a string of its own, and the node's client parses each again. A job
//! of seven fields was fifteen bulk strings per entry; one field (`j`) is two. Measured on the
//! development VM by `benches/scripts/redis_write_cost.py`, a pipelined `XADD` of a 220-byte
//! body costs Redis ~11 µs of CPU with seven fields and ~7 µs with one (`docs/benchmarks.md`).
//! The embedded store keeps the same value under the job's key: against the JSON record it
//! held before, the body is copied in as it is rather than escaped into a JSON string and
//! unescaped again by every reader.
//!
//! The value is `{d}\t{m}\t{w}\t{e}\t{r}\t{v}\t{t}\t{len(k)}\t{k}{b}`: the delivery a copy
//! names (`d`, empty in a delivery's first job), `1` for a manual retry, the workspace,
//! endpoint, rule, event id and type (ids and catalogue names: no tab in any), then the
//! ordering key and the body, which may hold anything, so the key's length says where the body
//! starts. The copy and manual marks come first so a requeue on Redis rewrites only them.
//! Entries of the older Redis layout (one field per part) are still read: see
//! `store::redis::reader`; the embedded store still reads its older JSON records.

use std::io::Write;

use crate::delivery::{DeliveryId, EntryId, Job, Progress};
use crate::store::jobs::RawJob;

/// The field that holds the packed job.
pub(super) const FIELD: &[u8] = b"j";

/// The parts of a job as ingest writes them.
pub(super) struct Packing<'a> {
    pub workspace: &'a str,
    pub endpoint: &'a str,
    pub rule: u64,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub key: &'a str,
    pub body: &'a str,
}

/// A delivery's first job, packed.
pub(super) fn pack(p: &Packing<'_>) -> Vec<u8> {
    pack_with("", false, p)
}

/// A copy of `job` (a manual retry or a replay) naming its delivery's first entry, packed.
pub(super) fn pack_copy(job: &Job, first: EntryId, manual: bool) -> Vec<u8> {
    pack_with(
        &first.to_string(),
        manual,
        &Packing {
            workspace: &job.workspace,
            endpoint: &job.endpoint_id,
            rule: job.rule_id,
            event_id: &job.event_id,
            event_type: &job.event_type,
            key: &job.key,
            body: &job.body,
        },
    )
}

fn pack_with(copy_of: &str, manual: bool, p: &Packing<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        48 + copy_of.len()
            + p.workspace.len()
            + p.endpoint.len()
            + p.event_id.len()
            + p.event_type.len()
            + p.key.len()
            + p.body.len(),
    );
    // Written straight into the value: no string per number.
    write!(
        out,
        "{copy_of}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t",
        if manual { "1" } else { "" },
        p.workspace,
        p.endpoint,
        p.rule,
        p.event_id,
        p.event_type,
        p.key.len()
    )
    .expect("writing to a Vec cannot fail");
    out.extend_from_slice(p.key.as_bytes());
    out.extend_from_slice(p.body.as_bytes());
    out
}

/// The job packed in `value` of entry `entry`, `None` when it is not a packed job. Its parts
/// are copied out of `value`, which is only read.
pub(super) fn unpack(partition: u32, entry: EntryId, value: &[u8]) -> Option<RawJob> {
    let mut parts: [&[u8]; 8] = [&[]; 8];
    let mut rest = value;
    for part in &mut parts {
        let tab = rest.iter().position(|&c| c == b'\t')?;
        *part = &rest[..tab];
        rest = &rest[tab + 1..];
    }
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
    let [d, m, w, e, r, v, t, key_len] = parts;
    let key_len = usize::try_from(number(key_len)?).ok()?;
    if key_len > rest.len() {
        return None;
    }
    let (key, body) = rest.split_at(key_len);
    let first = if d.is_empty() {
        None
    } else {
        Some(std::str::from_utf8(d).ok()?.parse::<EntryId>().ok()?)
    };
    let job = Job {
        id: DeliveryId {
            partition,
            entry: first.unwrap_or(entry),
        },
        entry,
        workspace: text(w)?,
        endpoint_id: text(e)?,
        rule_id: number(r)?,
        event_id: text(v)?,
        event_type: text(t)?,
        key: text(key)?,
        body: std::str::from_utf8(body).ok()?.into(),
        manual: m == b"1",
        progress: Progress::NEW,
    };
    Some(RawJob {
        job,
        requeued: first.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_job_reads_back_whatever_its_key_and_body_hold() {
        let packed = pack(&Packing {
            workspace: "ws_1",
            endpoint: "ep_1",
            rule: 7,
            event_id: "evt_1",
            event_type: "member:created",
            key: "a\tkey\n",
            body: "{\"x\":\"\t1\"}",
        });
        let entry: EntryId = "5-1".parse().unwrap();
        let raw = unpack(3, entry, &packed).expect("a job");
        let j = &raw.job;
        assert_eq!(
            (
                j.workspace.as_str(),
                j.endpoint_id.as_str(),
                j.rule_id,
                j.event_id.as_str(),
                j.event_type.as_str(),
                j.key.as_str(),
                &*j.body,
            ),
            (
                "ws_1",
                "ep_1",
                7,
                "evt_1",
                "member:created",
                "a\tkey\n",
                "{\"x\":\"\t1\"}"
            )
        );
        assert_eq!(
            j.id,
            DeliveryId {
                partition: 3,
                entry
            }
        );
        assert!(!raw.requeued && !j.manual);
    }

    #[test]
    fn a_packed_copy_reads_back_as_a_copy_of_its_delivery() {
        let first = pack(&Packing {
            workspace: "ws_1",
            endpoint: "ep_1",
            rule: 7,
            event_id: "evt_1",
            event_type: "member:created",
            key: "k",
            body: "{}",
        });
        let original = unpack(2, "5-1".parse().unwrap(), &first)
            .expect("a job")
            .job;
        for manual in [false, true] {
            let copy = pack_copy(&original, original.entry, manual);
            let raw = unpack(2, "9-0".parse().unwrap(), &copy).expect("a copy");
            assert!(raw.requeued);
            assert_eq!(raw.job.manual, manual);
            assert_eq!(
                raw.job.id, original.id,
                "the copy attempts its first delivery"
            );
            assert_eq!(raw.job.entry.to_string(), "9-0");
            assert_eq!(
                (&raw.job.workspace, &raw.job.key, &*raw.job.body),
                (&original.workspace, &original.key, &*original.body)
            );
        }
    }

    #[test]
    fn a_copy_names_its_delivery_and_a_damaged_value_is_no_job() {
        let copy = b"4-0\t1\tws\tep\t2\tevt\tmember:created\t0\t{}".to_vec();
        let raw = unpack(1, "9-0".parse().unwrap(), &copy).expect("a copy");
        assert!(raw.requeued && raw.job.manual);
        assert_eq!(raw.job.id.entry.to_string(), "4-0");
        assert_eq!(raw.job.entry.to_string(), "9-0");
        for bad in [
            &b"\t\tws\tep\tx\tevt\tt\t0\t{}"[..],
            b"\t\tws\tep\t2\tevt\tt\t9\t{}",
            b"\t\tws\tep\t2",
        ] {
            assert!(unpack(1, "9-0".parse().unwrap(), bad).is_none());
        }
    }
}
