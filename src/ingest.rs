//! Turning a fired event into deliveries: shared by the events API and by routines.
//!
//! For each rule that fired, the payload (event + `eventRule` + `workspace`) is serialised once
//! and one delivery is made per enabled endpoint of the rule's actions. Delivery ids are
//! derived from (workspace, event, rule, endpoint), and the event id from the idempotency key
//! when there is one, so planning the same event twice gives the same deliveries.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use crate::delivery::{
    Delivery, NewDelivery, Status, delivery_id, event_id, partition_of, rfc3339, seq,
};
use crate::endpoint::Endpoint;
use crate::event::Event;
use crate::rule::CompiledRule;
use crate::store::{NewEvent, Result, Store};
use crate::workspace::Workspace;

/// An event, its idempotency key, and the rules it fired.
pub struct Fired<'a> {
    pub event: Event,
    pub key: Option<String>,
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
    let now = chrono::Utc::now();
    let mut index = 0;
    let mut out = Vec::with_capacity(fired.len());
    for Fired { event, key, rules } in fired {
        let id = event_id(&ws.uuid, key.as_deref());
        let mut new_deliveries = Vec::new();
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
            let body = serde_json::to_string(&payload)?;
            for ep in targets {
                let delivery = Delivery {
                    id: delivery_id(&ws.uuid, &id, rule.id, &ep.id),
                    event_id: id.clone(),
                    event_type: event.event_type.clone(),
                    endpoint_id: ep.id.clone(),
                    rule_id: rule.id,
                    status: Status::Pending,
                    created_at: rfc3339(now),
                    attempt_count: 0,
                    next_attempt_at: None,
                    body: body.clone(),
                    seq: seq(now.timestamp_millis(), index),
                };
                index += 1;
                let partition = partition_of(&ep.id, store.partitions());
                new_deliveries.push(NewDelivery {
                    delivery,
                    partition,
                });
            }
        }
        out.push(NewEvent {
            id,
            event_type: event.event_type,
            created_at: rfc3339(now),
            deliveries: new_deliveries
                .iter()
                .map(|d| d.delivery.id.clone())
                .collect(),
            new_deliveries,
        });
    }
    Ok(out)
}
