//! `GET /v1/event-types` (the catalogue: `crate::event::catalogue`) and
//! `POST /v1/endpoints/{id}/test`, which sends a type's example to one endpoint.
//!
//! A test send is an ordinary ingest with one rule made for it (rule id 0, so the delivery
//! and the event log show `test: true`): the endpoint's transform, signature, ordering, rate
//! limit, retries and log apply to it as to any delivery, so what the receiver sees is what
//! it will see for real events.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::views::TestSent;
use super::{ApiError, AppState, Tenant, read_body};
use crate::event::Event;
use crate::event::catalogue::{self, EventType};
use crate::ingest::Fired;
use crate::invalid::{Invalid, from_body};
use crate::rule::CompiledRule;
use crate::store::{Ingested, Page};

/// The type a test send uses when the request names none.
pub const DEFAULT_TEST_TYPE: &str = "data_record:created";

/// The catalogue, made once: it is fixed for the binary's life.
static CATALOGUE: std::sync::LazyLock<Vec<EventType>> =
    std::sync::LazyLock::new(catalogue::catalogue);

/// Every event type, with its schema and an example (one page: the list is short and fixed).
pub async fn list(Tenant(_): Tenant) -> Json<Page<EventType>> {
    Json(Page {
        data: CATALOGUE.clone(),
        next_cursor: None,
    })
}

/// `POST /v1/endpoints/{id}/test` body (optional).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestSend {
    /// A type of `GET /v1/event-types` (default `data_record:created`).
    pub event_type: Option<String>,
}

fn disabled() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "endpoint_disabled",
        "the endpoint is disabled: enable it to send it a test event",
    )
}

pub async fn test_send(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<TestSent>), ApiError> {
    let body = read_body(&state, body, state.config.max_payload_bytes).await?;
    let req: TestSend = if body.iter().all(u8::is_ascii_whitespace) {
        TestSend::default()
    } else {
        from_body(&body)?
    };
    let event_type = req.event_type.as_deref().unwrap_or(DEFAULT_TEST_TYPE);
    let Some(serde_json::Value::Object(example)) = catalogue::example(event_type) else {
        return Err(Invalid::new(
            "unknown_event_type",
            "eventType",
            format!("`{event_type}` is not a type of GET /v1/event-types"),
        )
        .into());
    };
    let ep = state
        .store
        .endpoint(&ws.uuid, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    if !ep.spec.enabled {
        return Err(disabled());
    }
    let rule = CompiledRule {
        id: crate::delivery::TEST_RULE,
        uuid: "00000000-0000-0000-0000-000000000000".into(),
        name: "Test event".into(),
        condition: None,
        endpoint_ids: vec![ep.id.clone()],
        block: json!({"id": crate::delivery::TEST_RULE, "uuid": "00000000-0000-0000-0000-000000000000", "name": "Test event"}),
    };
    let event = Event {
        event_type: event_type.to_string(),
        body: example,
    };
    // Bounded and shed like any ingest, and planned before anything is written: an endpoint
    // disabled or deleted meanwhile makes no delivery, and then nothing is written.
    let _permit = super::events::ingest_permit(&state).await?;
    let snapshot = state.rules.get(&state.store, &ws.uuid).await?;
    let fired = vec![Fired {
        event: &event,
        rules: vec![&rule],
    }];
    let planned = super::events::plan_checked(&state, &ws, &snapshot, fired).await?;
    if planned.first().is_none_or(|e| e.deliveries.is_empty()) {
        return Err(disabled());
    }
    let written = state.store.ingest(&ws.uuid, &planned, None, None).await?;
    let Ingested::Written(answer) = written else {
        return Err(ApiError::Internal("a test send without its answer".into()));
    };
    let (event_id, deliveries) = answer
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("a test send without its event".into()))?;
    let delivery_id = deliveries
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("a test send without its delivery".into()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TestSent {
            delivery_id,
            event_id,
            event_type: event_type.to_string(),
        }),
    ))
}
