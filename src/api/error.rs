//! The one error type of the API: every refusal is `{"error": {"code", "message", "field"}}`.
//!
//! Client errors carry their status, code and field. Store outages become 503 (retry later:
//! nothing was written), anything else a plain 500 whose cause is logged once, here, and never
//! shown to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::invalid::Invalid;
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    Unavailable(String),
    /// The embedded store's disk is full: 503 `insufficient_storage` with `Retry-After`.
    InsufficientStorage(String),
    /// `overload = "shed"` and a partition's backlog is over the bound: 429 `overloaded`
    /// with `Retry-After`, nothing written.
    Overloaded(String),
    Internal(String),
}

/// The `Retry-After` of a 503 for a full disk, seconds.
const FULL_DISK_RETRY_SECS: u64 = 5;
/// The `Retry-After` of a 429 under a backlog, seconds: the backlog is measured every second.
const OVERLOAD_RETRY_SECS: u64 = 1;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn field(
        status: StatusCode,
        code: &'static str,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }
}

impl From<Invalid> for ApiError {
    /// Malformed JSON is a 400; well-formed JSON with a bad value a 422.
    fn from(e: Invalid) -> Self {
        let status = if e.code == "invalid_json" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        ApiError::Client {
            status,
            code: e.code,
            message: if e.field.is_empty() {
                e.message
            } else {
                format!("{}: {}", e.field, e.message)
            },
            field: Some(e.field).filter(|f| !f.is_empty()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            StoreError::InsufficientStorage(m) => ApiError::InsufficientStorage(m),
            StoreError::BadCursor => ApiError::field(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "cursor",
                "is not a cursor of this list",
            ),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Client {
                status,
                code,
                message,
                field,
            } => {
                let mut err = json!({"code": code, "message": message});
                if let Some(f) = field {
                    err["field"] = json!(f);
                }
                (status, json!({"error": err}))
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable; answering 503");
                let msg = "the store is unavailable; nothing was written, retry later";
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": {"code": "unavailable", "message": msg}}),
                )
            }
            ApiError::InsufficientStorage(cause) => {
                // Logged once by the store when it starts refusing writes, not per request.
                let body = json!({"error": {"code": "insufficient_storage",
                    "message": format!("nothing was written: {cause}; retry later")}});
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(
                        axum::http::header::RETRY_AFTER,
                        FULL_DISK_RETRY_SECS.to_string(),
                    )],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Overloaded(why) => {
                let body = json!({"error": {"code": "overloaded",
                    "message": format!("nothing was written: {why}; retry after the Retry-After seconds")}});
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(
                        axum::http::header::RETRY_AFTER,
                        OVERLOAD_RETRY_SECS.to_string(),
                    )],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": {"code": "internal", "message": "internal error"}}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
