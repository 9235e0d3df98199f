//! Events: what happened in a workspace, in the three families of the product page.
//!
//! The typed models below are the contract for each family; an incoming event is validated by
//! deserialising it into its family's model (so an error names the field), but what is delivered
//! is the client's own JSON object, so unknown extra fields are kept and delivered as sent, and
//! the body is not re-serialised field by field on the hot path.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::invalid::{Invalid, from_value};

pub mod catalogue;

/// The families an event type may belong to (`family:action`).
pub const FAMILIES: &[&str] = &[
    "data_record",
    "member",
    "call",
    "chat",
    "routine",
    "switchyard",
];

/// Events Switchyard emits itself (rules may match them; clients may not send them).
pub const SYSTEM_EVENT_TYPES: &[&str] = &[
    "routine:tick",
    "switchyard:endpoint_disabled",
    "switchyard:endpoint_failing",
];

/// Every event type the API accepts from clients, and the ones Switchyard emits itself.
pub const EVENT_TYPES: &[&str] = &[
    "data_record:created",
    "data_record:updated",
    "data_record:deleted",
    "member:created",
    "member:updated",
    "member:deleted",
    "call:started",
    "call:completed",
    "chat:started",
    "chat:completed",
];

/// Fields of an event body that Switchyard adds to the delivered payload; clients may not set them.
const RESERVED_FIELDS: &[&str] = &["eventRule", "workspace"];

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataType {
    pub uuid: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub slug: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: Value,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataRecord {
    pub id: Value,
    #[serde(default)]
    pub fields: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `data_record:created | updated | deleted`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataRecordEvent {
    pub data_type: DataType,
    #[serde(default)]
    pub member: Option<Member>,
    pub data_record: DataRecord,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `member:created | updated | deleted`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberEvent {
    pub member: Member,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `call` or `chat` block of a conversation event.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: Value,
    #[serde(default)]
    pub direction: Option<Direction>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    #[serde(default)]
    pub participants: Vec<Participant>,
    #[serde(default)]
    pub transcript_url: Option<String>,
    #[serde(default)]
    pub audio_url: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `call:started | completed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CallEvent {
    pub call: Conversation,
    #[serde(default)]
    pub member: Option<Member>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `chat:started | completed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ChatEvent {
    pub chat: Conversation,
    #[serde(default)]
    pub member: Option<Member>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A validated event: its type and the client's JSON object, unchanged.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: String,
    pub body: Map<String, Value>,
}

impl Event {
    /// Validates a client's event: an object with a known `event` type and the fields its
    /// family requires. Errors name the field (`dataRecord.id`, `event`, ...).
    pub fn parse(value: Value) -> Result<Event, Invalid> {
        let Value::Object(body) = value else {
            return Err(Invalid::field("", "an event must be a JSON object"));
        };
        let event_type = match body.get("event") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(Invalid::field("event", "must be a string")),
            None => return Err(Invalid::field("event", "is required")),
        };
        if !EVENT_TYPES.contains(&event_type.as_str()) {
            return Err(Invalid::new(
                "unknown_event_type",
                "event",
                format!(
                    "`{event_type}` is not an event type; expected one of {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        if let Some(reserved) = RESERVED_FIELDS.iter().find(|f| body.contains_key(**f)) {
            return Err(Invalid::field(
                *reserved,
                "is set by Switchyard and may not be sent",
            ));
        }
        let value = Value::Object(body);
        match event_type.split(':').next().unwrap_or_default() {
            "data_record" => from_value::<DataRecordEvent>(&value).map(drop)?,
            "member" => from_value::<MemberEvent>(&value).map(drop)?,
            "call" => from_value::<CallEvent>(&value).map(drop)?,
            "chat" => from_value::<ChatEvent>(&value).map(drop)?,
            _ => unreachable!("EVENT_TYPES only holds known families"),
        }
        let Value::Object(body) = value else {
            unreachable!()
        };
        Ok(Event { event_type, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_product_page_event_is_accepted_with_its_extra_fields() {
        let ev = Event::parse(json!({
            "event": "data_record:created",
            "dataType": {"uuid": "5f3c", "type": "Contact Form", "slug": "contact_form"},
            "member": {"id": 123, "name": "John Doe", "email": "john@example.com", "labels": ["vip"]},
            "dataRecord": {"id": 4567, "fields": {"message": "Hello!", "priority": "high"}},
            "source": "web-form"
        }))
        .unwrap();
        assert_eq!(ev.event_type, "data_record:created");
        assert_eq!(ev.body["source"], "web-form");
    }

    #[test]
    fn errors_name_the_field() {
        let missing = Event::parse(json!({"event": "data_record:created",
            "dataType": {"uuid": "u", "type": "t", "slug": "s"}, "dataRecord": {"fields": {}}}))
        .unwrap_err();
        assert_eq!(missing.field, "dataRecord.id");
        let wrong =
            Event::parse(json!({"event": "member:updated", "member": {"id": 1, "labels": "vip"}}))
                .unwrap_err();
        assert_eq!(wrong.field, "member.labels");
        let unknown = Event::parse(json!({"event": "invoice:paid"})).unwrap_err();
        assert_eq!(
            (unknown.code, unknown.field.as_str()),
            ("unknown_event_type", "event")
        );
        let dir = Event::parse(
            json!({"event": "call:completed", "call": {"id": "c1", "direction": "sideways"}}),
        )
        .unwrap_err();
        assert_eq!(dir.field, "call.direction");
        let reserved =
            Event::parse(json!({"event": "member:created", "member": {"id": 1}, "workspace": {}}))
                .unwrap_err();
        assert_eq!(reserved.field, "workspace");
    }

    #[test]
    fn conversation_events_carry_their_blocks() {
        let ev = Event::parse(json!({"event": "chat:completed", "chat": {"id": "ch_1",
            "direction": "inbound", "status": "completed", "durationSeconds": 42,
            "participants": [{"id": 1, "role": "agent"}], "transcriptUrl": "https://x/t"}}))
        .unwrap();
        let typed: ChatEvent = serde_json::from_value(Value::Object(ev.body)).unwrap();
        assert_eq!(typed.chat.direction, Some(Direction::Inbound));
        assert_eq!(typed.chat.participants.len(), 1);
    }
}
