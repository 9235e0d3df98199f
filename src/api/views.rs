//! The shapes the API answers with (and the few request shapes no other module owns), as
//! types: handlers build them, and `openapi` generates the document's schemas from them, so
//! what is documented is what is sent.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::delivery::{Attempt, Delivery, Status as DeliveryStatus};
use crate::endpoint::health::HealthView;
use crate::endpoint::{Endpoint, EndpointSpec};
use crate::store::Counts;

/// No body, no query or no answer (a route's table entry says so with this type).
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct Nothing;

/// `GET /healthz`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Alive {
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub status: String,
    pub node: String,
    /// `redis` or `embedded`.
    pub store: String,
    pub partitions: u32,
    pub partitions_owned: u32,
    pub endpoint_actors: Option<usize>,
    /// `serve --dev`: loopback and http:// endpoints allowed.
    pub dev_mode: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedWorkspace {
    pub uuid: String,
    pub name: String,
    pub created_at: String,
    /// The workspace's first API key, shown this once.
    pub api_key: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    pub id: String,
    /// The key, shown this once.
    pub api_key: String,
}

/// An endpoint's health with its deliveries by status.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EndpointHealth {
    #[serde(flatten)]
    pub health: HealthView,
    pub deliveries: Counts,
}

/// An endpoint as every read shows it: never its secret.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub id: String,
    #[serde(flatten)]
    pub spec: EndpointSpec,
    pub created_at: String,
    pub updated_at: String,
    /// Breaker, last success and failure, the last hour's success rate, deliveries by
    /// status (reads and lists; absent in the answer to a create or an update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<EndpointHealth>,
}

impl EndpointView {
    pub fn of(ep: &Endpoint, health: Option<EndpointHealth>) -> EndpointView {
        EndpointView {
            id: ep.id.clone(),
            spec: ep.spec.clone(),
            created_at: ep.created_at.clone(),
            updated_at: ep.updated_at.clone(),
            health,
        }
    }
}

/// The answer to `POST /v1/endpoints`: the endpoint and its signing secret, this once.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    pub secret: String,
}

/// A PATCH body: the top-level keys to replace (`null` resets one to its default).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Patch(pub Map<String, Value>);

pub use crate::endpoint::{PreviousSecret, Secrets};

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    pub secret: String,
    pub previous_secret_valid_until: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Replayed {
    pub replayed: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSent {
    pub delivery_id: String,
    pub event_id: String,
    pub event_type: String,
}

/// An event as `POST /v1/events` takes it: `event` names its type, and the fields its family
/// requires come with it (`GET /v1/event-types` has each type's schema).
#[derive(Debug, Serialize, JsonSchema)]
pub struct IncomingEvent {
    #[schemars(schema_with = "client_event_type")]
    pub event: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

fn client_event_type(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": crate::event::EVENT_TYPES})
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EventBatch {
    #[schemars(length(min = 1, max = 1000))]
    pub events: Vec<IncomingEvent>,
}

/// What ingest made of one event.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Accepted {
    pub id: String,
    /// Its deliveries' ids, one per (rule, endpoint) it matched.
    pub deliveries: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AcceptedBatch {
    /// In the order of the request's events.
    pub results: Vec<Accepted>,
}

/// An event of the event log.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: String,
    /// How many deliveries it made.
    pub deliveries: usize,
}

/// One delivery of an event.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDelivery {
    pub id: String,
    pub endpoint_id: String,
    pub rule_id: u64,
    pub status: DeliveryStatus,
    pub test: bool,
}

/// `GET /v1/events/{id}`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDetail {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: String,
    /// The event as received (`null` once retention has removed every copy of it).
    pub payload: Value,
    pub deliveries: Vec<EventDelivery>,
}

/// `GET /v1/deliveries/{id}`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
    /// The body as sent (JSON), `null` when it was not JSON or did not render.
    pub payload: Value,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Retried {
    pub id: String,
    pub status: DeliveryStatus,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Preview {
    /// The body the transform renders.
    pub body: Value,
}

/// Builds an endpoint's health block.
pub fn endpoint_health(
    health: &crate::store::Health,
    counts: Counts,
    policy: &crate::endpoint::health::BreakerPolicy,
) -> EndpointHealth {
    EndpointHealth {
        health: health.view(policy, chrono::Utc::now().timestamp_millis()),
        deliveries: counts,
    }
}

/// `GET /v1/event-rules/{id}`: the rule, and a routine's next three fire times.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    #[serde(flatten)]
    pub rule: crate::rule::Rule,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_fire_times: Option<Vec<String>>,
}
