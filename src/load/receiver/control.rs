//! The receiver's control API, under [`PREFIX`] on the same listener as the webhooks, so a
//! load run on another machine reads what arrived without a second port or a shared disk:
//!
//! - `GET /_switchyard/arrivals?after=N&limit=M`: arrivals from index `N` (default 0, at most
//!   `M`, default and ceiling [`PAGE`]), each with its webhook-id, path, arrival time on the
//!   receiver's clock, the status answered and the signature check; `next` is the `after` of
//!   the following page, `total` what arrived so far.
//! - `POST /_switchyard/reset`: forgets every arrival (indexes start again at 0).
//!
//! With a control token both require `Authorization: Bearer <token>`. Requests under the
//! prefix are never recorded as webhooks.

use std::sync::atomic::Ordering;

use http_body_util::Full;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};

use super::{Control, Received, Shared};

/// The reserved path prefix; no endpoint should be configured under it.
pub const PREFIX: &str = "/_switchyard/";
/// Most arrivals per page.
pub const PAGE: usize = 20_000;

/// One webhook as the control API reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arrival {
    /// The `webhook-id` header (the delivery id).
    pub id: String,
    /// The request path: the endpoint, as the load engine spreads them (`/ep/{i}`).
    pub endpoint: String,
    /// Arrival on the receiver's wall clock, unix ms (fractional).
    pub at_ms: f64,
    /// What the receiver answered.
    pub status: u16,
    /// The Standard Webhooks signature checked with the receiver's secrets (`None`: none given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_ok: Option<bool>,
    /// `member.seq` / `member.key` of the body, where the load engine writes an event's
    /// sequence number and ordering key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u64>,
}

impl From<&Received> for Arrival {
    fn from(r: &Received) -> Arrival {
        Arrival {
            id: r.header("webhook-id").to_string(),
            endpoint: r.path.clone(),
            at_ms: r.wall_ms,
            status: r.answered,
            signature_ok: r.signature_ok,
            seq: r.seq,
            key: r.key,
        }
    }
}

/// One page of `GET /_switchyard/arrivals`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArrivalsPage {
    pub arrivals: Vec<Arrival>,
    pub next: usize,
    pub total: usize,
    pub bad_signatures: usize,
}

fn json(status: u16, body: &impl Serialize) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("serialisable"),
        )))
        .expect("a valid response")
}

fn error(status: u16, message: &str) -> hyper::Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn query(req: &hyper::Request<hyper::body::Incoming>, name: &str) -> Option<usize> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)?
        .1
        .parse()
        .ok()
}

/// Answers a request under [`PREFIX`].
pub(super) fn answer(
    shared: &Shared,
    req: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    if let Control::Token(token) = &shared.control {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return error(
                401,
                "the control API wants Authorization: Bearer <control token>",
            );
        }
    }
    let route = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
    match (req.method().as_str(), route) {
        ("GET", "arrivals") => {
            let after = query(req, "after").unwrap_or(0);
            let limit = query(req, "limit").unwrap_or(PAGE).clamp(1, PAGE);
            let all = shared.received.lock().expect("lock");
            let from = after.min(all.len());
            let arrivals: Vec<Arrival> =
                all[from..].iter().take(limit).map(Arrival::from).collect();
            let page = ArrivalsPage {
                next: from + arrivals.len(),
                total: all.len(),
                bad_signatures: shared.bad_signatures.load(Ordering::SeqCst),
                arrivals,
            };
            drop(all);
            json(200, &page)
        }
        ("POST", "reset") => {
            let mut all = shared.received.lock().expect("lock");
            shared.bad_signatures.store(0, Ordering::SeqCst);
            let cleared = std::mem::take(&mut *all).len();
            drop(all);
            json(200, &serde_json::json!({ "cleared": cleared }))
        }
        _ => error(
            404,
            "control routes: GET /_switchyard/arrivals?after=N, POST /_switchyard/reset",
        ),
    }
}
