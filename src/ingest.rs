//! Turning fired events into deliveries: shared by the events API, routines and the
//! operational events endpoint actors emit.
//!
//! For each rule that fired, the payload (event + `eventRule` + `workspace`) is serialised once
//! and one delivery is made per enabled endpoint of the rule's actions; the endpoint's
//! `orderingKey`, when it has one, is read from the event here, so a delivery keeps the key
//! it was made with whatever later changes; and an endpoint's `transform` is rendered here,
//! once per (event, endpoint), so its bytes are the delivery's body. Event ids are new UUIDv7s; a retried request is
//! recognised by its `Idempotency-Key` in the store, before anything is written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::json;

pub mod cache;

use crate::delivery::{NewDelivery, RENDER_FAILED, new_event_id, partition_of};
use crate::endpoint::Endpoint;
use crate::event::Event;
use crate::rule::CompiledRule;
use crate::store::{Idempotency, Ingested, NewEvent, Result, Store};
use crate::workspace::Workspace;

/// An event and the rules it fired.
pub struct Fired<'a> {
    pub event: &'a Event,
    pub rules: Vec<&'a CompiledRule>,
}

/// Builds the [`NewEvent`]s (with their deliveries) of fired events.
pub async fn plan(
    store: &Store,
    cache: &cache::WorkspaceCache,
    snapshot: &cache::Snapshot,
    ws: &Workspace,
    fired: Vec<Fired<'_>>,
) -> Result<Vec<NewEvent>> {
    let wanted: HashSet<&str> = fired
        .iter()
        .flat_map(|f| {
            f.rules
                .iter()
                .flat_map(|r| r.endpoint_ids.iter().map(String::as_str))
        })
        .collect();
    let endpoints: HashMap<String, Arc<Endpoint>> =
        cache.endpoints(store, &ws.uuid, snapshot, wanted).await?;
    let workspace_block = json!({"uuid": ws.uuid, "name": ws.name});
    let partitions = store.partitions();
    let mut out = Vec::with_capacity(fired.len());
    for Fired { event, rules } in fired {
        let mut deliveries = Vec::new();
        let mut event_json: Option<String> = None;
        // Whether the first delivery carries the event as it is (the log then reads it there).
        let mut first_plain: Option<bool> = None;
        for rule in rules {
            let targets: Vec<&Arc<Endpoint>> = rule
                .endpoint_ids
                .iter()
                .filter_map(|e| endpoints.get(e))
                .filter(|e| e.spec.enabled)
                .collect();
            if targets.is_empty() {
                continue;
            }
            let body = payload(event, &mut event_json, &rule.block, &workspace_block)?;
            // The payload as a map, for the endpoints that transform it: made once per rule.
            let mut fields: Option<serde_json::Map<String, serde_json::Value>> = None;
            for ep in targets {
                first_plain.get_or_insert(ep.transform().is_none());
                let body = match ep.transform() {
                    None => body.clone(),
                    Some(Err(why)) => format!("{RENDER_FAILED}{why}").into(),
                    Some(Ok(t)) => {
                        let fields = fields.get_or_insert_with(|| {
                            let mut m = event.body.clone();
                            m.insert("eventRule".into(), rule.block.clone());
                            m.insert("workspace".into(), workspace_block.clone());
                            m
                        });
                        match t.render(fields) {
                            Ok(b) => b.into(),
                            Err(e) => format!("{RENDER_FAILED}{e}").into(),
                        }
                    }
                };
                deliveries.push(NewDelivery {
                    partition: partition_of(&ep.id, partitions),
                    endpoint_id: ep.id.clone(),
                    rule_id: rule.id,
                    key: ep.ordering_key_of(&event.body),
                    body,
                });
            }
        }
        let body: Arc<str> = if first_plain == Some(true) {
            Arc::from("")
        } else {
            serde_json::to_string(&event.body)?.into()
        };
        out.push(NewEvent {
            id: new_event_id(),
            event_type: event.event_type.clone(),
            body,
            deliveries,
        });
    }
    Ok(out)
}

/// The payload of one rule's deliveries: the event with `eventRule` and `workspace` added.
/// The event is serialised once for all its rules (`event_json`) and the two blocks are
/// appended to that text, instead of cloning the event's map per rule. [`Event::parse`]
/// refuses events that carry either key, so the splice never makes a duplicate.
fn payload(
    event: &Event,
    event_json: &mut Option<String>,
    rule_block: &serde_json::Value,
    workspace_block: &serde_json::Value,
) -> Result<Arc<str>> {
    debug_assert!(!event.body.contains_key("eventRule") && !event.body.contains_key("workspace"));
    if event_json.is_none() {
        *event_json = Some(serde_json::to_string(&event.body)?);
    }
    let json = event_json.as_deref().unwrap_or("{}");
    let open = &json[..json.len() - 1];
    let sep = if open.len() > 1 { "," } else { "" };
    Ok(format!("{open}{sep}\"eventRule\":{rule_block},\"workspace\":{workspace_block}}}").into())
}

/// Plans fired events and writes them; see [`Store::ingest`].
pub async fn ingest(
    store: &Store,
    cache: &cache::WorkspaceCache,
    snapshot: &cache::Snapshot,
    ws: &Workspace,
    fired: Vec<Fired<'_>>,
    idem: Option<&Idempotency>,
) -> Result<Ingested> {
    let planned = plan(store, cache, snapshot, ws, fired).await?;
    store.ingest(&ws.uuid, &planned, idem, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_the_event_and_its_two_blocks() {
        let rule = json!({"id": 1, "uuid": "u", "name": "n"});
        let ws = json!({"uuid": "w", "name": "W"});
        let spoofed = json!({"event": "member:created", "workspace": "spoofed"});
        assert!(
            Event::parse(spoofed).is_err(),
            "a spoofed block is refused before the splice"
        );
        for body in [
            json!({"event": "member:created", "member": {"id": 1}}),
            json!({"event": "member:created", "member": {"id": "}\"{"}, "n": [1, {}]}),
        ] {
            let event = Event::parse(body.clone()).unwrap();
            let mut cache = None;
            let text = payload(&event, &mut cache, &rule, &ws).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut expected = body.as_object().unwrap().clone();
            expected.insert("eventRule".into(), rule.clone());
            expected.insert("workspace".into(), ws.clone());
            assert_eq!(parsed, serde_json::Value::Object(expected));
        }
    }
}
