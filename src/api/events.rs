//! `POST /v1/events` and `POST /v1/events/batch`: validate, match rules, enqueue, answer 202;
//! and the event log, `GET /v1/events[/{id}]`.
//!
//! The answer is sent only once every job is durable. With an `Idempotency-Key`, the store
//! looks the key up in the same step that writes (one script on Redis, one commit on the
//! embedded store): a request seen before with the same events gets its first answer and
//! writes nothing; with other events it is a 409 `idempotency_key_reused`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::deliveries::time_param;
use super::views::{Accepted, AcceptedBatch, EventDelivery, EventDetail, EventSummary};
use super::{
    ApiError, AppState, ListParams, ListQuery, Query, Tenant, Window, read_body, read_json,
};
use crate::config::Overload;
use crate::event::Event;
use crate::ingest::Fired;
use crate::invalid::{Invalid, from_body};
use crate::store::Page;
use crate::store::log::LoggedEvent;
use crate::store::{Idempotency, Ingested};
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

fn accepted(body: impl serde::Serialize) -> Response {
    (StatusCode::ACCEPTED, Json(body)).into_response()
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

/// Matches, plans and writes a request's events; `None` when its `Idempotency-Key` was used
/// with other events (409). The answer is per event: its id and its deliveries' ids.
async fn write(
    state: &AppState,
    ws: &Workspace,
    key: Option<String>,
    events: Vec<Event>,
) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    let idem = key.map(|key| Idempotency {
        key,
        fingerprint: fingerprint(&events),
        ttl_secs: state.config.idempotency_ttl_secs,
    });
    let n = events.len();
    let permit = ingest_permit(state).await?;
    let written = plan_and_ingest(state, ws, events, idem.as_ref(), permit).await?;
    match written {
        Ingested::Written(answer) => {
            crate::telemetry::events_accepted(&state.config.node_id, n);
            Ok(answer)
        }
        Ingested::Answered(answer) => Ok(answer),
        Ingested::Stale => Err(ApiError::Internal(
            "an ingest planned from fresh versions was answered stale".into(),
        )),
        Ingested::Reused => Err(ApiError::field(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "Idempotency-Key",
            "this key was already used with a different body",
        )),
    }
}

fn answer_of((id, deliveries): &(String, Vec<String>)) -> Accepted {
    Accepted {
        id: id.clone(),
        deliveries: deliveries.clone(),
    }
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
    let answer = write(&state, &ws, key, vec![event]).await?;
    let first = answer
        .first()
        .ok_or_else(|| ApiError::Internal("an ingest without its event".into()))?;
    Ok(accepted(answer_of(first)))
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
    // Parsed once when valid; a failure is parsed again with the path tracked, to name it.
    let batch: Batch = serde_json::from_slice::<Batch>(&body)
        .or_else(|_| {
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
        })
        .map_err(|e| {
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
        events.push(Event::parse(v).map_err(|e| e.under(&format!("events[{i}]")))?);
    }
    let answer = write(&state, &ws, key, events).await?;
    Ok(accepted(AcceptedBatch {
        results: answer.iter().map(answer_of).collect(),
    }))
}

/// Matches each event against the workspace's rules, builds its deliveries and writes them.
#[tracing::instrument(name = "ingest", skip_all, fields(workspace = %ws.uuid, events = events.len()))]
async fn plan_and_ingest(
    state: &AppState,
    ws: &Workspace,
    events: Vec<Event>,
    idem: Option<&Idempotency>,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Result<Ingested, ApiError> {
    // The permit bounds the CPU of parsing and planning; the write only waits, and requests
    // waiting together are written in one call (`store::redis::ingest`), so it is let go
    // before the write.
    let mut permit = Some(permit);
    // Where the store checks the versions in the write itself, plan with the cached ones and
    // plan again from freshly read versions only when the write answers that one moved.
    if state.store.checks_versions()
        && let Some(snapshot) = state.rules.cached(&ws.uuid)
    {
        let planned = plan_checked(state, ws, &snapshot, fire(&snapshot, &events)).await?;
        drop(permit.take());
        let expect = Some(snapshot.versions());
        match state.store.ingest(&ws.uuid, &planned, idem, expect).await? {
            Ingested::Stale => crate::telemetry::ingest_replanned(&state.config.node_id),
            written => return Ok(written),
        }
    }
    let snapshot = state.rules.get(&state.store, &ws.uuid).await?;
    let planned = plan_checked(state, ws, &snapshot, fire(&snapshot, &events)).await?;
    drop(permit);
    Ok(state.store.ingest(&ws.uuid, &planned, idem, None).await?)
}

/// Each event with the rules of `snapshot` it fires.
fn fire<'a>(snapshot: &'a crate::ingest::cache::Snapshot, events: &'a [Event]) -> Vec<Fired<'a>> {
    events
        .iter()
        .map(|event| Fired {
            event,
            rules: snapshot.rules.matching(&event.event_type, &event.body),
        })
        .collect()
}

/// An ingest's turn: beyond `max_concurrent_ingests` requests wait here, before any work, so
/// a burst of producers cannot take every core from delivery.
pub(super) async fn ingest_permit(
    state: &AppState,
) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    state
        .ingests
        .acquire()
        .await
        .map_err(|_| ApiError::Internal("the ingest semaphore closed".into()))
}

/// Plans fired events into deliveries, and refuses them (429, nothing written) when
/// `overload = "shed"` and a partition they write to is over its backlog bound.
pub(super) async fn plan_checked(
    state: &AppState,
    ws: &Workspace,
    snapshot: &crate::ingest::cache::Snapshot,
    fired: Vec<Fired<'_>>,
) -> Result<Vec<crate::store::NewEvent>, ApiError> {
    let planned = crate::ingest::plan(&state.store, &state.rules, snapshot, ws, fired).await?;
    if state.config.overload == Overload::Shed {
        let now = chrono::Utc::now().timestamp_millis();
        let touched = planned
            .iter()
            .flat_map(|e| e.deliveries.iter().map(|d| d.partition));
        let (partition, jobs) = state.backlog.worst(touched, now);
        if jobs > state.config.overload_backlog_jobs {
            crate::telemetry::ingest_shed(&state.config.node_id);
            return Err(ApiError::Overloaded(format!(
                "partition {partition} has {jobs} unfinished jobs, over overload_backlog_jobs ({})",
                state.config.overload_backlog_jobs
            )));
        }
    }
    Ok(planned)
}

/// `GET /v1/events` query.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct EventQuery {
    /// Only events of this type (`member:created`).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    #[serde(flatten)]
    pub window: Window,
    #[serde(flatten)]
    pub page: ListQuery,
}

fn summary(ev: &LoggedEvent) -> EventSummary {
    EventSummary {
        id: ev.record.v.clone(),
        event_type: ev.record.t.clone(),
        created_at: created_at(&ev.record.v),
        deliveries: ev.record.deliveries().len(),
    }
}

/// An event's time, from its id (a UUIDv7).
fn created_at(id: &str) -> String {
    crate::delivery::ms_rfc3339(crate::store::log::event_ms(id).unwrap_or(0) as i64)
}

/// `GET /v1/events`: the event log, newest first.
pub async fn list(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Json<Page<EventSummary>>, ApiError> {
    let params = ListParams::from_query(&q.page)?;
    let since = time_param(q.window.since.as_deref(), "since")?;
    let until = time_param(q.window.until.as_deref(), "until")?;
    let page = state
        .store
        .list_events(
            &ws.uuid,
            q.event_type.as_deref(),
            since,
            until,
            params.limit,
            params.cursor.as_deref(),
        )
        .await?;
    Ok(Json(Page {
        data: page.data.iter().map(summary).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// `GET /v1/events/{id}`: the event as received, and its deliveries with their status.
pub async fn show(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EventDetail>, ApiError> {
    let event = state
        .store
        .find_event(&ws.uuid, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let deliveries = state
        .store
        .deliveries_of(&event.record.deliveries())
        .await?
        .into_iter()
        .map(|d| EventDelivery {
            id: d.id,
            endpoint_id: d.endpoint_id,
            rule_id: d.rule_id,
            status: d.status,
            test: d.test,
        })
        .collect();
    let payload = state.store.event_payload(&event).await?;
    Ok(Json(EventDetail {
        id: event.record.v.clone(),
        event_type: event.record.t.clone(),
        created_at: created_at(&event.record.v),
        payload: payload.unwrap_or(Value::Null),
        deliveries,
    }))
}
