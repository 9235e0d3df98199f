//! Turning fired events into deliveries: shared by the events API, routines and the
//! operational events endpoint actors emit.
//!
//! For each rule that fired, the payload (event + `eventRule` + `workspace`) is serialised once
//! and one delivery is made per enabled endpoint of the rule's actions; the endpoint's
//! `orderingKey`, when it has one, is read from the event here, so a delivery keeps the key
//! it was made with whatever later changes. Event ids are new UUIDv7s; a retried request is
//! recognised by its `Idempotency-Key` in the store, before anything is written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::json;

use crate::delivery::{NewDelivery, new_event_id, partition_of};
use crate::endpoint::Endpoint;
use crate::event::Event;
use crate::rule::CompiledRule;
use crate::store::{Idempotency, Ingested, NewEvent, Result, Store};
use crate::workspace::Workspace;

/// An event and the rules it fired.
pub struct Fired<'a> {
    pub event: Event,
    pub rules: Vec<&'a CompiledRule>,
}

/// Builds the [`NewEvent`]s (with their deliveries) of fired events.
pub async fn plan(store: &Store, ws: &Workspace, fired: Vec<Fired<'_>>) -> Result<Vec<NewEvent>> {
    let wanted: HashSet<&str> = fired
        .iter()
        .flat_map(|f| {
            f.rules
                .iter()
                .flat_map(|r| r.endpoint_ids.iter().map(String::as_str))
        })
        .collect();
    let endpoints: HashMap<String, Endpoint> = store.endpoints_by_id(&ws.uuid, wanted).await?;
    let workspace_block = json!({"uuid": ws.uuid, "name": ws.name});
    let partitions = store.partitions();
    let mut out = Vec::with_capacity(fired.len());
    for Fired { event, rules } in fired {
        let mut deliveries = Vec::new();
        for rule in rules {
            let targets: Vec<&Endpoint> = rule
                .endpoint_ids
                .iter()
                .filter_map(|e| endpoints.get(e))
                .filter(|e| e.spec.enabled)
                .collect();
            if targets.is_empty() {
                continue;
            }
            let mut payload = event.body.clone();
            payload.insert("eventRule".into(), rule.block.clone());
            payload.insert("workspace".into(), workspace_block.clone());
            let body: Arc<str> = serde_json::to_string(&payload)?.into();
            for ep in targets {
                deliveries.push(NewDelivery {
                    partition: partition_of(&ep.id, partitions),
                    endpoint_id: ep.id.clone(),
                    rule_id: rule.id,
                    key: ep.ordering_key_of(&event.body),
                    body: body.clone(),
                });
            }
        }
        let body: Arc<str> = if deliveries.is_empty() {
            serde_json::to_string(&event.body)?.into()
        } else {
            Arc::from("")
        };
        out.push(NewEvent {
            id: new_event_id(),
            event_type: event.event_type,
            body,
            deliveries,
        });
    }
    Ok(out)
}

/// Plans fired events and writes them; see [`Store::ingest`].
pub async fn ingest(
    store: &Store,
    ws: &Workspace,
    fired: Vec<Fired<'_>>,
    idem: Option<&Idempotency>,
) -> Result<Ingested> {
    let planned = plan(store, ws, fired).await?;
    store.ingest(&ws.uuid, &planned, idem).await
}
