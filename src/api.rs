//! The HTTP API of `shared/api.md`, on axum.
//!
//! [`app`] builds the router from an [`AppState`], so tests can drive it without a socket.
//! Authentication is two extractors: [`Tenant`] (a workspace API key; every object route is
//! scoped by it, and another workspace's object is simply not found) and [`Admin`] (the admin
//! token, for workspace management only). Bodies are read with an explicit size limit and
//! parsed by the validators of each noun, so every refusal names its field.

mod deliveries;
mod endpoints;
mod error;
mod event_types;
mod events;
pub mod openapi;
mod rules;
pub mod server;
mod transforms;
pub mod views;
mod workspaces;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Json};
use ractor::ActorRef;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::RouterMsg;
use crate::ingest::cache::WorkspaceCache;
use crate::ssrf::Guard;
use crate::store::{Page, Store};
use crate::workspace::Workspace;
pub use error::ApiError;

/// Largest `limit` of a list.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 50;

/// Everything a handler may use.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub rules: Arc<WorkspaceCache>,
    pub guard: Arc<Guard>,
    pub router: ActorRef<RouterMsg>,
    pub config: Arc<Config>,
    /// Cancelled when the node shuts down: `/readyz` then answers 503.
    pub stopping: CancellationToken,
    /// The partitions this node owns (Redis clusters; `None` on a single embedded node).
    pub cluster: Option<Arc<crate::cluster::ClusterView>>,
    /// Every partition's backlog as this node knows it (`overload = "shed"`).
    pub backlog: Arc<crate::dispatch::Backlog>,
    /// API keys found valid lately.
    pub keys: Arc<crate::workspace::keys::KeyCache>,
    /// Ingest requests being planned and written at once at most (`max_concurrent_ingests`).
    pub ingests: Arc<tokio::sync::Semaphore>,
}

/// The API's routes.
pub fn app(state: AppState) -> Router {
    openapi::routes(Router::new())
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method (the Allow header lists those it takes)",
            )
        })
        .merge(crate::console::routes())
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn(server::limit_request_head))
        .with_state(state)
}

/// The document, made once: it is fixed for the binary's life.
static DOCUMENT: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(openapi::document);

async fn openapi_json() -> impl IntoResponse {
    Json(&*DOCUMENT)
}

async fn healthz() -> Json<views::Alive> {
    Json(views::Alive {
        status: "ok".into(),
    })
}

async fn readyz(State(state): State<AppState>) -> Result<Json<views::Ready>, ApiError> {
    if state.stopping.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the node is shutting down",
        ));
    }
    state.store.ping().await?;
    let owned = match &state.cluster {
        Some(view) => view.owned().len() as u32,
        None => state.store.partitions(),
    };
    let actors = ractor::call_t!(state.router, RouterMsg::CountActors, 1000).ok();
    Ok(Json(views::Ready {
        status: "ready".into(),
        node: state.config.node_id.clone(),
        store: state.store.backend().into(),
        partitions: state.store.partitions(),
        partitions_owned: owned,
        endpoint_actors: actors,
        dev_mode: state.config.dev,
    }))
}

async fn metrics() -> impl IntoResponse {
    let text = crate::telemetry::handle().render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is missing"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected `Authorization: Bearer <token>`"))
}

/// The workspace of the request's API key.
pub struct Tenant(pub Workspace);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if let Some(ws) = state.keys.get(token) {
            return Ok(Tenant(ws));
        }
        let since = state.keys.generation();
        match state.store.workspace_for_key(token).await? {
            Some(ws) => {
                state.keys.put(token, &ws, since);
                Ok(Tenant(ws))
            }
            None => Err(ApiError::unauthorized("the API key is not valid")),
        }
    }
}

/// The admin token was presented.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        let Some(expected) = &state.config.admin_token else {
            return Err(ApiError::unauthorized(
                "admin routes are disabled: no admin token is configured",
            ));
        };
        let same = token.len() == expected.len()
            && token
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("the admin token is not valid"))
        }
    }
}

/// Reads a body of at most `limit` bytes: 413 at once when its `Content-Length` says more
/// (nothing is read), 413 as soon as more arrives than it said or than the limit, and 408 when
/// it does not arrive within `body_timeout_secs` (a client trickling a body byte by byte would
/// otherwise hold a connection and its buffer forever).
pub async fn read_body(state: &AppState, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    // hyper reports a request's Content-Length as the body's exact size hint.
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    let timeout = std::time::Duration::from_secs(state.config.body_timeout_secs);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let limited = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if limited {
                Err(too_large())
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    "the body could not be read to its end",
                ))
            }
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} s",
                state.config.body_timeout_secs
            ),
        )),
    }
}

/// Reads a JSON body of at most `max_payload_bytes` into `T` (413 beyond; 400/422 naming the
/// field at fault otherwise).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_body(state, body, state.config.max_payload_bytes).await?;
    Ok(crate::invalid::from_body(&bytes)?)
}

/// `limit` and `cursor`, the query of every list route.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct ListQuery {
    /// How many, 1 to 1000 (default 50).
    #[schemars(with = "Option<u32>", range(min = 1, max = 1000))]
    pub limit: Option<String>,
    /// The `nextCursor` of the page before.
    pub cursor: Option<String>,
}

/// `since` and `until` of a list filtered by time.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct Window {
    /// RFC 3339: at or after.
    #[schemars(extend("format" = "date-time"))]
    pub since: Option<String>,
    /// RFC 3339: before.
    #[schemars(extend("format" = "date-time"))]
    pub until: Option<String>,
}

/// `limit` and `cursor` of a list route, checked.
pub struct ListParams {
    pub limit: usize,
    pub cursor: Option<String>,
}

impl ListParams {
    pub fn from_query(q: &ListQuery) -> Result<ListParams, ApiError> {
        let limit = match &q.limit {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::field(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        "limit",
                        format!("must be 1 to {MAX_LIMIT}"),
                    )
                })?,
        };
        Ok(ListParams {
            limit,
            cursor: q.cursor.clone().filter(|c| !c.is_empty()),
        })
    }
}

/// A route's query string as its query type `T` (whose fields are strings, checked by the
/// handler so that every refusal is our JSON error naming the parameter). Parameters `T` has
/// no field for are ignored.
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut map = serde_json::Map::new();
        for (k, v) in url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
            map.insert(k.into_owned(), serde_json::Value::String(v.into_owned()));
        }
        crate::invalid::from_value(&serde_json::Value::Object(map))
            .map(Query)
            .map_err(|e| {
                ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    &e.field,
                    e.message,
                )
            })
    }
}

/// Pages an in-memory list already sorted newest first by `key` (descending); `list` tags
/// its cursors so that they come back only to it.
pub fn paginate<T, K: Fn(&T) -> String>(
    list: &str,
    items: Vec<T>,
    key: K,
    params: &ListParams,
) -> Result<Page<T>, ApiError> {
    let after = params
        .cursor
        .as_deref()
        .map(|c| crate::store::cursor::decode(list, c, |_| true))
        .transpose()?;
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|i| after.as_ref().is_none_or(|a| key(i) < *a))
        .collect();
    let more = rest.len() > params.limit;
    rest.truncate(params.limit);
    let next_cursor = more
        .then(|| {
            rest.last()
                .map(|l| crate::store::cursor::encode(list, &key(l)))
        })
        .flatten();
    Ok(Page {
        data: rest,
        next_cursor,
    })
}

/// A 201 with a JSON body.
pub fn created<T: Serialize>(body: T) -> impl IntoResponse {
    (StatusCode::CREATED, Json(body))
}
