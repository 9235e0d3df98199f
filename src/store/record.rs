//! The stored forms both backends share: what one delivery costs in bytes is decided here.
//!
//! - A **job** is the delivery as ingest writes it, once: ids, event type, ordering key and
//!   the body, packed into one value (`store::packed`). [`JobRecord`] is the JSON form the
//!   embedded store wrote before, still read.
//! - A delivery's **state** is one value written with each outcome: a [`Progress`] header line,
//!   then one line per attempt ([`AttemptRecord`]). An attempt keeps only what differs per
//!   attempt: the signature, the endpoint's custom headers when it has any, the response and
//!   the timing. The body is the job's; `content-type`, `user-agent`, `webhook-id` and
//!   `webhook-timestamp` are derived when the attempt is read.
//! - An **event** of the workspace's log ([`EventRecord`]) names its deliveries; it keeps the
//!   event's body only when no rule matched (otherwise the body is in every delivery).
//! - An **idempotency record** is the fingerprint of the request's events and, per event, its
//!   id and its deliveries' ids: the answer a retried request gets again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::delivery::{
    Attempt, AttemptError, AttemptRequest, AttemptResponse, DeliveryId, EntryId, Progress,
    ms_rfc3339,
};

use super::{Result, StoreError};

/// A job as the embedded store stored it before the packed form (still read, never written).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub w: String,
    pub e: String,
    pub r: u64,
    pub v: String,
    pub t: String,
    #[serde(default)]
    pub k: String,
    pub b: String,
    /// For a manual retry or a replay: the delivery's first entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    /// A manual retry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub m: bool,
}

/// The headers an attempt's log derives instead of storing.
const DERIVED_HEADERS: [&str; 5] = [
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// One attempt as stored: what differs per attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptRecord {
    pub n: u32,
    /// Start, unix ms.
    pub t: i64,
    /// Duration, ms.
    pub d: u64,
    pub u: String,
    /// The `webhook-signature` header.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sig: String,
    /// The endpoint's custom headers, when it had any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub h: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub st: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rh: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rb: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tr: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<(String, String)>,
    /// The next attempt, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<i64>,
}

fn parse_ms(rfc: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc).map_or(0, |t| t.timestamp_millis())
}

impl AttemptRecord {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.e.is_none() && self.st.is_some_and(|s| (200..300).contains(&s))
    }

    /// The error's kind and message (`status` for a non-2xx answer).
    pub fn error(&self) -> Option<(&str, &str)> {
        self.e.as_ref().map(|(k, m)| (k.as_str(), m.as_str()))
    }

    pub fn of(a: &Attempt) -> AttemptRecord {
        let mut h = a.request.headers.clone();
        let sig = h.remove("webhook-signature").unwrap_or_default();
        h.retain(|k, _| !DERIVED_HEADERS.contains(&k.as_str()));
        AttemptRecord {
            n: a.attempt,
            t: parse_ms(&a.started_at),
            d: a.duration_ms,
            u: a.request.url.clone(),
            sig,
            h,
            st: a.response.as_ref().map(|r| r.status),
            rh: a
                .response
                .as_ref()
                .map(|r| {
                    r.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            rb: a
                .response
                .as_ref()
                .map(|r| r.body.clone())
                .unwrap_or_default(),
            tr: a.response.as_ref().is_some_and(|r| r.truncated),
            e: a.error
                .as_ref()
                .map(|e| (e.kind.clone(), e.message.clone())),
            x: a.next_attempt_at.as_deref().map(parse_ms),
        }
    }

    /// The attempt as the API shows it, of delivery `id` whose body is `body`.
    pub fn view(&self, id: &str, body: &str) -> Attempt {
        let mut headers = self.h.clone();
        headers.insert("content-type".into(), "application/json".into());
        headers.insert("user-agent".into(), crate::deliverer::USER_AGENT.into());
        headers.insert("webhook-id".into(), id.into());
        headers.insert("webhook-timestamp".into(), (self.t / 1000).to_string());
        if !self.sig.is_empty() {
            headers.insert("webhook-signature".into(), self.sig.clone());
        }
        Attempt {
            attempt: self.n,
            started_at: ms_rfc3339(self.t),
            duration_ms: self.d,
            request: AttemptRequest {
                url: self.u.clone(),
                headers,
                body: (!body.is_empty()).then(|| body.to_string()),
            },
            response: self.st.map(|status| AttemptResponse {
                status,
                headers: self.rh.iter().cloned().collect(),
                body: self.rb.clone(),
                truncated: self.tr,
            }),
            error: self
                .e
                .clone()
                .map(|(kind, message)| AttemptError { kind, message }),
            next_attempt_at: self.x.map(ms_rfc3339),
        }
    }
}

/// A delivery's state: its progress and its attempts so far.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub progress: Progress,
    pub attempts: Vec<AttemptRecord>,
}

/// The stored state: the progress header, then the attempts' lines as `attempts` holds them
/// (already encoded, `\n`-separated, possibly empty).
pub fn encode_state(progress: &Progress, attempts: &str) -> Result<String> {
    let mut out = serde_json::to_string(progress)?;
    if !attempts.is_empty() {
        out.push('\n');
        out.push_str(attempts);
    }
    Ok(out)
}

/// The attempt lines of a stored state (everything after the header).
pub fn state_attempts(stored: &str) -> &str {
    stored.split_once('\n').map_or("", |(_, rest)| rest)
}

/// Only the progress of a stored state (for the dispatcher: the attempts are not parsed).
pub fn decode_progress(stored: &str) -> Result<Progress> {
    let header = stored.split_once('\n').map_or(stored, |(h, _)| h);
    Ok(serde_json::from_str(header)?)
}

/// The last attempt of a stored state, parsing only its line (a list row shows it).
pub fn last_attempt(stored: &str) -> Option<AttemptRecord> {
    let line = state_attempts(stored).lines().rfind(|l| !l.is_empty())?;
    serde_json::from_str(line).ok()
}

pub fn decode_state(stored: &str) -> Result<State> {
    let progress = decode_progress(stored)?;
    let attempts = state_attempts(stored)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).map_err(StoreError::from))
        .collect::<Result<_>>()?;
    Ok(State { progress, attempts })
}

/// An event of a workspace's log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    pub v: String,
    pub t: String,
    /// Its deliveries' entries, space-separated, in order.
    #[serde(default)]
    pub d: String,
    /// Their partitions, space-separated, in the same order.
    #[serde(default)]
    pub p: String,
    /// The event's body, when no delivery carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
}

impl EventRecord {
    pub fn deliveries(&self) -> Vec<DeliveryId> {
        zip_ids(&self.p, &self.d)
    }
}

/// Delivery ids from their partitions and entries, both space-separated and in order.
pub fn zip_ids(partitions: &str, entries: &str) -> Vec<DeliveryId> {
    partitions
        .split(' ')
        .zip(entries.split(' '))
        .filter_map(|(p, e)| {
            Some(DeliveryId {
                partition: p.parse().ok()?,
                entry: e.parse().ok()?,
            })
        })
        .collect()
}

/// Space-separated partitions and entries of these ids.
pub fn split_ids(ids: &[DeliveryId]) -> (String, String) {
    let p: Vec<String> = ids.iter().map(|i| i.partition.to_string()).collect();
    let e: Vec<String> = ids.iter().map(|i| i.entry.to_string()).collect();
    (p.join(" "), e.join(" "))
}

/// What an `Idempotency-Key` holds once its request is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub fingerprint: String,
    /// Per event of the request: its id and its deliveries' ids.
    pub events: Vec<(String, Vec<String>)>,
}

impl Answered {
    /// `fingerprint`, then one line per event: `id|partitions|entries` (the same compact
    /// form ingest writes in the event log).
    pub fn encode(&self) -> String {
        let mut out = self.fingerprint.clone();
        for (event, deliveries) in &self.events {
            let ids: Vec<DeliveryId> = deliveries.iter().filter_map(|d| d.parse().ok()).collect();
            let (p, e) = split_ids(&ids);
            out.push('\n');
            out.push_str(&format!("{event}|{p}|{e}"));
        }
        out
    }

    pub fn decode(s: &str) -> Answered {
        let mut lines = s.split('\n');
        let fingerprint = lines.next().unwrap_or_default().to_string();
        let events = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut parts = l.splitn(3, '|');
                let id = parts.next().unwrap_or_default().to_string();
                let (p, e) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                (id, zip_ids(p, e).iter().map(|d| d.to_string()).collect())
            })
            .collect();
        Answered {
            fingerprint,
            events,
        }
    }
}

/// A partition's checkpoint: every job before `done_below` has reached its final outcome,
/// and no job after `read_upto` has been read by any owner. A new owner starts reading at
/// `done_below`, and looks up the state of the jobs up to `read_upto` (those may have finished
/// or be in backoff); after it, jobs are new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub done_below: EntryId,
    pub read_upto: EntryId,
}

impl Checkpoint {
    pub fn encode(&self) -> String {
        format!("{} {}", self.done_below, self.read_upto)
    }

    pub fn decode(s: &str) -> Checkpoint {
        let mut words = s
            .split(' ')
            .map(|w| w.parse::<EntryId>().unwrap_or_default());
        Checkpoint {
            done_below: words.next().unwrap_or_default(),
            read_upto: words.next().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Status;

    #[test]
    fn an_attempt_keeps_only_what_differs_and_reads_back_whole() {
        let mut headers = BTreeMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("user-agent", crate::deliverer::USER_AGENT),
            ("webhook-id", "msg_1_5-0"),
            ("webhook-timestamp", "1733000000"),
            ("webhook-signature", "v1,abc"),
            ("x-team", "growth"),
        ] {
            headers.insert(k.to_string(), v.to_string());
        }
        let a = Attempt {
            attempt: 2,
            started_at: "2024-12-01T00:13:20.000Z".into(),
            duration_ms: 7,
            request: AttemptRequest {
                url: "https://x.io/h".into(),
                headers,
                body: None,
            },
            response: Some(AttemptResponse {
                status: 500,
                headers: [("date".to_string(), "now".to_string())].into(),
                body: "no".into(),
                truncated: false,
            }),
            error: Some(AttemptError {
                kind: "status".into(),
                message: "the endpoint answered 500".into(),
            }),
            next_attempt_at: Some("2024-12-01T00:13:30.000Z".into()),
        };
        let rec = AttemptRecord::of(&a);
        assert_eq!(rec.h.len(), 1, "only the custom header is stored");
        let json = serde_json::to_string(&rec).unwrap();
        assert!(
            !json.contains("user-agent") && !json.contains("msg_1_5-0"),
            "{json}"
        );
        let back: AttemptRecord = serde_json::from_str(&json).unwrap();
        let mut view = back.view("msg_1_5-0", "{}");
        assert_eq!(view.request.body.as_deref(), Some("{}"));
        view.request.body = None;
        view.request
            .headers
            .insert("webhook-timestamp".into(), "1733000000".into());
        assert_eq!(view, a);
    }

    #[test]
    fn a_state_is_its_progress_and_its_attempt_lines() {
        let p = Progress {
            status: Status::Retrying,
            attempts: 1,
            failures: 1,
            next_attempt_ms: Some(5),
            throttled_since_ms: None,
        };
        let line = r#"{"n":1,"t":1,"d":2,"u":"https://x.io"}"#;
        let stored = encode_state(&p, line).unwrap();
        assert_eq!(decode_progress(&stored).unwrap(), p);
        let two = encode_state(&p, &format!("{}\n{line}", state_attempts(&stored))).unwrap();
        assert_eq!(decode_state(&two).unwrap().attempts.len(), 2);
        assert!(
            decode_state(&encode_state(&p, "").unwrap())
                .unwrap()
                .attempts
                .is_empty()
        );
    }

    #[test]
    fn answers_and_checkpoints_round_trip() {
        let a = Answered {
            fingerprint: "fp".into(),
            events: vec![
                (
                    "evt_1".into(),
                    vec!["msg_1_2-3".into(), "msg_12_2-4".into()],
                ),
                ("evt_2".into(), vec![]),
            ],
        };
        assert_eq!(Answered::decode(&a.encode()), a);
        let c = Checkpoint {
            done_below: EntryId { ms: 1, seq: 2 },
            read_upto: EntryId { ms: 3, seq: 4 },
        };
        assert_eq!(Checkpoint::decode(&c.encode()), c);
        assert_eq!(Checkpoint::decode(""), Checkpoint::default());
    }
}
