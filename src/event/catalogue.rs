//! The event-type catalogue (`GET /v1/event-types`): every type a client may send and every
//! type Switchyard emits, each with a JSON Schema of its body and an example.
//!
//! The schemas are generated (schemars) from the models that validate events
//! ([`super::DataRecordEvent`] and the others, through [`super::Event::parse`]) and, for the
//! types Switchyard emits, from the models their emitters serialise ([`RoutineTick`]), so a
//! schema cannot drift from what is accepted or sent. Every example passes that validation
//! (a test says so); `POST /v1/endpoints/{id}/test` sends them.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{CallEvent, ChatEvent, DataRecordEvent, EVENT_TYPES, MemberEvent, SYSTEM_EVENT_TYPES};
use crate::endpoint::health::HealthView;

/// One entry of the catalogue.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventType {
    /// `family:action`, as in an event's `event` field and a rule's `events`.
    pub name: String,
    pub family: String,
    pub description: String,
    /// Whether clients may send it (`POST /v1/events`), or only Switchyard emits it.
    #[serde(rename = "clientSent")]
    pub client_sent: bool,
    /// A JSON Schema (2020-12) of the event's body.
    pub schema: Value,
    /// An event of this type.
    pub example: Value,
}

/// The routine a `routine:tick` comes from.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutineRef {
    pub id: u64,
    pub uuid: String,
    pub name: String,
    pub schedule: TickSchedule,
    /// The tick's scheduled time (RFC 3339).
    pub scheduled_at: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TickSchedule {
    pub cron: String,
    pub timezone: String,
}

/// `routine:tick`: what a routine emits at each tick (`crate::routine::tick_event`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RoutineTick {
    pub routine: RoutineRef,
    /// The routine's `payload`, as saved.
    pub payload: Value,
}

/// The endpoint an operational event is about.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EndpointRef {
    pub id: String,
    pub url: String,
    pub description: String,
}

/// `switchyard:endpoint_disabled`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EndpointDisabled {
    pub endpoint: EndpointRef,
    pub reason: String,
    pub at: String,
}

/// `switchyard:endpoint_failing`: the endpoint's health when its breaker opened.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EndpointFailing {
    pub endpoint: EndpointRef,
    pub reason: String,
    pub at: String,
    #[serde(flatten)]
    pub health: HealthView,
}

fn description(name: &str) -> &'static str {
    match name {
        "data_record:created" => "A data record (a form submission, a contact) was created.",
        "data_record:updated" => "A data record's fields changed.",
        "data_record:deleted" => "A data record was deleted.",
        "member:created" => "A member joined the workspace.",
        "member:updated" => "A member's profile or labels changed.",
        "member:deleted" => "A member left or was removed.",
        "call:started" => "A call started.",
        "call:completed" => "A call ended (duration, participants, transcript).",
        "chat:started" => "A chat conversation started.",
        "chat:completed" => "A chat conversation ended.",
        "routine:tick" => "A routine's schedule fired (emitted by Switchyard).",
        "switchyard:endpoint_disabled" => {
            "An endpoint was disabled after failing too long (emitted by Switchyard)."
        }
        "switchyard:endpoint_failing" => {
            "An endpoint's circuit breaker opened (emitted by Switchyard)."
        }
        _ => "",
    }
}

/// The schema of `T` as the body of events of type `name`: `event` is that name.
fn schema_of<T: JsonSchema>(name: &str) -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), json!(name));
        let props = obj
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut with_event = Map::new();
        with_event.insert("event".into(), json!({"const": name}));
        with_event.extend(props);
        obj.insert("properties".into(), Value::Object(with_event));
        let mut required = vec![json!("event")];
        if let Some(Value::Array(r)) = obj.get("required") {
            required.extend(r.iter().cloned());
        }
        obj.insert("required".into(), Value::Array(required));
    }
    schema
}

fn member() -> Value {
    json!({"id": 123, "name": "John Doe", "email": "john@example.com", "labels": ["vip"]})
}

/// An example event of type `name` (`None` for an unknown type).
pub fn example(name: &str) -> Option<Value> {
    let family = name.split(':').next()?;
    let mut body = match family {
        "data_record" => json!({
            "dataType": {"uuid": "5f3c8a1e-0b7d-4a51-9d0e-3c1f6b2a7d90", "type": "Contact Form", "slug": "contact_form"},
            "member": member(),
            "dataRecord": {"id": 4567, "fields": {"message": "Hello!", "priority": "high"}},
        }),
        "member" => json!({"member": member()}),
        "call" | "chat" => {
            let mut conv = json!({"id": format!("{family}_81f2"), "direction": "inbound",
                "participants": [{"id": 123, "name": "John Doe", "role": "customer"}, {"id": 7, "name": "Ada", "role": "agent"}]});
            if name.ends_with(":completed") {
                conv["status"] = json!("completed");
                conv["durationSeconds"] = json!(312);
                conv["transcriptUrl"] =
                    json!(format!("https://files.example.com/{family}_81f2.txt"));
            }
            json!({family: conv, "member": member()})
        }
        "routine" => serde_json::to_value(RoutineTick {
            routine: RoutineRef {
                id: 3,
                uuid: "0e9d7a52-4c1b-4f0a-8f36-2b7e5d1c9a44".into(),
                name: "Weekday digest".into(),
                schedule: TickSchedule {
                    cron: "0 9 * * 1-5".into(),
                    timezone: "Europe/Paris".into(),
                },
                scheduled_at: "2026-12-01T08:00:00Z".into(),
            },
            payload: json!({"report": "daily"}),
        })
        .ok()?,
        "switchyard" => {
            let endpoint = EndpointRef {
                id: "ep_0193a5f0c2d87e4b9a1f6c3d2e5b7a90".into(),
                url: "https://crm.example.com/hooks".into(),
                description: "CRM".into(),
            };
            if name == "switchyard:endpoint_disabled" {
                serde_json::to_value(EndpointDisabled {
                    endpoint,
                    reason: "failing for more than 5 days".into(),
                    at: "2026-12-01T08:00:00Z".into(),
                })
                .ok()?
            } else {
                let policy = crate::endpoint::health::BreakerPolicy {
                    threshold: 5,
                    cooldown_ms: 30_000,
                    max_cooldown_ms: 600_000,
                };
                serde_json::to_value(EndpointFailing {
                    endpoint,
                    reason: "the circuit breaker opened".into(),
                    at: "2026-12-01T08:00:00Z".into(),
                    health: crate::endpoint::health::Health::default().view(&policy, 0),
                })
                .ok()?
            }
        }
        _ => return None,
    };
    let mut out = Map::new();
    out.insert("event".into(), json!(name));
    out.extend(body.as_object_mut().map(std::mem::take).unwrap_or_default());
    Some(Value::Object(out))
}

/// Every event type, clients' first.
pub fn catalogue() -> Vec<EventType> {
    EVENT_TYPES
        .iter()
        .chain(SYSTEM_EVENT_TYPES)
        .map(|&name| {
            let family = name.split(':').next().unwrap_or_default();
            let schema = match family {
                "data_record" => schema_of::<DataRecordEvent>(name),
                "member" => schema_of::<MemberEvent>(name),
                "call" => schema_of::<CallEvent>(name),
                "chat" => schema_of::<ChatEvent>(name),
                "routine" => schema_of::<RoutineTick>(name),
                _ if name == "switchyard:endpoint_disabled" => schema_of::<EndpointDisabled>(name),
                _ => schema_of::<EndpointFailing>(name),
            };
            EventType {
                name: name.to_string(),
                family: family.to_string(),
                description: description(name).to_string(),
                client_sent: EVENT_TYPES.contains(&name),
                schema,
                example: example(name).unwrap_or(Value::Null),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_example_passes_validation_and_names_its_required_fields() {
        for t in catalogue() {
            assert!(!t.description.is_empty(), "{} has a description", t.name);
            let required: Vec<&str> = t.schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            for field in &required {
                assert!(
                    t.example.get(field).is_some(),
                    "{}: the example lacks required `{field}`",
                    t.name
                );
            }
            if t.client_sent {
                super::super::Event::parse(t.example.clone())
                    .unwrap_or_else(|e| panic!("{}: {e:?}", t.name));
            }
        }
    }

    #[test]
    fn schemas_follow_the_models() {
        let types = catalogue();
        let record = types
            .iter()
            .find(|t| t.name == "data_record:created")
            .unwrap();
        let required = record.schema["required"].as_array().unwrap();
        assert!(required.contains(&json!("dataType")) && required.contains(&json!("dataRecord")));
        assert!(!required.contains(&json!("member")), "member is optional");
        assert_eq!(
            record.schema["properties"]["event"]["const"],
            "data_record:created"
        );
        let tick = types.iter().find(|t| t.name == "routine:tick").unwrap();
        assert!(!tick.client_sent);
        assert_eq!(tick.schema["properties"]["event"]["const"], "routine:tick");
    }
}
