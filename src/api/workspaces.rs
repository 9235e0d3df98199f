//! The admin routes: `POST /v1/workspaces`, `POST /v1/workspaces/{uuid}/api-keys`, and
//! `GET /v1/cluster` (nodes, their partitions, lag per partition).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde_json::json;

use super::{Admin, ApiError, AppState, created, read_json};
use crate::delivery::now_rfc3339;
use crate::workspace::{NewWorkspace, Workspace};

pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let new: NewWorkspace = read_json(&state, body).await?;
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

/// `GET /v1/cluster`: live nodes with their partitions, and per partition its owner, its log's
/// length, the creation time of its oldest unfinished delivery and how far it was read.
pub async fn cluster(
    _: Admin,
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    let crate::store::Store::Redis(redis) = &state.store else {
        let all: Vec<u32> = (0..state.store.partitions()).collect();
        return Ok(Json(
            json!({"store": "embedded", "nodes": [{"id": state.config.node_id, "partitions": all}],
            "partitions": [], "routinesLeader": state.config.node_id}),
        ));
    };
    let ttl = state.config.heartbeat_ms * 3;
    let nodes = redis.live_nodes(ttl).await?;
    let holders = redis.lease_holders().await?;
    let summaries = futures::future::try_join_all(
        (0..state.store.partitions()).map(|p| redis.partition_summary(p)),
    )
    .await?;
    let partitions: Vec<_> = holders
        .iter()
        .zip(summaries)
        .enumerate()
        .map(|(p, (holder, (length, checkpoint)))| {
            let owner = holder
                .as_deref()
                .and_then(|h| h.rsplit_once(':'))
                .map(|(node, _)| node.to_string());
            let unfinished_since = (checkpoint.done_below.ms > 0)
                .then(|| crate::delivery::ms_rfc3339(checkpoint.done_below.ms as i64));
            json!({"partition": p, "owner": owner, "length": length,
                "oldestUnfinishedAt": unfinished_since, "readUpTo": checkpoint.read_upto.to_string()})
        })
        .collect();
    Ok(Json(
        json!({"store": "redis", "leaseMs": state.config.lease_ms, "heartbeatMs": state.config.heartbeat_ms,
        "nodes": nodes, "partitions": partitions, "routinesLeader": "every node: each tick is claimed once in the store"}),
    ))
}
