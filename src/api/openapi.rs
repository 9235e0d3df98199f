//! The route table and the OpenAPI 3.1 document made from it.
//!
//! Every route is declared once, in [`api_routes!`], with the Rust types of its body, its query
//! and its answer: that declaration both adds the route to the router and describes it in
//! `/openapi.json`, so the document cannot miss a route or list one that does not exist. The
//! schemas are generated from those types by `schemars` (JSON Schema 2020-12, which OpenAPI 3.1
//! uses as is): the same types the handlers parse with and answer with, so the document follows
//! the code. Request schemas describe what is accepted (serde's deserialising view: fields with
//! defaults are optional), response schemas what is sent; where one type's two views differ, the
//! answer's schema is named `<Type>View`.

use std::any::TypeId;

use axum::Router;
use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::transform::{ReplaceBoolSchemas, Transform};
use serde_json::{Map, Value, json};

use super::views::{self, Nothing};
use super::{
    AppState, ListQuery, deliveries, endpoints, event_types, events, rules, transforms, workspaces,
};
use crate::event::catalogue::EventType;
use crate::store::Page;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Public,
    Admin,
    Workspace,
}

macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:path, $auth:ident, body: $body:ty, query: $query:ty,
        $ok:literal $resp:ty, $summary:literal;)*) => {
        /// Adds every documented route to the router.
        pub fn routes(router: Router<AppState>) -> Router<AppState> {
            router $(.route($path, axum::routing::$method($handler)))*
        }

        /// Every route: method and path.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// The OpenAPI 3.1 document of every route.
        pub fn document() -> Value {
            let mut doc = Doc::new();
            $(doc.route::<$body, $query, $resp>(stringify!($method), $path, Auth::$auth, $ok, $summary);)*
            doc.finish()
        }
    };
}

api_routes! {
    get "/healthz" => super::healthz, Public, body: Nothing, query: Nothing, 200 views::Alive, "The process is up.";
    get "/readyz" => super::readyz, Public, body: Nothing, query: Nothing, 200 views::Ready, "The store is reachable; partitions and actors of this node.";
    get "/metrics" => super::metrics, Public, body: Nothing, query: Nothing, 200 String, "Prometheus metrics (text).";
    get "/openapi.json" => super::openapi_json, Public, body: Nothing, query: Nothing, 200 Value, "This document.";
    get "/v1/cluster" => workspaces::cluster, Admin, body: Nothing, query: Nothing, 200 Value, "Nodes, partitions and lag.";
    get "/v1/workspaces" => workspaces::list, Admin, body: Nothing, query: ListQuery, 200 Page<crate::workspace::Workspace>, "List workspaces, newest first.";
    post "/v1/workspaces" => workspaces::create, Admin, body: crate::workspace::NewWorkspace, query: Nothing, 201 views::CreatedWorkspace, "Create a workspace and its first API key.";
    get "/v1/workspaces/{uuid}" => workspaces::show, Admin, body: Nothing, query: Nothing, 200 crate::workspace::Workspace, "A workspace.";
    delete "/v1/workspaces/{uuid}" => workspaces::remove, Admin, body: Nothing, query: Nothing, 204 Nothing, "Delete a workspace and everything of it; its keys stop working at once, its deliveries stop.";
    get "/v1/workspaces/{uuid}/api-keys" => workspaces::keys, Admin, body: Nothing, query: ListQuery, 200 Page<crate::workspace::ApiKeyInfo>, "List a workspace's API keys (never the keys themselves).";
    post "/v1/workspaces/{uuid}/api-keys" => workspaces::add_key, Admin, body: Nothing, query: Nothing, 201 views::CreatedKey, "Add an API key to a workspace.";
    delete "/v1/workspaces/{uuid}/api-keys/{id}" => workspaces::revoke_key, Admin, body: Nothing, query: Nothing, 204 Nothing, "Revoke an API key: refused at once by every node.";
    get "/v1/endpoints" => endpoints::list, Workspace, body: Nothing, query: ListQuery, 200 Page<views::EndpointView>, "List endpoints with their health, newest first.";
    post "/v1/endpoints" => endpoints::create, Workspace, body: crate::endpoint::EndpointSpec, query: Nothing, 201 views::CreatedEndpoint, "Create an endpoint (the answer carries its secret, once).";
    get "/v1/endpoints/{id}" => endpoints::show, Workspace, body: Nothing, query: Nothing, 200 views::EndpointView, "An endpoint and its health.";
    patch "/v1/endpoints/{id}" => endpoints::update, Workspace, body: views::Patch, query: Nothing, 200 views::EndpointView, "Change an endpoint (top-level keys replace; null resets).";
    delete "/v1/endpoints/{id}" => endpoints::remove, Workspace, body: Nothing, query: endpoints::DeleteQuery, 204 Nothing, "Delete an endpoint.";
    get "/v1/endpoints/{id}/secret" => endpoints::secret, Workspace, body: Nothing, query: Nothing, 200 views::Secrets, "The signing secret, and those still in their grace period.";
    post "/v1/endpoints/{id}/secret/rotate" => endpoints::rotate_secret, Workspace, body: endpoints::Rotate, query: Nothing, 200 views::Rotated, "Rotate the signing secret.";
    post "/v1/endpoints/{id}/replay" => endpoints::replay, Workspace, body: endpoints::Replay, query: Nothing, 202 views::Replayed, "Re-send the failed deliveries of a window.";
    post "/v1/endpoints/{id}/test" => event_types::test_send, Workspace, body: event_types::TestSend, query: Nothing, 202 views::TestSent, "Send an event type's example to this endpoint alone, signed and logged (`test: true`).";
    get "/v1/event-rules" => rules::list, Workspace, body: Nothing, query: ListQuery, 200 Page<crate::rule::Rule>, "List event rules.";
    post "/v1/event-rules" => rules::create, Workspace, body: crate::rule::RuleSpec, query: Nothing, 201 crate::rule::Rule, "Create an event rule or a routine.";
    get "/v1/event-rules/{id}" => rules::show, Workspace, body: Nothing, query: Nothing, 200 views::RuleView, "An event rule (a routine shows its next fire times).";
    patch "/v1/event-rules/{id}" => rules::update, Workspace, body: views::Patch, query: Nothing, 200 crate::rule::Rule, "Change an event rule.";
    delete "/v1/event-rules/{id}" => rules::remove, Workspace, body: Nothing, query: Nothing, 204 Nothing, "Delete an event rule.";
    get "/v1/events" => events::list, Workspace, body: Nothing, query: events::EventQuery, 200 Page<views::EventSummary>, "The event log, newest first.";
    post "/v1/events" => events::ingest_one, Workspace, body: views::IncomingEvent, query: Nothing, 202 views::Accepted, "Publish an event.";
    get "/v1/events/{id}" => events::show, Workspace, body: Nothing, query: Nothing, 200 views::EventDetail, "An event as received, and its deliveries.";
    post "/v1/events/batch" => events::ingest_batch, Workspace, body: views::EventBatch, query: Nothing, 202 views::AcceptedBatch, "Publish events in order.";
    get "/v1/event-types" => event_types::list, Workspace, body: Nothing, query: Nothing, 200 Page<EventType>, "Every event type: schema and example.";
    get "/v1/deliveries" => deliveries::list, Workspace, body: Nothing, query: deliveries::DeliveryQuery, 200 Page<crate::delivery::Delivery>, "The delivery log, newest first.";
    get "/v1/deliveries/{id}" => deliveries::show, Workspace, body: Nothing, query: Nothing, 200 views::DeliveryDetail, "A delivery with its attempts.";
    post "/v1/deliveries/{id}/retry" => deliveries::retry, Workspace, body: Nothing, query: Nothing, 202 views::Retried, "One more attempt of a finished delivery.";
    post "/v1/transforms/preview" => transforms::preview, Workspace, body: transforms::Preview, query: Nothing, 200 views::Preview, "What a transform makes of an event.";
}

/// Routes whose requests carry an `Idempotency-Key`.
const IDEMPOTENT: &[&str] = &["/v1/events", "/v1/events/batch"];

fn is_nothing<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<Nothing>()
}

/// The document as it is built: one schema generator for what requests carry, one for what
/// answers carry.
struct Doc {
    requests: SchemaGenerator,
    responses: SchemaGenerator,
    paths: Map<String, Value>,
}

/// JSON Schema 2020-12 under `components/schemas`; `true` schemas (any JSON) written `{}`,
/// which every OpenAPI tool reads.
fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
        s.transforms.push(Box::new(any_as_object()));
    })
}

fn any_as_object() -> ReplaceBoolSchemas {
    let mut t = ReplaceBoolSchemas::default();
    t.skip_additional_properties = true;
    t
}

/// The schema of `T` in `generator`, a reference when it has a name.
fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    let mut schema = generator.subschema_for::<T>();
    any_as_object().transform(&mut schema);
    schema.to_value()
}

impl Doc {
    fn new() -> Doc {
        Doc {
            requests: settings().for_deserialize().into_generator(),
            responses: settings().for_serialize().into_generator(),
            paths: Map::new(),
        }
    }

    fn route<B, Q, R>(&mut self, method: &str, path: &str, auth: Auth, ok: u16, summary: &str)
    where
        B: JsonSchema + 'static,
        Q: JsonSchema + 'static,
        R: JsonSchema + 'static,
    {
        let mut params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !is_nothing::<Q>() {
            params.extend(query_params(
                &self.requests.root_schema_for::<Q>().to_value(),
            ));
        }
        if method == "post" && IDEMPOTENT.contains(&path) {
            params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Makes a retried request safe: the same key with the same events gets the first answer and writes nothing; with other events it is a 409 `idempotency_key_reused`.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}));
        }
        let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let mut responses = Map::new();
        let success = if is_nothing::<R>() {
            json!({"description": "done"})
        } else if path == "/metrics" {
            json!({"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}})
        } else {
            let schema = schema::<R>(&mut self.responses);
            json!({"description": "success", "content": {"application/json": {"schema": schema}}})
        };
        responses.insert(ok.to_string(), success);
        if auth != Auth::Public {
            responses.insert(
                "400".into(),
                error("a malformed request (the field at fault is named)"),
            );
            responses.insert("401".into(), error("no valid token"));
            responses.insert(
                "404".into(),
                error("no such object (or one of another workspace)"),
            );
            responses.insert(
                "503".into(),
                error("the store is unavailable or full (`Retry-After`)"),
            );
        }
        responses.insert(
            "405".into(),
            error("another method (the Allow header lists this route's)"),
        );
        if !is_nothing::<B>() {
            responses.insert("408".into(), error("the body did not arrive in time"));
            responses.insert("413".into(), error("the body is too large"));
            responses.insert("422".into(), error("an invalid field (named)"));
        }
        let conflict = match (method, path) {
            ("delete", "/v1/endpoints/{id}") => {
                Some("`endpoint_in_use`: a rule sends to it (see `force`)")
            }
            ("post", "/v1/endpoints/{id}/test") => Some("`endpoint_disabled`"),
            ("post", "/v1/deliveries/{id}/retry") => {
                Some("`delivery_in_progress`: it is still pending or retrying")
            }
            _ => None,
        };
        if let Some(why) = conflict {
            responses.insert("409".into(), error(why));
        }
        if IDEMPOTENT.contains(&path) && method == "post" {
            responses.insert(
                "409".into(),
                error("the Idempotency-Key was used with other events"),
            );
            responses.insert(
                "429".into(),
                error("overloaded: a partition's backlog is over its bound (`Retry-After`)"),
            );
        }
        let mut op = json!({
            "operationId": operation_id(method, path),
            "summary": summary,
            "parameters": params,
            "responses": responses,
            "security": match auth {
                Auth::Public => json!([]),
                Auth::Admin => json!([{"adminToken": []}]),
                Auth::Workspace => json!([{"apiKey": []}]),
            },
        });
        if !is_nothing::<B>() {
            let schema = schema::<B>(&mut self.requests);
            let required =
                path != "/v1/endpoints/{id}/secret/rotate" && path != "/v1/endpoints/{id}/test";
            op["requestBody"] =
                json!({"required": required, "content": {"application/json": {"schema": schema}}});
        }
        let entry = self
            .paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}));
        entry[method] = op;
    }

    /// The document: answers' schemas that differ from the request schema of the same name
    /// are renamed `<Name>View`.
    fn finish(mut self) -> Value {
        let mut schemas = self.requests.take_definitions(true);
        let answers = self.responses.take_definitions(true);
        let renamed: Vec<String> = answers
            .iter()
            .filter(|(name, schema)| schemas.get(*name).is_some_and(|s| s != *schema))
            .map(|(name, _)| name.clone())
            .collect();
        let rename = |v: Value| -> Value {
            if renamed.is_empty() {
                return v;
            }
            let mut text = v.to_string();
            for name in &renamed {
                text = text.replace(
                    &format!("\"#/components/schemas/{name}\""),
                    &format!("\"#/components/schemas/{name}View\""),
                );
            }
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        for (name, schema) in answers.clone() {
            let schema = rename(schema);
            if renamed.contains(&name) {
                schemas.insert(format!("{name}View"), schema);
            } else {
                schemas.entry(name).or_insert(schema);
            }
        }
        for ops in self.paths.values_mut() {
            for op in ops.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    for r in responses.values_mut() {
                        if let Some(s) = r.pointer_mut("/content/application~1json/schema") {
                            *s = rename(s.take());
                        }
                    }
                }
            }
        }
        schemas.insert(
            "Error".into(),
            json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                "required": ["code", "message"], "properties": {"code": {"type": "string"},
                "message": {"type": "string"}, "field": {"type": "string"}}}}}),
        );
        json!({
            "openapi": "3.1.0",
            "info": {"title": "Switchyard", "version": env!("CARGO_PKG_VERSION"),
                "description": "A webhook dispatcher cluster. The contract as a user reads it: docs/api.md."},
            "paths": self.paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "A workspace API key"},
                    "adminToken": {"type": "http", "scheme": "bearer", "description": "The admin token"}},
            },
        })
    }
}

/// `get /v1/endpoints/{id}/secret` → `get_endpoints_id_secret`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for seg in path
        .trim_start_matches("/v1")
        .split('/')
        .filter(|s| !s.is_empty())
    {
        id.push('_');
        id.push_str(
            &seg.trim_matches(|c| c == '{' || c == '}')
                .replace(['-', '.'], "_"),
        );
    }
    id
}

/// The query parameters of a query type's schema: one per property.
fn query_params(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, s)| {
                    let mut s = s.clone();
                    let description = s
                        .as_object_mut()
                        .and_then(|o| o.remove("description"))
                        .unwrap_or(Value::Null);
                    // An optional parameter is absent, never null.
                    if let Some(Value::Array(any)) = s.get("anyOf")
                        && let [a, b] = any.as_slice()
                    {
                        let null = json!({"type": "null"});
                        if *b == null {
                            s = a.clone();
                        } else if *a == null {
                            s = b.clone();
                        }
                    }
                    if let Some(Value::Array(types)) = s.get_mut("type") {
                        types.retain(|t| t != "null");
                        if types.len() == 1 {
                            let t = types[0].clone();
                            s["type"] = t;
                        }
                    }
                    let mut p = json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": s});
                    if !description.is_null() {
                        p["description"] = description;
                    }
                    p
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_an_operation_id_and_typed_answers() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = std::collections::HashSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                assert!(
                    ids.insert(op["operationId"].as_str().unwrap().to_string()),
                    "{method} {path}: operation ids are unique"
                );
            }
        }
        let list = &doc["paths"]["/v1/deliveries"]["get"];
        let names: Vec<&str> = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for q in [
            "endpointId",
            "eventId",
            "eventType",
            "status",
            "since",
            "until",
            "limit",
            "cursor",
        ] {
            assert!(names.contains(&q), "{q} in {names:?}");
        }
        let ingest = &doc["paths"]["/v1/events"]["post"]["parameters"];
        assert!(
            ingest
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
        );
        let ok = &doc["paths"]["/v1/endpoints/{id}"]["get"]["responses"]["200"];
        assert!(
            ok["content"]["application/json"]["schema"]["$ref"].is_string(),
            "{ok}"
        );
    }
}
