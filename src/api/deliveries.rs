//! `GET /v1/deliveries` (filters and cursor) and `GET /v1/deliveries/{id}` (with attempts).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::DateTime;
use serde_json::{Value, json};

use super::{ApiError, AppState, ListParams, RawQuery, Tenant};
use crate::delivery::{DeliveryId, Status};
use crate::store::DeliveryFilter;

fn time_param(q: &RawQuery, name: &str) -> Result<Option<i64>, ApiError> {
    q.get(name)
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
    q: RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let params = ListParams::from_query(&q)?;
    let status = q
        .get("status")
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
        endpoint_id: q.get("endpointId").cloned(),
        event_id: q.get("eventId").cloned(),
        event_type: q.get("eventType").cloned(),
        status,
        since_ms: time_param(&q, "since")?,
        until_ms: time_param(&q, "until")?,
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
    let mut body =
        serde_json::to_value(&view.delivery).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["attempts"] = json!(view.attempts);
    body["payload"] = serde_json::from_str::<Value>(&view.delivery.body).unwrap_or(Value::Null);
    Ok(Json(body))
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
        Json(json!({"id": id, "status": "pending"})),
    ))
}
