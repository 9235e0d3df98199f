//! `POST /v1/transforms/preview`: what an endpoint's `transform` makes of an event, before
//! it is saved. The same compile and render as delivery, so a preview cannot disagree with
//! what would be sent.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, Tenant, read_json};
use crate::event::Event;
use crate::invalid::Invalid;
use crate::transform::TransformSpec;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Preview {
    transform: TransformSpec,
    /// An event, as `POST /v1/events` takes it.
    #[schemars(with = "super::views::IncomingEvent")]
    event: Value,
}

/// The body the transform renders for the event (with a sample `eventRule` and this
/// workspace), or the 422 that names `transform…` or `event…`.
pub async fn preview(
    Tenant(ws): Tenant,
    State(state): State<AppState>,
    body: Body,
) -> Result<Json<super::views::Preview>, ApiError> {
    let Preview { transform, event } = read_json(&state, body).await?;
    let compiled = transform.compile()?;
    let event = Event::parse(event).map_err(|e| e.under("event"))?;
    let mut fields = event.body;
    fields.insert(
        "eventRule".into(),
        json!({"id": 0, "uuid": "00000000-0000-0000-0000-000000000000", "name": "preview"}),
    );
    fields.insert(
        "workspace".into(),
        json!({"uuid": ws.uuid, "name": ws.name}),
    );
    let rendered = compiled.render(&fields).map_err(|e| {
        let field = if transform.template.is_some() {
            "transform.template"
        } else {
            "transform.text"
        };
        Invalid::new("template_error", field, e.0)
    })?;
    let body: Value = serde_json::from_str(&rendered).unwrap_or(Value::String(rendered));
    Ok(Json(super::views::Preview { body }))
}
