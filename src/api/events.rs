//! `POST /v1/events` and `POST /v1/events/batch`: validate, match rules, enqueue, answer 202.
//!
//! The answer is sent only once every job is durable. With an `Idempotency-Key`, the event id
//! and so every delivery id are derived from the key, and the answer is remembered: a retried
//! request gets the same answer, and a retry racing the original (or a request that half
//! succeeded before a crash) cannot create a second set of deliveries, because deliveries are
//! created only if their id does not exist yet.

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
use crate::store::NewEvent;
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

async fn remembered(
    state: &AppState,
    ws: &str,
    key: &Option<String>,
) -> Result<Option<Response>, ApiError> {
    let Some(k) = key else { return Ok(None) };
    let Some(answer) = state.store.idempotent_answer(ws, k).await? else {
        return Ok(None);
    };
    let value: Value =
        serde_json::from_str(&answer).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Some(accepted(value)))
}

pub async fn ingest_one(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let value: Value = read_json(&state, body).await?;
    let event = Event::parse(value)?;
    if let Some(answer) = remembered(&state, &ws.uuid, &key).await? {
        return Ok(answer);
    }
    let mut planned = plan(&state, &ws, vec![(event, key.clone())]).await?;
    state.store.ingest(&ws.uuid, &planned).await?;
    crate::telemetry::events_accepted(&state.config.node_id, planned.len());
    let answer = answer_of(&planned.remove(0));
    remember(&state, &ws.uuid, &key, &answer).await?;
    Ok(accepted(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    events: Vec<Value>,
}

pub async fn ingest_batch(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let limit = state.config.max_payload_bytes.saturating_mul(64);
    let body = read_body(body, limit).await?;
    let batch: Batch = from_body(&body)?;
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(Invalid::field("events", format!("must hold 1 to {MAX_BATCH} events")).into());
    }
    let mut events = Vec::with_capacity(batch.events.len());
    for (i, v) in batch.events.into_iter().enumerate() {
        let event = Event::parse(v).map_err(|e| e.under(&format!("events[{i}]")))?;
        events.push((event, key.as_ref().map(|k| format!("{k}/{i}"))));
    }
    if let Some(answer) = remembered(&state, &ws.uuid, &key).await? {
        return Ok(answer);
    }
    let planned = plan(&state, &ws, events).await?;
    state.store.ingest(&ws.uuid, &planned).await?;
    crate::telemetry::events_accepted(&state.config.node_id, planned.len());
    let answer = json!({"results": planned.iter().map(answer_of).collect::<Vec<_>>()});
    remember(&state, &ws.uuid, &key, &answer).await?;
    Ok(accepted(answer))
}

async fn remember(
    state: &AppState,
    ws: &str,
    key: &Option<String>,
    answer: &Value,
) -> Result<(), ApiError> {
    if let Some(k) = key {
        let ttl = state.config.idempotency_ttl_secs;
        state
            .store
            .remember_answer(ws, k, &answer.to_string(), ttl)
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
