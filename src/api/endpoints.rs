//! `/v1/endpoints`: create, list, show, update, delete.
//!
//! A URL is checked by the SSRF guard (scheme, literal addresses, and the name's current DNS
//! answer) before anything is written; the dispatcher checks it again at connect time.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::Value;
use url::Url;

use super::{ApiError, AppState, ListParams, RawQuery, Tenant, created, paginate, read_body};
use crate::delivery::now_rfc3339;
use crate::dispatch::RouterMsg;
use crate::endpoint::{Endpoint, EndpointSpec};
use crate::invalid::from_body;
use crate::signing::generate_secret;
use crate::ssrf::SsrfError;

async fn check_destination(state: &AppState, url: &Url) -> Result<(), ApiError> {
    state.guard.check_destination(url).await.map_err(|e| {
        let code = match e {
            SsrfError::NotHttps => "https_required",
            SsrfError::Unresolved(..) => "unresolvable_host",
            _ => "forbidden_destination",
        };
        ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, code, "url", e.to_string())
    })
}

pub async fn create(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let body = read_body(body, state.config.max_payload_bytes).await?;
    let value: Value = from_body(&body)?;
    let (spec, url) = EndpointSpec::from_json(&value)?;
    check_destination(&state, &url).await?;
    let now = now_rfc3339();
    let ep = Endpoint {
        id: format!("ep_{}", uuid::Uuid::now_v7().simple()),
        spec,
        secret: generate_secret(),
        created_at: now.clone(),
        updated_at: now,
    };
    state.store.put_endpoint(&ws.uuid, &ep).await?;
    Ok(created(ep))
}

pub async fn list(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    q: RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let params = ListParams::from_query(&q)?;
    let eps = state.store.endpoints(&ws.uuid).await?;
    Ok(Json(paginate(eps, |e| e.id.clone(), &params)?))
}

pub async fn show(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let ep = state
        .store
        .endpoint(&ws.uuid, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    Ok(Json(ep))
}

pub async fn update(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let body = read_body(body, state.config.max_payload_bytes).await?;
    let patch: Value = from_body(&body)?;
    let mut ep = state
        .store
        .endpoint(&ws.uuid, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    let (spec, url) = ep.spec.patched(&patch)?;
    if spec.url != ep.spec.url {
        check_destination(&state, &url).await?;
    }
    ep.spec = spec;
    ep.updated_at = now_rfc3339();
    state.store.put_endpoint(&ws.uuid, &ep).await?;
    let _ = state
        .router
        .cast(RouterMsg::EndpointChanged((ws.uuid.clone(), id)));
    Ok(Json(ep))
}

pub async fn remove(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.store.delete_endpoint(&ws.uuid, &id).await? {
        return Err(ApiError::not_found("endpoint"));
    }
    let _ = state
        .router
        .cast(RouterMsg::EndpointChanged((ws.uuid.clone(), id)));
    Ok(StatusCode::NO_CONTENT)
}
