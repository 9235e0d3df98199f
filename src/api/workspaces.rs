//! The admin routes: workspaces (create, list, read, delete), their API keys (add, list,
//! revoke), and `GET /v1/cluster` (nodes, their partitions, lag per partition).
//!
//! Revoking a key (or deleting its workspace) answers only once no node trusts the key any
//! more: see `Store::evict_keys`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::views::{CreatedKey, CreatedWorkspace};
use super::{
    Admin, ApiError, AppState, ListParams, ListQuery, Query, created, paginate, read_json,
};
use crate::delivery::now_rfc3339;
use crate::dispatch::RouterMsg;
use crate::store::Page;
use crate::workspace::{ApiKeyInfo, NewWorkspace, Workspace};

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
    Ok(created(CreatedWorkspace {
        uuid: ws.uuid,
        name: ws.name,
        created_at: ws.created_at,
        api_key: key,
    }))
}

/// `GET /v1/workspaces`: newest first.
pub async fn list(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<Workspace>>, ApiError> {
    let params = ListParams::from_query(&q)?;
    let key = |w: &Workspace| format!("{}|{}", w.created_at, w.uuid);
    let mut all = state.store.workspaces().await?;
    all.sort_by_key(|w| std::cmp::Reverse(key(w)));
    Ok(Json(paginate("workspaces", all, key, &params)?))
}

async fn load(state: &AppState, uuid: &str) -> Result<Workspace, ApiError> {
    state
        .store
        .workspace(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace"))
}

pub async fn show(
    _: Admin,
    State(state): State<AppState>,
    Path(uuid): Path<String>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(load(&state, &uuid).await?))
}

/// `DELETE /v1/workspaces/{uuid}`: its keys stop working on every node before the answer;
/// its endpoints' owners learn that they are gone, so its queued deliveries fail instead of
/// being sent.
pub async fn remove(
    _: Admin,
    State(state): State<AppState>,
    Path(uuid): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (endpoints, hashes) = state
        .store
        .delete_workspace(&uuid)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace"))?;
    state
        .store
        .evict_keys(&state.keys, hashes, Some(uuid.clone()))
        .await?;
    for ep in endpoints {
        let _ = state
            .router
            .cast(RouterMsg::EndpointChanged((uuid.clone(), ep.clone())));
        if let Err(e) = state.store.publish_change(&uuid, &ep).await {
            tracing::warn!(endpoint = %ep, error = %e, "cannot publish a deleted endpoint; its owner notices within 30 s");
        }
    }
    tracing::info!(workspace = %uuid, "workspace deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/workspaces/{uuid}/api-keys`: ids, prefixes and times, never a key.
pub async fn keys(
    _: Admin,
    State(state): State<AppState>,
    Path(uuid): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<ApiKeyInfo>>, ApiError> {
    let params = ListParams::from_query(&q)?;
    let keys = state
        .store
        .api_keys(&uuid)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace"))?;
    Ok(Json(paginate("api-keys", keys, |k| k.id.clone(), &params)?))
}

/// `DELETE /v1/workspaces/{uuid}/api-keys/{id}`: refused by every node once this answers.
pub async fn revoke_key(
    _: Admin,
    State(state): State<AppState>,
    Path((uuid, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let hash = state
        .store
        .revoke_api_key(&uuid, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("api key"))?;
    state
        .store
        .evict_keys(&state.keys, vec![hash], None)
        .await?;
    tracing::info!(workspace = %uuid, key = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_key(
    _: Admin,
    State(state): State<AppState>,
    Path(uuid): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    match state.store.add_api_key(&uuid).await? {
        Some((id, api_key)) => Ok(created(CreatedKey { id, api_key })),
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
