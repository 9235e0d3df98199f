//! `/v1/event-rules`: create, list, show, update, delete.
//!
//! A rule is validated whole (patterns, the condition language, actions) and its endpoints must
//! exist in the same workspace before it is saved; saving bumps the workspace's rule version so
//! every node's cache recompiles on its next event.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::Value;

use super::{
    ApiError, AppState, ListParams, ListQuery, Query, Tenant, created, paginate, read_json,
};
use crate::delivery::now_rfc3339;
use crate::invalid::{Invalid, from_value};
use crate::rule::{self, Action, Rule, RuleSpec};

async fn validate(state: &AppState, ws: &str, spec: &RuleSpec) -> Result<(), ApiError> {
    rule::validate(spec)?;
    for (i, Action::Webhook { endpoint_id }) in spec.actions.iter().enumerate() {
        if state.store.endpoint(ws, endpoint_id).await?.is_none() {
            return Err(Invalid::new(
                "unknown_endpoint",
                format!("actions[{i}].endpointId"),
                format!("no endpoint `{endpoint_id}` in this workspace"),
            )
            .into());
        }
    }
    Ok(())
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("event rule"))
}

pub async fn create(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let spec: RuleSpec = read_json(&state, body).await?;
    validate(&state, &ws.uuid, &spec).await?;
    let now = now_rfc3339();
    let rule = Rule {
        id: state.store.next_rule_id(&ws.uuid).await?,
        uuid: uuid::Uuid::new_v4().to_string(),
        spec,
        created_at: now.clone(),
        updated_at: now,
    };
    state.store.put_rule(&ws.uuid, &rule).await?;
    Ok(created(rule))
}

pub async fn list(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let params = ListParams::from_query(&q)?;
    let (_, rules) = state.store.rules(&ws.uuid).await?;
    Ok(Json(paginate(
        "event-rules",
        rules,
        |r| format!("{:020}", r.id),
        &params,
    )?))
}

pub async fn show(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let rule = state
        .store
        .rule(&ws.uuid, parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("event rule"))?;
    let next_fire_times = rule.spec.schedule.as_ref().and_then(|schedule| {
        let compiled = crate::routine::CompiledSchedule::compile(schedule).ok()?;
        Some(
            compiled
                .next_n(chrono::Utc::now(), 3)
                .into_iter()
                .map(crate::delivery::rfc3339)
                .collect(),
        )
    });
    Ok(Json(super::views::RuleView {
        rule,
        next_fire_times,
    }))
}

pub async fn update(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let patch: Value = read_json(&state, body).await?;
    let mut rule = state
        .store
        .rule(&ws.uuid, parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("event rule"))?;
    let base = serde_json::to_value(&rule.spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let merged = crate::invalid::merge_patch(base, &patch)?;
    let spec: RuleSpec = from_value(&merged)?;
    validate(&state, &ws.uuid, &spec).await?;
    rule.spec = spec;
    rule.updated_at = now_rfc3339();
    state.store.put_rule(&ws.uuid, &rule).await?;
    Ok(Json(rule))
}

pub async fn remove(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.store.delete_rule(&ws.uuid, parse_id(&id)?).await? {
        return Err(ApiError::not_found("event rule"));
    }
    Ok(StatusCode::NO_CONTENT)
}
