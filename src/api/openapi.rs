//! The route table and the OpenAPI 3 document made from it.
//!
//! Every route is declared once, in [`api_routes!`]: that declaration both adds it to the
//! router and describes it in `/openapi.json`, so the document cannot miss a route or list one
//! that does not exist. Request bodies point at the schemas below, which follow the validators
//! (`endpoint::EndpointSpec`, `rule::RuleSpec`, `event::Event`).

use axum::Router;
use serde_json::{Value, json};

use super::{AppState, deliveries, endpoints, events, rules, transforms, workspaces};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Public,
    Admin,
    Workspace,
}

/// One route as documented.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    /// The schema of the JSON body, when the route takes one.
    pub body: Option<&'static str>,
    /// The success status.
    pub ok: u16,
}

macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:path, $auth:ident, $body:expr, $ok:literal, $summary:literal;)*) => {
        /// Adds every documented route to the router.
        pub fn routes(router: Router<AppState>) -> Router<AppState> {
            router $(.route($path, axum::routing::$method($handler)))*
        }

        /// Every route, as documented in `/openapi.json`.
        pub const ROUTES: &[RouteDoc] = &[$(RouteDoc {
            method: stringify!($method), path: $path, summary: $summary, auth: Auth::$auth, body: $body, ok: $ok,
        }),*];
    };
}

api_routes! {
    get "/healthz" => super::healthz, Public, None, 200, "The process is up.";
    get "/readyz" => super::readyz, Public, None, 200, "The store is reachable; partitions and actors of this node.";
    get "/metrics" => super::metrics, Public, None, 200, "Prometheus metrics (text).";
    get "/openapi.json" => super::openapi_json, Public, None, 200, "This document.";
    get "/v1/cluster" => workspaces::cluster, Admin, None, 200, "Nodes, partitions and lag.";
    post "/v1/workspaces" => workspaces::create, Admin, Some("NewWorkspace"), 201, "Create a workspace and its first API key.";
    post "/v1/workspaces/{uuid}/api-keys" => workspaces::add_key, Admin, None, 201, "Add an API key to a workspace.";
    get "/v1/endpoints" => endpoints::list, Workspace, None, 200, "List endpoints, newest first.";
    post "/v1/endpoints" => endpoints::create, Workspace, Some("EndpointSpec"), 201, "Create an endpoint.";
    get "/v1/endpoints/{id}" => endpoints::show, Workspace, None, 200, "An endpoint and its health.";
    patch "/v1/endpoints/{id}" => endpoints::update, Workspace, Some("Patch"), 200, "Change an endpoint (top-level keys replace; null resets).";
    delete "/v1/endpoints/{id}" => endpoints::remove, Workspace, None, 204, "Delete an endpoint.";
    get "/v1/endpoints/{id}/secret" => endpoints::secret, Workspace, None, 200, "The signing secret, and those still in their grace period.";
    post "/v1/endpoints/{id}/secret/rotate" => endpoints::rotate_secret, Workspace, Some("Rotate"), 200, "Rotate the signing secret.";
    post "/v1/endpoints/{id}/replay" => endpoints::replay, Workspace, Some("Replay"), 202, "Re-send the failed deliveries of a window.";
    get "/v1/event-rules" => rules::list, Workspace, None, 200, "List event rules.";
    post "/v1/event-rules" => rules::create, Workspace, Some("RuleSpec"), 201, "Create an event rule or a routine.";
    get "/v1/event-rules/{id}" => rules::show, Workspace, None, 200, "An event rule (a routine shows its next fire times).";
    patch "/v1/event-rules/{id}" => rules::update, Workspace, Some("Patch"), 200, "Change an event rule.";
    delete "/v1/event-rules/{id}" => rules::remove, Workspace, None, 204, "Delete an event rule.";
    post "/v1/events" => events::ingest_one, Workspace, Some("Event"), 202, "Publish an event.";
    post "/v1/events/batch" => events::ingest_batch, Workspace, Some("EventBatch"), 202, "Publish events in order.";
    get "/v1/deliveries" => deliveries::list, Workspace, None, 200, "The delivery log, newest first.";
    get "/v1/deliveries/{id}" => deliveries::show, Workspace, None, 200, "A delivery with its attempts.";
    post "/v1/deliveries/{id}/retry" => deliveries::retry, Workspace, None, 202, "One more attempt of a finished delivery.";
    post "/v1/transforms/preview" => transforms::preview, Workspace, Some("TransformPreview"), 200, "What a transform makes of an event.";
}

fn schemas() -> Value {
    let rate = json!({"type": "object", "required": ["perSecond"], "additionalProperties": false,
        "properties": {"perSecond": {"type": "integer", "minimum": 1}, "burst": {"type": "integer", "minimum": 1}}});
    let retry = json!({"type": "object", "additionalProperties": false, "properties": {
        "maxAttempts": {"type": "integer", "minimum": 1, "maximum": 100}, "initialDelayMs": {"type": "integer", "minimum": 0},
        "multiplier": {"type": "number", "minimum": 1, "maximum": 10}, "maxDelayMs": {"type": "integer", "minimum": 0}}});
    let transform = json!({"type": "object", "additionalProperties": false, "properties": {
        "preset": {"type": "string", "enum": ["slack", "discord"]}, "text": {"type": "string"}, "template": {"type": "string"}}});
    let condition = json!({"type": "object", "description": "all / any / not, or a leaf {field, op, value}; ops: eq ne in contains exists gt gte lt lte prefix"});
    json!({
        "NewWorkspace": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200}}},
        "EndpointSpec": {"type": "object", "required": ["url"], "additionalProperties": false, "properties": {
            "url": {"type": "string", "format": "uri"}, "description": {"type": "string"}, "rateLimit": rate,
            "ordering": {"type": "string", "enum": ["strict", "unordered"]}, "maxInFlight": {"type": "integer", "minimum": 1, "maximum": 1000},
            "retry": retry, "timeoutMs": {"type": "integer", "minimum": 1, "maximum": 300000},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}}, "enabled": {"type": "boolean"},
            "orderingKey": {"type": "string", "description": "a dotted path into the event (member.id): strict order per value"},
            "transform": transform.clone()}},
        "RuleSpec": {"type": "object", "required": ["name", "actions"], "additionalProperties": false, "properties": {
            "name": {"type": "string"}, "events": {"type": "array", "items": {"type": "string"}}, "conditions": condition,
            "actions": {"type": "array", "items": {"type": "object", "required": ["type", "endpointId"],
                "properties": {"type": {"type": "string", "enum": ["webhook"]}, "endpointId": {"type": "string"}}}},
            "enabled": {"type": "boolean"},
            "schedule": {"type": "object", "required": ["cron"], "properties": {"cron": {"type": "string"}, "timezone": {"type": "string"},
                "catchUp": {"type": "string", "enum": ["latest", "none"]}}},
            "payload": {"type": "object"}}},
        "Event": {"type": "object", "required": ["event"], "properties": {"event": {"type": "string", "enum": crate::event::EVENT_TYPES}},
            "additionalProperties": true},
        "EventBatch": {"type": "object", "required": ["events"], "additionalProperties": false,
            "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1, "maxItems": 1000}}},
        "Patch": {"type": "object"},
        "TransformPreview": {"type": "object", "required": ["transform", "event"], "additionalProperties": false,
            "properties": {"transform": transform, "event": {"$ref": "#/components/schemas/Event"}}},
        "Rotate": {"type": "object", "additionalProperties": false, "properties": {"graceSeconds": {"type": "integer", "minimum": 0}}},
        "Replay": {"type": "object", "required": ["since"], "additionalProperties": false,
            "properties": {"since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"}}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
    })
}

/// The OpenAPI 3 document of every route in [`ROUTES`].
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let mut op = json!({
            "summary": r.summary,
            "parameters": params,
            "responses": {r.ok.to_string(): {"description": "success"}, "400": error, "401": error, "404": error, "422": error, "503": error},
        });
        match r.auth {
            Auth::Public => op["security"] = json!([]),
            Auth::Admin => op["security"] = json!([{"adminToken": []}]),
            Auth::Workspace => op["security"] = json!([{"apiKey": []}]),
        }
        if let Some(body) = r.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        paths.entry(r.path).or_insert_with(|| json!({}))[r.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Switchyard", "version": env!("CARGO_PKG_VERSION"), "description": "A webhook dispatcher cluster: the HTTP API of shared/api.md."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "A workspace API key"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "The admin token"}},
        },
    })
}
