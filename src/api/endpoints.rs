//! `/v1/endpoints`: create, list, show, update, delete.
//!
//! A URL is checked by the SSRF guard (scheme, literal addresses, and the name's current DNS
//! answer) before anything is written; the dispatcher checks it again at connect time.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::views::{
    CreatedEndpoint, EndpointHealth, EndpointView, Replayed, Rotated, endpoint_health,
};
use super::{
    ApiError, AppState, ListParams, ListQuery, Query, Tenant, created, paginate, read_body,
    read_json,
};
use crate::delivery::{now_rfc3339, rfc3339};
use crate::dispatch::RouterMsg;
use crate::dispatch::policy::DispatchPolicy;
use crate::endpoint::{Endpoint, EndpointSpec};
use crate::invalid::Invalid;
use crate::invalid::from_body;
use crate::rule::{Action, Rule};
use crate::signing::generate_secret;
use crate::ssrf::SsrfError;
use crate::store::Page;

async fn check_destination(state: &AppState, url: &Url) -> Result<(), ApiError> {
    state.guard.check_destination(url).await.map_err(|e| {
        if matches!(e, SsrfError::Forbidden(..) | SsrfError::ForbiddenName(_)) {
            crate::telemetry::ssrf_refused(&state.config.node_id, "save");
        }
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
    let value: Value = read_json(&state, body).await?;
    let (spec, url) = EndpointSpec::from_json(&value)?;
    check_destination(&state, &url).await?;
    let now = now_rfc3339();
    let ep = Endpoint {
        id: format!("ep_{}", uuid::Uuid::now_v7().simple()),
        spec,
        secret: generate_secret(),
        retired_secrets: Vec::new(),
        created_at: now.clone(),
        updated_at: now,
        compiled: Default::default(),
    };
    state.store.put_endpoint(&ws.uuid, &ep).await?;
    Ok(created(CreatedEndpoint {
        endpoint: EndpointView::of(&ep, None),
        secret: ep.secret.clone(),
    }))
}

pub async fn list(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<EndpointView>>, ApiError> {
    let params = ListParams::from_query(&q)?;
    let eps = state.store.endpoints(&ws.uuid).await?;
    let page = paginate("endpoints", eps, |e| e.id.clone(), &params)?;
    // One page's health and counts: bounded by `limit`, read concurrently.
    let healths = futures::future::try_join_all(
        page.data
            .iter()
            .map(|ep| health_of(&state, &ws.uuid, &ep.id)),
    )
    .await?;
    let data = page
        .data
        .iter()
        .zip(healths)
        .map(|(ep, h)| EndpointView::of(ep, Some(h)))
        .collect();
    Ok(Json(Page {
        data,
        next_cursor: page.next_cursor,
    }))
}

/// Tells this node's router and (through the store) every other node that an endpoint changed.
async fn changed(state: &AppState, ws: &str, id: &str) {
    let _ = state
        .router
        .cast(RouterMsg::EndpointChanged((ws.to_string(), id.to_string())));
    if let Err(e) = state.store.publish_change(ws, id).await {
        tracing::warn!(endpoint = id, error = %e, "cannot publish an endpoint change; its owner reloads it within 30 s");
    }
}

async fn load(state: &AppState, ws: &str, id: &str) -> Result<Endpoint, ApiError> {
    state
        .store
        .endpoint(ws, id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))
}

/// `GET /v1/endpoints/{id}`: the endpoint and its `health` (breaker, failure clock, last
/// success, the last hour's success rate, counts).
pub async fn show(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let ep = load(&state, &ws.uuid, &id).await?;
    Ok(Json(EndpointView::of(
        &ep,
        Some(health_of(&state, &ws.uuid, &id).await?),
    )))
}

/// An endpoint's health block: its owner's saved health and its counts, read together.
async fn health_of(state: &AppState, ws: &str, id: &str) -> Result<EndpointHealth, ApiError> {
    let (health, counts) =
        futures::future::try_join(state.store.health(ws, id), state.store.counts(ws, id)).await?;
    let policy = DispatchPolicy::from_config(&state.config);
    Ok(endpoint_health(&health, counts, &policy.breaker))
}

pub async fn update(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let patch: Value = read_json(&state, body).await?;
    let mut ep = load(&state, &ws.uuid, &id).await?;
    let (spec, url) = ep.spec.patched(&patch)?;
    if spec.url != ep.spec.url {
        check_destination(&state, &url).await?;
    }
    ep.spec = spec;
    ep.updated_at = now_rfc3339();
    state.store.put_endpoint(&ws.uuid, &ep).await?;
    changed(&state, &ws.uuid, &id).await;
    Ok(Json(EndpointView::of(&ep, None)))
}

/// `DELETE /v1/endpoints/{id}`: refused with 409 `endpoint_in_use` (naming the rules) while
/// a rule sends to it, so no rule is left pointing at nothing; with `?force=true` the endpoint
/// is first taken out of those rules' actions, and a rule left without any is disabled.
pub async fn remove(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let force = match q.force.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "force",
                "must be true or false",
            ));
        }
    };
    load(&state, &ws.uuid, &id).await?;
    let (_, rules) = state.store.rules(&ws.uuid).await?;
    let using: Vec<Rule> = rules
        .into_iter()
        .filter(|r| {
            r.spec
                .actions
                .iter()
                .any(|Action::Webhook { endpoint_id }| *endpoint_id == id)
        })
        .collect();
    if !using.is_empty() && !force {
        let names: Vec<String> = using
            .iter()
            .map(|r| format!("{} ({})", r.id, r.spec.name))
            .collect();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "endpoint_in_use",
            format!(
                "event rules {} send to this endpoint: take it out of their actions, or delete \
                 with ?force=true to do both",
                names.join(", ")
            ),
        ));
    }
    for mut rule in using {
        rule.spec
            .actions
            .retain(|Action::Webhook { endpoint_id }| *endpoint_id != id);
        if rule.spec.actions.is_empty() {
            rule.spec.enabled = false;
        }
        rule.updated_at = now_rfc3339();
        state.store.put_rule(&ws.uuid, &rule).await?;
    }
    if !state.store.delete_endpoint(&ws.uuid, &id).await? {
        return Err(ApiError::not_found("endpoint"));
    }
    changed(&state, &ws.uuid, &id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/endpoints/{id}/secret`: the signing secret and those still in their grace period.
pub async fn secret(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let ep = load(&state, &ws.uuid, &id).await?;
    Ok(Json(ep.secrets_view(chrono::Utc::now().timestamp_millis())))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotate {
    /// How long the old secret keeps signing (default: the node's `secret_grace_secs`), at
    /// most 30 days.
    #[schemars(range(max = 2592000))]
    grace_seconds: Option<u64>,
}

/// `POST /v1/endpoints/{id}/secret/rotate`: a new secret; the old one signs too for a grace period.
pub async fn rotate_secret(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let body = read_body(&state, body, state.config.max_payload_bytes).await?;
    let req: Rotate = if body.is_empty() {
        Rotate::default()
    } else {
        from_body(&body)?
    };
    let grace_s = req.grace_seconds.unwrap_or(state.config.secret_grace_secs);
    if grace_s > 30 * 24 * 3600 {
        return Err(Invalid::field("graceSeconds", "must be at most 30 days").into());
    }
    let mut ep = load(&state, &ws.uuid, &id).await?;
    let now = chrono::Utc::now();
    ep.rotate(
        generate_secret(),
        now.timestamp_millis(),
        grace_s as i64 * 1000,
    );
    ep.updated_at = rfc3339(now);
    state.store.put_endpoint(&ws.uuid, &ep).await?;
    changed(&state, &ws.uuid, &id).await;
    let grace_until = rfc3339(now + chrono::Duration::seconds(grace_s as i64));
    Ok(Json(Rotated {
        secret: ep.secret,
        previous_secret_valid_until: grace_until,
    }))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// RFC 3339: failed deliveries from this time on.
    #[schemars(extend("format" = "date-time"))]
    since: String,
    /// RFC 3339 (default: now).
    #[schemars(extend("format" = "date-time"))]
    until: Option<String>,
}

/// `DELETE /v1/endpoints/{id}` query.
#[derive(Deserialize, Default, schemars::JsonSchema)]
pub struct DeleteQuery {
    /// `true`: also take the endpoint out of the rules that send to it.
    #[schemars(with = "Option<bool>")]
    force: Option<String>,
}

fn parse_time(field: &str, v: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| Invalid::field(field, "must be an RFC 3339 time").into())
}

/// `POST /v1/endpoints/{id}/replay`: re-sends the endpoint's failed deliveries of a window (by
/// the time they failed), in their original order, each once.
pub async fn replay(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let req: Replay = read_json(&state, body).await?;
    let since = parse_time("since", &req.since)?;
    let until = req
        .until
        .as_deref()
        .map(|u| parse_time("until", u))
        .transpose()?;
    if until.is_some_and(|u| u < since) {
        return Err(Invalid::field("until", "must not be before since").into());
    }
    load(&state, &ws.uuid, &id).await?;
    let replayed = state.store.replay(&ws.uuid, &id, since, until).await?;
    Ok((StatusCode::ACCEPTED, Json(Replayed { replayed })))
}
