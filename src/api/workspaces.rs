//! `POST /v1/workspaces` and `POST /v1/workspaces/{uuid}/api-keys` (admin token).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde_json::json;

use super::{Admin, ApiError, AppState, created, read_body};
use crate::delivery::now_rfc3339;
use crate::invalid::from_body;
use crate::workspace::{NewWorkspace, Workspace};

pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let body = read_body(body, state.config.max_payload_bytes).await?;
    let new: NewWorkspace = from_body(&body)?;
    new.validate()?;
    let ws = Workspace {
        uuid: uuid::Uuid::new_v4().to_string(),
        name: new.name.trim().to_string(),
        created_at: now_rfc3339(),
    };
    let key = state.store.create_workspace(&ws).await?;
    Ok(created(
        json!({"uuid": ws.uuid, "name": ws.name, "createdAt": ws.created_at, "apiKey": key}),
    ))
}

pub async fn add_key(
    _: Admin,
    State(state): State<AppState>,
    Path(uuid): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    match state.store.add_api_key(&uuid).await? {
        Some(key) => Ok(created(json!({"apiKey": key}))),
        None => Err(ApiError::not_found("workspace")),
    }
}
