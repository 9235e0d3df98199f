//! Payload transforms: the body an endpoint gets, when it is not the payload as it is.
//!
//! A Slack incoming webhook wants `{"text": ...}`, Discord `{"content": ...}`, a CRM its own
//! field names. An endpoint's `transform` is a preset (`slack`, `discord`, with an optional
//! `text` template for the message) or a `template` that renders the whole body as JSON.
//!
//! Templates are [`minijinja`] (Jinja syntax, well kept, no I/O of its own: no loader is set,
//! so `include` finds nothing), compiled once when the endpoint is saved — a syntax error is a
//! 422 naming `transform.template` (or `transform.text`) with its line — and kept compiled in
//! the endpoint's cached copy. A render is bounded: minijinja's fuel caps the instructions and
//! the memory of one render, the output is capped at [`MAX_OUTPUT`], and undefined values are
//! errors when printed (`SemiStrict`: `{% if member %}` still tests for one). The variables are
//! the payload's top-level fields (`event`, `member`, `dataRecord`, `dataType`, `eventRule`,
//! `workspace`, ...).
//!
//! Rendering happens at ingest, once per (event, endpoint): the transformed bytes are the
//! delivery's body, so they are what is signed, sent, retried and logged. A render that fails
//! for one event (an undefined value, output that is not JSON) makes a delivery that fails at
//! once, without a request, with an attempt of error kind `template` (see
//! [`crate::delivery::Job::render_failure`]).

use std::sync::Arc;

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::invalid::Invalid;

/// The most a render may write.
pub const MAX_OUTPUT: usize = 256 * 1024;
/// minijinja fuel per render: about this many instructions, or 64 bytes each of memory.
const FUEL: u64 = 100_000;
/// The longest template accepted.
const MAX_SOURCE: usize = 64 * 1024;
/// The names templates are compiled under: a whole body, or a preset's message.
const BODY: &str = "body";
const TEXT: &str = "text";

/// An endpoint's `transform`, as clients write it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransformSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// A preset's message, as a template (its default names the event and its main fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A template rendering the whole body, which must be JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preset {
    Slack,
    Discord,
}

impl Preset {
    /// The field of the body that carries the message.
    fn field(self) -> &'static str {
        match self {
            Preset::Slack => "text",
            Preset::Discord => "content",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A preset: the message from the `t` template, or the default one.
    Preset { preset: Preset, text: bool },
    /// The body from the `t` template.
    Body,
}

/// A transform compiled once, shared by every render.
#[derive(Clone)]
pub struct Transform {
    env: Arc<Environment<'static>>,
    shape: Shape,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transform")
            .field("shape", &self.shape)
            .finish()
    }
}

/// Why a render made no body: the `template` error kind of the delivery's attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

fn describe(e: &minijinja::Error) -> String {
    let what = e
        .detail()
        .map_or_else(|| e.kind().to_string(), str::to_string);
    match e.line() {
        Some(line) => format!("line {line}: {what}"),
        None => what,
    }
}

impl TransformSpec {
    /// Compiles the transform, or names what is wrong with it (`transform.…`).
    pub fn compile(&self) -> Result<Transform, Invalid> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        // A body template prints every value as JSON (a string with its quotes, escaped), so
        // event data can neither break the body nor add fields to it; a preset's message is
        // plain text. Nothing is HTML-escaped.
        env.set_auto_escape_callback(|name| match name {
            BODY => minijinja::AutoEscape::Json,
            _ => minijinja::AutoEscape::None,
        });
        let mut add = |field: &str, source: &str| -> Result<(), Invalid> {
            if source.len() > MAX_SOURCE {
                return Err(Invalid::field(
                    field,
                    format!("must be at most {MAX_SOURCE} bytes"),
                ));
            }
            let name = if field == "transform.template" {
                BODY
            } else {
                TEXT
            };
            env.add_template_owned(name, source.to_string())
                .map_err(|e| Invalid::field(field, describe(&e)))
        };
        let shape = match (&self.preset, &self.template) {
            (Some(_), Some(_)) => {
                return Err(Invalid::field(
                    "transform",
                    "give either a preset or a template, not both",
                ));
            }
            (None, None) => {
                return Err(Invalid::field(
                    "transform",
                    "give a preset (slack, discord) or a template",
                ));
            }
            (Some(name), None) => {
                let preset = match name.as_str() {
                    "slack" => Preset::Slack,
                    "discord" => Preset::Discord,
                    other => {
                        return Err(Invalid::field(
                            "transform.preset",
                            format!("unknown preset `{other}`: slack or discord"),
                        ));
                    }
                };
                if let Some(text) = &self.text {
                    add("transform.text", text)?;
                }
                Shape::Preset {
                    preset,
                    text: self.text.is_some(),
                }
            }
            (None, Some(template)) => {
                if self.text.is_some() {
                    return Err(Invalid::field(
                        "transform.text",
                        "only a preset takes a text; a template renders the whole body",
                    ));
                }
                add("transform.template", template)?;
                Shape::Body
            }
        };
        Ok(Transform {
            env: Arc::new(env),
            shape,
        })
    }
}

impl Transform {
    /// The body for `payload` (the payload's top-level fields are the template's variables).
    pub fn render(&self, payload: &Map<String, Value>) -> Result<String, RenderError> {
        match self.shape {
            Shape::Body => {
                let out = self.template(BODY, payload)?;
                let out = out.trim();
                // Parsed whole (not skimmed), so escapes such as lone surrogates are checked.
                serde_json::from_str::<Value>(out)
                    .map_err(|e| RenderError(format!("the template's output is not JSON: {e}")))?;
                Ok(out.to_string())
            }
            Shape::Preset { preset, text } => {
                let message = if text {
                    self.template(TEXT, payload)?
                } else {
                    default_message(payload)
                };
                let mut body = Map::new();
                body.insert(preset.field().into(), Value::String(message));
                Ok(Value::Object(body).to_string())
            }
        }
    }

    fn template(&self, name: &str, payload: &Map<String, Value>) -> Result<String, RenderError> {
        let t = self
            .env
            .get_template(name)
            .map_err(|e| RenderError(describe(&e)))?;
        let out = t
            .render(minijinja::value::Value::from(minijinja::value::Serde(
                payload,
            )))
            .map_err(|e| RenderError(describe(&e)))?;
        if out.len() > MAX_OUTPUT {
            return Err(RenderError(format!(
                "the output is {} bytes, over the {MAX_OUTPUT} allowed",
                out.len()
            )));
        }
        Ok(out)
    }
}

fn text_at(payload: &Map<String, Value>, block: &str, field: &str) -> Option<String> {
    match payload.get(block)?.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Null | Value::String(_) => None,
        other => Some(other.to_string()),
    }
}

/// A preset's message without a `text`: the event type, the workspace, and the family's
/// main fields (member name and email, data type and record id, call or chat id).
fn default_message(payload: &Map<String, Value>) -> String {
    let event = payload
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or("event");
    let mut out = format!("*{event}*");
    if let Some(ws) = text_at(payload, "workspace", "name") {
        out.push_str(&format!(" in {ws}"));
    }
    let mut parts: Vec<String> = Vec::new();
    match (
        text_at(payload, "member", "name"),
        text_at(payload, "member", "email"),
    ) {
        (Some(name), Some(email)) => parts.push(format!("{name} <{email}>")),
        (Some(one), None) | (None, Some(one)) => parts.push(one),
        (None, None) => {}
    }
    if let Some(t) =
        text_at(payload, "dataType", "type").or_else(|| text_at(payload, "dataType", "slug"))
    {
        parts.push(t);
    }
    if let Some(id) = text_at(payload, "dataRecord", "id") {
        parts.push(format!("record {id}"));
    }
    if let Some(id) = text_at(payload, "call", "id") {
        parts.push(format!("call {id}"));
    }
    if let Some(id) = text_at(payload, "chat", "id") {
        parts.push(format!("chat {id}"));
    }
    if !parts.is_empty() {
        out.push_str(": ");
        out.push_str(&parts.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> TransformSpec {
        serde_json::from_value(v).unwrap()
    }

    fn payload() -> Map<String, Value> {
        json!({"event": "member:created", "member": {"id": 7, "name": "Ada", "email": "ada@x.io"},
            "eventRule": {"id": 1, "uuid": "u", "name": "r"}, "workspace": {"uuid": "w", "name": "Acme"}})
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn presets_wrap_a_message_naming_the_event_and_its_main_fields() {
        let slack = spec(json!({"preset": "slack"})).compile().unwrap();
        let body: Value = serde_json::from_str(&slack.render(&payload()).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"text": "*member:created* in Acme: Ada <ada@x.io>"})
        );
        let discord = spec(json!({"preset": "discord", "text": "hi {{ member.name }}"}))
            .compile()
            .unwrap();
        assert_eq!(
            discord.render(&payload()).unwrap(),
            r#"{"content":"hi Ada"}"#
        );
    }

    #[test]
    fn a_template_renders_the_body_and_must_make_json() {
        let t = spec(
            json!({"template": "{\"who\": {{ member.name|tojson }}, \"n\": {{ member.id }}}"}),
        )
        .compile()
        .unwrap();
        assert_eq!(t.render(&payload()).unwrap(), r#"{"who": "Ada", "n": 7}"#);
        // Values print as JSON: data cannot break out of its string.
        let plain = spec(json!({"template": "{\"who\": {{ member.name }}}"}))
            .compile()
            .unwrap();
        let mut sly = payload();
        sly["member"]["name"] = json!("Ada\", \"admin\": true, \"x\": \"");
        let body: Value = serde_json::from_str(&plain.render(&sly).unwrap()).unwrap();
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        assert_eq!(body["who"], sly["member"]["name"]);
        let bad = spec(json!({"template": "who: {{ member.name }}"}))
            .compile()
            .unwrap();
        let err = bad.render(&payload()).unwrap_err();
        assert!(err.0.contains("not JSON"), "{err}");
        let undefined = spec(json!({"template": "{{ dataRecord.id }}"}))
            .compile()
            .unwrap();
        assert!(undefined.render(&payload()).is_err());
    }

    #[test]
    fn bad_transforms_name_their_field_and_line() {
        let e = spec(json!({"template": "{\n{{ member.name "}))
            .compile()
            .unwrap_err();
        assert_eq!(e.field, "transform.template");
        assert!(e.message.contains("line 2"), "{}", e.message);
        let e = spec(json!({"preset": "teams"})).compile().unwrap_err();
        assert_eq!(e.field, "transform.preset");
        let e = spec(json!({"preset": "slack", "text": "{% if %}"}))
            .compile()
            .unwrap_err();
        assert_eq!(e.field, "transform.text");
        let e = spec(json!({})).compile().unwrap_err();
        assert_eq!(e.field, "transform");
    }

    #[test]
    fn a_render_is_bounded() {
        let t = spec(json!({"template": "[{% for i in range(100000) %}{{ i }},{% endfor %}0]"}))
            .compile()
            .unwrap();
        assert!(t.render(&payload()).is_err(), "fuel runs out");
    }
}
