//! Deliveries and attempts: the records of the delivery log.
//!
//! A delivery is one (event, rule, endpoint) triple; its id is the `webhook-id` header, stable
//! across retries. Ingest writes each delivery once, as the job in its partition's log, and
//! its id names that entry ([`DeliveryId`]); each attempt's outcome records the delivery's
//! [`Progress`] with the attempt. A retried request is recognised by its `Idempotency-Key`
//! before anything is written, so no delivery is written twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Queued, no attempt finished yet.
    Pending,
    /// At least one attempt failed; another is scheduled.
    Retrying,
    Succeeded,
    /// Every attempt failed (or the failure was final).
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Retrying => "retrying",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Retrying,
            Status::Succeeded,
            Status::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed)
    }
}

/// Where a job sits in its partition's log: `(ms, seq)`, the Redis stream id form `ms-seq`.
/// Ordered as the log is, so it also orders deliveries by ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// The smallest id after this one.
    pub fn next(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }

    /// The largest id before this one (`ZERO` stays `ZERO`).
    pub fn prev(self) -> EntryId {
        match (self.ms, self.seq) {
            (0, 0) => EntryId::ZERO,
            (ms, 0) => EntryId {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => EntryId { ms, seq: seq - 1 },
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl std::str::FromStr for EntryId {
    type Err = ();
    fn from_str(s: &str) -> Result<EntryId, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        Ok(EntryId {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// A delivery's id, the `webhook-id` of its requests: the partition and the entry of the job
/// ingest wrote for it, `msg_{partition}_{ms}-{seq}`. So an id finds its data at once (no
/// per-delivery index, no probe of every partition), is unique cluster-wide (one log per
/// partition), and orders deliveries by ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId {
    pub partition: u32,
    pub entry: EntryId,
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "msg_{}_{}", self.partition, self.entry)
    }
}

impl std::str::FromStr for DeliveryId {
    type Err = ();
    fn from_str(s: &str) -> Result<DeliveryId, ()> {
        let rest = s.strip_prefix("msg_").ok_or(())?;
        let (p, entry) = rest.split_once('_').ok_or(())?;
        Ok(DeliveryId {
            partition: p.parse().map_err(|_| ())?,
            entry: entry.parse()?,
        })
    }
}

/// How far a delivery has come: what its job needs to resume after a crash or a handoff, and
/// what the log shows. Written with each attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(rename = "s")]
    pub status: Status,
    /// Attempts made (throttled ones included): the next attempt's number is this plus one.
    #[serde(rename = "n")]
    pub attempts: u32,
    /// Attempts that failed and count toward `maxAttempts` (throttled answers do not).
    #[serde(rename = "f", default)]
    pub failures: u32,
    /// When the next attempt may start (unix ms), while retrying.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
    /// Since when (unix ms) the receiver has been throttling this delivery (429, or 503 with
    /// `Retry-After`), until an answer that does not throttle.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub throttled_since_ms: Option<i64>,
}

impl Progress {
    /// A delivery no attempt has finished for.
    pub const NEW: Progress = Progress {
        status: Status::Pending,
        attempts: 0,
        failures: 0,
        next_attempt_ms: None,
        throttled_since_ms: None,
    };
}

/// The rule id of a test send (`POST /v1/endpoints/{id}/test`): rules are numbered from 1.
pub const TEST_RULE: u64 = 0;

/// A delivery as the log shows it (without its attempts).
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    pub rule_id: u64,
    pub status: Status,
    pub created_at: String,
    pub attempt_count: u32,
    pub next_attempt_at: Option<String>,
    /// The value of the endpoint's `orderingKey` in the event, read at ingest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// Made by `POST /v1/endpoints/{id}/test` (rule 0), not by a rule.
    pub test: bool,
    /// The last attempt's response status (`null`: no attempt yet, or no response).
    pub last_response_status: Option<u16>,
    /// The last attempt's duration.
    pub last_duration_ms: Option<u64>,
    /// The exact bytes that are signed and POSTed.
    #[serde(skip)]
    pub body: Arc<str>,
}

impl Delivery {
    /// The log's view of a job and its delivery's progress.
    pub fn of(job: &Job, progress: &Progress) -> Delivery {
        Delivery {
            id: job.id.to_string(),
            event_id: job.event_id.clone(),
            event_type: job.event_type.clone(),
            endpoint_id: job.endpoint_id.clone(),
            rule_id: job.rule_id,
            status: progress.status,
            created_at: ms_rfc3339(job.id.entry.ms as i64),
            attempt_count: progress.attempts,
            next_attempt_at: progress.next_attempt_ms.map(ms_rfc3339),
            ordering_key: Some(job.key.clone()).filter(|k| !k.is_empty()),
            test: job.rule_id == TEST_RULE,
            last_response_status: None,
            last_duration_ms: None,
            body: job.body.clone(),
        }
    }
}

/// What went wrong in an attempt that got no usable response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptError {
    /// `timeout`, `connect`, `tls`, `ssrf`, `request`, `endpoint_gone`, ...
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRequest {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// Filled from the delivery's body when read, not stored per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    /// At most the configured limit of bytes (64 KiB by default), lossily decoded.
    pub body: String,
    #[serde(default)]
    pub truncated: bool,
}

/// One HTTP POST of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: String,
    pub duration_ms: u64,
    pub request: AttemptRequest,
    pub response: Option<AttemptResponse>,
    pub error: Option<AttemptError>,
    pub next_attempt_at: Option<String>,
}

impl Attempt {
    /// A 2xx response and no error.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
            && self
                .response
                .as_ref()
                .is_some_and(|r| (200..300).contains(&r.status))
    }
}

/// A delivery to create at ingest: the job its partition's log will hold.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub partition: u32,
    pub endpoint_id: String,
    pub rule_id: u64,
    /// The value of the endpoint's ordering key in the event (empty: one sequence).
    pub key: String,
    pub body: Arc<str>,
}

/// A job read from a partition's log: everything sending its delivery needs.
#[derive(Debug, Clone)]
pub struct Job {
    /// The delivery this job attempts (for a manual retry or a replay, the delivery's first
    /// entry, not this job's).
    pub id: DeliveryId,
    /// This job's own entry in the log.
    pub entry: EntryId,
    pub workspace: String,
    pub endpoint_id: String,
    pub rule_id: u64,
    pub event_id: String,
    pub event_type: String,
    pub key: String,
    pub body: Arc<str>,
    /// A manual retry (`POST /v1/deliveries/{id}/retry`): sent at once, whatever the breaker
    /// says (it is the breaker's probe) and wherever it stands in the endpoint's queue.
    pub manual: bool,
    /// Where the delivery stood when the job was read: a new owner resumes its backoff.
    pub progress: Progress,
}

/// How the body of a delivery whose transform failed at ingest begins: this, then why. No
/// JSON body begins with `!`, so the job's one body field carries either.
pub const RENDER_FAILED: &str = "!template:";

impl Job {
    /// Why the endpoint's transform made no body for this delivery's event, if it did not:
    /// such a delivery fails at once, with an attempt of error kind `template` and no request.
    pub fn render_failure(&self) -> Option<&str> {
        self.body.strip_prefix(RENDER_FAILED)
    }
}

/// The id of a new event: `evt_` and a UUIDv7, so ids sort by time.
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// The partition of an endpoint: a stable hash (FNV-1a), the same on every node and version.
pub fn partition_of(endpoint_id: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in endpoint_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

/// RFC 3339 with milliseconds, UTC: the one timestamp format of the API.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn now_rfc3339() -> String {
    rfc3339(Utc::now())
}

/// RFC 3339 of a unix-ms time.
pub fn ms_rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_carry_their_partition_and_entry_and_order_by_ingest() {
        let id = DeliveryId {
            partition: 12,
            entry: EntryId {
                ms: 1_733_000_000_000,
                seq: 5,
            },
        };
        assert_eq!(id.to_string(), "msg_12_1733000000000-5");
        assert_eq!("msg_12_1733000000000-5".parse::<DeliveryId>(), Ok(id));
        for bad in [
            "msg_12",
            "evt_1_2-3",
            "msg_x_1-2",
            "msg_1_1733",
            "msg_1_a-b",
        ] {
            assert!(bad.parse::<DeliveryId>().is_err(), "{bad}");
        }
        let later = EntryId {
            ms: 1_733_000_000_000,
            seq: 6,
        };
        assert!(id.entry < later);
        assert!(
            later
                < EntryId {
                    ms: 1_733_000_000_001,
                    seq: 0
                }
        );
        assert_ne!(new_event_id(), new_event_id());
    }

    #[test]
    fn partitions_spread_and_stay_put() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_of(&format!("ep_{i}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(partition_of("ep_x", 64), partition_of("ep_x", 64));
    }
}
