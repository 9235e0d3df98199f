//! Deliveries and attempts: the records of the delivery log.
//!
//! A delivery is one (event, rule, endpoint) triple; its id is the `webhook-id` header, stable
//! across retries, and is derived from the triple (UUIDv5) so that a retried ingest produces
//! the same ids and the dispatcher can recognise a job it has already finished.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Namespace of the deterministic ids (delivery and idempotent event ids).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5f1c_83a0_4d2e_4b7e_9a51_7e0c_3d21_a9b4);

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// The record of a delivery (without its attempts).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// The exact bytes that are signed and POSTed.
    #[serde(skip)]
    pub body: String,
    /// Ingest order: creation ms and the delivery's index in its request, `{ms:013}{i:06}`.
    /// Sorts like the partition stream, so replays and the log index keep event order.
    #[serde(skip)]
    pub seq: String,
}

/// The [`Delivery::seq`] of the `index`-th delivery of a request accepted at `created_ms`.
pub fn seq(created_ms: i64, index: usize) -> String {
    format!("{created_ms:013}{index:06}")
}

/// What went wrong in an attempt that got no usable response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptError {
    /// `timeout`, `connect`, `tls`, `ssrf`, `request`, `endpoint_gone`, ...
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRequest {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// Filled from the delivery's body when read, not stored per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// A delivery to create at ingest.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub delivery: Delivery,
    pub partition: u32,
}

/// A job read from a partition stream: the pointer to one delivery to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub partition: u32,
    /// The stream entry id, acknowledged at the delivery's final outcome.
    pub entry_id: String,
    pub workspace: String,
    pub endpoint_id: String,
    pub delivery_id: String,
    /// The partition lease (`node:token`) this job was read under; writes with a stale one are
    /// refused. `None` on a single node (the embedded store).
    pub fence: Option<String>,
    /// A manual retry (`POST /v1/deliveries/{id}/retry`): sent at once, whatever the breaker
    /// says (it is the breaker's probe) and wherever it stands in the endpoint's queue.
    pub manual: bool,
}

/// The id of the delivery of (event, rule, endpoint): deterministic, so re-ingest is idempotent.
pub fn delivery_id(workspace: &str, event_id: &str, rule_id: u64, endpoint_id: &str) -> String {
    let name = format!("{workspace}/{event_id}/{rule_id}/{endpoint_id}");
    format!(
        "msg_{}",
        uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).simple()
    )
}

/// The id of an event: derived from the `Idempotency-Key` when there is one, else time-ordered.
pub fn event_id(workspace: &str, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => {
            let name = format!("{workspace}/idem/{key}");
            format!(
                "evt_{}",
                uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).simple()
            )
        }
        None => format!("evt_{}", uuid::Uuid::now_v7().simple()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_where_they_must_be() {
        assert_eq!(
            delivery_id("w", "e", 1, "ep"),
            delivery_id("w", "e", 1, "ep")
        );
        assert_ne!(
            delivery_id("w", "e", 1, "ep"),
            delivery_id("w", "e", 2, "ep")
        );
        assert_eq!(event_id("w", Some("k")), event_id("w", Some("k")));
        assert_ne!(event_id("w", Some("k")), event_id("w2", Some("k")));
        assert_ne!(event_id("w", None), event_id("w", None));
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
