//! `POST /v1/events` and `POST /v1/events/batch`: validate, match rules, enqueue, answer 202.
//!
//! The answer is sent only once every job is durable. With an `Idempotency-Key`, the key is
//! claimed for the request's body first (another body with the same key is a 409
//! `idempotency_key_reused`), the event id and so every delivery id are derived from the key,
//! and the answer is remembered: a retried request gets the same answer, and a retry racing
//! the original (or a request that half succeeded before a crash) cannot create a second set
//! of deliveries, because deliveries are created only if their id does not exist yet.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, Tenant, read_body, read_json};
use crate::event::Event;
use crate::ingest::Fired;
use crate::invalid::{Invalid, from_body};
use crate::store::{Claim, NewEvent};
use crate::workspace::Workspace;

/// Events in one batch at most.
const MAX_BATCH: usize = 1000;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(|k| Some(k.to_string()))
        .ok_or_else(|| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })
}

fn accepted(body: Value) -> Response {
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// The `Idempotency-Key` of a request and its body's fingerprint.
struct Idempotent {
    key: String,
    fingerprint: String,
}

/// Claims the key for this body: `Some(answer)` when the request was already answered (the
/// same answer again), a 409 when the key was used with another body.
async fn claim(
    state: &AppState,
    ws: &str,
    idem: &Option<Idempotent>,
) -> Result<Option<Response>, ApiError> {
    let Some(i) = idem else { return Ok(None) };
    let ttl = state.config.idempotency_ttl_secs;
    match state
        .store
        .claim_idempotency(ws, &i.key, &i.fingerprint, ttl)
        .await?
    {
        Claim::New | Claim::InProgress => Ok(None),
        Claim::Answered(answer) => {
            let value: Value =
                serde_json::from_str(&answer).map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(Some(accepted(value)))
        }
        Claim::Reused => Err(ApiError::field(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "Idempotency-Key",
            "this key was already used with a different body",
        )),
    }
}

/// A fingerprint of the events of a request: SHA-256 of each event's JSON as parsed (key
/// order kept, whitespace not), so a byte-for-byte retry and a re-serialised one agree.
fn fingerprint<'a>(events: impl IntoIterator<Item = &'a Event>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for e in events {
        h.update(serde_json::to_vec(&e.body).unwrap_or_default());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

fn idempotent(key: Option<String>, events: &[(Event, Option<String>)]) -> Option<Idempotent> {
    key.map(|key| Idempotent {
        key,
        fingerprint: fingerprint(events.iter().map(|(e, _)| e)),
    })
}

pub async fn ingest_one(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let value: Value = read_json(&state, body).await?;
    let events = vec![(Event::parse(value)?, key.clone())];
    let idem = idempotent(key, &events);
    if let Some(answer) = claim(&state, &ws.uuid, &idem).await? {
        return Ok(answer);
    }
    let mut planned = plan(&state, &ws, events).await?;
    state.store.ingest(&ws.uuid, &planned).await?;
    crate::telemetry::events_accepted(&state.config.node_id, planned.len());
    let answer = answer_of(&planned.remove(0));
    remember(&state, &ws.uuid, &idem, &answer).await?;
    Ok(accepted(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow)]
    events: Vec<&'a serde_json::value::RawValue>,
}

pub async fn ingest_batch(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let limit = state.config.max_payload_bytes.saturating_mul(64);
    let body = read_body(&state, body, limit).await?;
    let mut de = serde_json::Deserializer::from_slice(&body);
    let batch: Batch = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            Invalid::field(
                if path == "." { String::new() } else { path },
                inner.to_string(),
            )
        } else {
            Invalid::new(
                "invalid_json",
                "",
                format!("the body is not valid JSON: {inner}"),
            )
        }
    })?;
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(Invalid::field("events", format!("must hold 1 to {MAX_BATCH} events")).into());
    }
    let max = state.config.max_payload_bytes;
    if let Some(i) = batch.events.iter().position(|raw| raw.get().len() > max) {
        return Err(ApiError::field(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("events[{i}]"),
            format!("each event must be at most {max} bytes (max_payload_bytes)"),
        ));
    }
    let mut events = Vec::with_capacity(batch.events.len());
    for (i, raw) in batch.events.iter().enumerate() {
        let v: Value =
            from_body(raw.get().as_bytes()).map_err(|e| e.under(&format!("events[{i}]")))?;
        let event = Event::parse(v).map_err(|e| e.under(&format!("events[{i}]")))?;
        events.push((event, key.as_ref().map(|k| format!("{k}/{i}"))));
    }
    let idem = idempotent(key, &events);
    if let Some(answer) = claim(&state, &ws.uuid, &idem).await? {
        return Ok(answer);
    }
    let planned = plan(&state, &ws, events).await?;
    state.store.ingest(&ws.uuid, &planned).await?;
    crate::telemetry::events_accepted(&state.config.node_id, planned.len());
    let answer = json!({"results": planned.iter().map(answer_of).collect::<Vec<_>>()});
    remember(&state, &ws.uuid, &idem, &answer).await?;
    Ok(accepted(answer))
}

async fn remember(
    state: &AppState,
    ws: &str,
    idem: &Option<Idempotent>,
    answer: &Value,
) -> Result<(), ApiError> {
    if let Some(i) = idem {
        let ttl = state.config.idempotency_ttl_secs;
        state
            .store
            .remember_answer(ws, &i.key, &i.fingerprint, &answer.to_string(), ttl)
            .await?;
    }
    Ok(())
}

fn answer_of(ev: &NewEvent) -> Value {
    json!({"id": ev.id, "deliveries": ev.deliveries})
}

/// Matches each event against the workspace's rules and builds its deliveries.
#[tracing::instrument(name = "ingest", skip_all, fields(workspace = %ws.uuid, events = events.len()))]
async fn plan(
    state: &AppState,
    ws: &Workspace,
    events: Vec<(Event, Option<String>)>,
) -> Result<Vec<NewEvent>, ApiError> {
    let rules = state.rules.get(&state.store, &ws.uuid).await?;
    let fired: Vec<Fired> = events
        .into_iter()
        .map(|(event, key)| {
            let rules = rules.matching(&event.event_type, &event.body);
            Fired { event, key, rules }
        })
        .collect();
    Ok(crate::ingest::plan(&state.store, ws, fired).await?)
}
