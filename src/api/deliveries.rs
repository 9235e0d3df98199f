//! `GET /v1/deliveries` (filters and cursor) and `GET /v1/deliveries/{id}` (with attempts).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::DateTime;
use serde_json::Value;

use super::views::{DeliveryDetail, Retried};
use super::{ApiError, AppState, ListParams, ListQuery, Query, Tenant, Window};
use crate::delivery::{DeliveryId, Status};
use crate::store::DeliveryFilter;

/// `GET /v1/deliveries` query.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryQuery {
    /// One endpoint's deliveries.
    pub endpoint_id: Option<String>,
    /// One event's deliveries.
    pub event_id: Option<String>,
    /// Deliveries of events of this type (`member:created`).
    pub event_type: Option<String>,
    #[schemars(with = "Option<crate::delivery::Status>")]
    pub status: Option<String>,
    #[serde(flatten)]
    pub window: Window,
    #[serde(flatten)]
    pub page: ListQuery,
}

/// An RFC 3339 query parameter as unix ms.
pub fn time_param(value: Option<&str>, name: &str) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.timestamp_millis())
                .map_err(|_| {
                    ApiError::field(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        name,
                        "must be an RFC 3339 time",
                    )
                })
        })
        .transpose()
}

pub async fn list(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Query(q): Query<DeliveryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let params = ListParams::from_query(&q.page)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "status",
                    "must be pending, retrying, succeeded or failed",
                )
            })
        })
        .transpose()?;
    let filter = DeliveryFilter {
        since_ms: time_param(q.window.since.as_deref(), "since")?,
        until_ms: time_param(q.window.until.as_deref(), "until")?,
        endpoint_id: q.endpoint_id,
        event_id: q.event_id,
        event_type: q.event_type,
        status,
    };
    let page = state
        .store
        .list_deliveries(&ws.uuid, &filter, params.limit, params.cursor.as_deref())
        .await?;
    Ok(Json(page))
}

pub async fn show(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let view = state
        .store
        .delivery(&ws.uuid, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok(Json(DeliveryDetail {
        payload: serde_json::from_str::<Value>(&view.delivery.body).unwrap_or(Value::Null),
        delivery: view.delivery,
        attempts: view.attempts,
    }))
}

/// `POST /v1/deliveries/{id}/retry`: one more attempt of a finished delivery, now: ahead of
/// the endpoint's queue and whatever its breaker says (the attempt is the breaker's probe),
/// within its rate limit.
pub async fn retry(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if state.store.delivery(&ws.uuid, &id).await?.is_none() {
        return Err(ApiError::not_found("delivery"));
    }
    let delivery: DeliveryId = id.parse().map_err(|_| ApiError::not_found("delivery"))?;
    if !state
        .store
        .requeue(
            &ws.uuid,
            delivery,
            &[Status::Failed, Status::Succeeded],
            true,
        )
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "delivery_in_progress",
            "the delivery is still pending or retrying; it will be attempted on its schedule",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Retried {
            id,
            status: Status::Pending,
        }),
    ))
}
