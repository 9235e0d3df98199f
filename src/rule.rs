//! Event rules: which events go to which endpoints.
//!
//! A rule is stored as the client sent it ([`RuleSpec`] plus ids) and compiled once per change
//! into a [`CompiledRule`]. A workspace's compiled rules form an immutable [`RuleSet`] indexed by
//! exact event type, by family (`member:*`) and catch-all (`*`), so matching an event looks at
//! the candidate rules only and evaluates pre-compiled conditions without re-parsing anything.

pub mod condition;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{EVENT_TYPES, FAMILIES};
use crate::invalid::Invalid;
pub use condition::Condition;

/// What a rule does when it fires.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    #[serde(rename_all = "camelCase")]
    Webhook { endpoint_id: String },
}

/// A routine's schedule (time-based rules).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    /// Cron, 5 fields (minute first) or 6 (seconds first).
    pub cron: String,
    /// An IANA time zone (`Europe/Paris`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// Ticks missed while no node was up: fire the most recent once, or none.
    #[serde(default)]
    pub catch_up: CatchUp,
}

/// What happens to ticks missed while no node could fire them.
#[derive(
    Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    #[default]
    Latest,
    None,
}

fn utc() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

/// A rule as clients write it (`POST /v1/event-rules`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Value>,
    pub actions: Vec<Action>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// A stored rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub id: u64,
    pub uuid: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    pub created_at: String,
    pub updated_at: String,
}

/// Validates a spec (everything except whether the endpoints exist, which needs the store).
pub fn validate(spec: &RuleSpec) -> Result<(), Invalid> {
    if spec.name.trim().is_empty() || spec.name.chars().count() > 200 {
        return Err(Invalid::field("name", "must be 1 to 200 characters"));
    }
    match (&spec.events, &spec.schedule) {
        (Some(_), Some(_)) => {
            return Err(Invalid::field(
                "schedule",
                "a rule has either events or a schedule",
            ));
        }
        (None, None) => return Err(Invalid::field("events", "is required")),
        (Some(events), None) => {
            if events.is_empty() {
                return Err(Invalid::field(
                    "events",
                    "must name at least one event type",
                ));
            }
            for (i, p) in events.iter().enumerate() {
                Pattern::parse(p).map_err(|e| e.under(&format!("events[{i}]")))?;
            }
        }
        (None, Some(schedule)) => {
            crate::routine::CompiledSchedule::compile(schedule).map_err(|e| e.under("schedule"))?;
        }
    }
    if let Some(c) = &spec.conditions {
        Condition::compile(c).map_err(|e| e.under("conditions"))?;
    }
    // A rule whose last endpoint was deleted (`DELETE /v1/endpoints/{id}?force=true`) is kept,
    // disabled and without actions; it can be enabled again only with an action.
    if spec.actions.is_empty() && spec.enabled {
        return Err(Invalid::field(
            "actions",
            "must hold at least one action (a rule without actions must be disabled)",
        ));
    }
    if spec.payload.as_ref().is_some_and(|p| !p.is_object()) {
        return Err(Invalid::field("payload", "must be an object"));
    }
    Ok(())
}

/// An event-type pattern: exact, family wildcard or catch-all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Family(String),
    All,
}

impl Pattern {
    pub fn parse(p: &str) -> Result<Pattern, Invalid> {
        if p == "*" {
            return Ok(Pattern::All);
        }
        if let Some(family) = p.strip_suffix(":*")
            && FAMILIES.contains(&family)
        {
            return Ok(Pattern::Family(family.to_string()));
        }
        if EVENT_TYPES.contains(&p) || crate::event::SYSTEM_EVENT_TYPES.contains(&p) {
            return Ok(Pattern::Exact(p.to_string()));
        }
        Err(Invalid::new(
            "unknown_event_type",
            "",
            format!("`{p}` is not an event type or pattern (`member:created`, `member:*`, `*`)"),
        ))
    }
}

/// A rule ready to evaluate, with its `eventRule` payload block serialised once.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub id: u64,
    pub uuid: String,
    pub name: String,
    pub condition: Option<Condition>,
    pub endpoint_ids: Vec<String>,
    /// `{"id", "uuid", "name"}` as delivered in every payload of this rule.
    pub block: Value,
}

impl CompiledRule {
    /// The rule of a routine, which fires on its schedule instead of matching events.
    pub fn for_routine(rule: &Rule) -> CompiledRule {
        CompiledRule {
            id: rule.id,
            uuid: rule.uuid.clone(),
            name: rule.spec.name.clone(),
            condition: None,
            endpoint_ids: rule
                .spec
                .actions
                .iter()
                .map(|Action::Webhook { endpoint_id }| endpoint_id.clone())
                .collect(),
            block: serde_json::json!({"id": rule.id, "uuid": rule.uuid, "name": rule.spec.name}),
        }
    }

    /// Compiles a stored rule; `None` for disabled rules and routines (they match no event).
    pub fn compile(rule: &Rule) -> Option<(CompiledRule, Vec<Pattern>)> {
        let events = rule.spec.events.as_ref()?;
        if !rule.spec.enabled {
            return None;
        }
        let patterns = events
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .collect();
        let condition = rule
            .spec
            .conditions
            .as_ref()
            .and_then(|c| Condition::compile(c).ok());
        let endpoint_ids = rule
            .spec
            .actions
            .iter()
            .map(|Action::Webhook { endpoint_id }| endpoint_id.clone())
            .collect();
        let block = serde_json::json!({"id": rule.id, "uuid": rule.uuid, "name": rule.spec.name});
        let compiled = CompiledRule {
            id: rule.id,
            uuid: rule.uuid.clone(),
            name: rule.spec.name.clone(),
            condition,
            endpoint_ids,
            block,
        };
        Some((compiled, patterns))
    }
}

/// A workspace's compiled rules, indexed by event type. Immutable: replaced whole on change.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    by_type: HashMap<String, Slot>,
    by_family: HashMap<String, Slot>,
    any: Slot,
}

/// The rules of one pattern. A rule whose condition requires `field == value` is found by
/// looking the event's value of that field up in a map, so a thousand rules that differ by a
/// customer id cost one lookup instead of a thousand evaluations; the others are scanned.
#[derive(Debug, Default)]
struct Slot {
    scan: Vec<usize>,
    by_value: Vec<(Vec<condition::Segment>, ByValue)>,
}

/// Rule indexes by the [`condition::eq_key`] of the value their condition requires.
type ByValue = HashMap<String, Vec<usize>>;

impl Slot {
    fn add(&mut self, idx: usize, cond: Option<&Condition>) {
        let Some((path, value)) = cond.and_then(Condition::discriminator) else {
            if self.scan.last() != Some(&idx) {
                self.scan.push(idx);
            }
            return;
        };
        let pos = match self.by_value.iter().position(|(p, _)| p.as_slice() == path) {
            Some(pos) => pos,
            None => {
                self.by_value.push((path.to_vec(), HashMap::new()));
                self.by_value.len() - 1
            }
        };
        let list = self.by_value[pos]
            .1
            .entry(condition::eq_key(value))
            .or_default();
        if list.last() != Some(&idx) {
            list.push(idx);
        }
    }

    fn candidates(&self, body: &Map<String, Value>, out: &mut Vec<usize>) {
        out.extend_from_slice(&self.scan);
        for (path, map) in &self.by_value {
            if let Some(list) =
                condition::lookup(body, path).and_then(|v| map.get(&condition::eq_key(v)))
            {
                out.extend_from_slice(list);
            }
        }
    }
}

impl RuleSet {
    pub fn build(rules: &[Rule]) -> RuleSet {
        let mut set = RuleSet::default();
        let mut sorted: Vec<&Rule> = rules.iter().collect();
        sorted.sort_by_key(|r| r.id);
        for rule in sorted {
            let Some((compiled, patterns)) = CompiledRule::compile(rule) else {
                continue;
            };
            let idx = set.rules.len();
            set.rules.push(compiled);
            let condition = set.rules[idx].condition.clone();
            for p in patterns {
                let slot = match p {
                    Pattern::Exact(t) => set.by_type.entry(t).or_default(),
                    Pattern::Family(f) => set.by_family.entry(f).or_default(),
                    Pattern::All => &mut set.any,
                };
                slot.add(idx, condition.as_ref());
            }
        }
        set
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules an event fires, in rule-id order, each once.
    pub fn matching<'a>(
        &'a self,
        event_type: &str,
        body: &Map<String, Value>,
    ) -> Vec<&'a CompiledRule> {
        let family = event_type.split(':').next().unwrap_or_default();
        // `*` means every event a client sends. Switchyard's own events (operational ones,
        // routine ticks) go only to rules that name them: a catch-all rule would otherwise send
        // "endpoint failing" back to the failing endpoint, a loop.
        let catch_all =
            (!crate::event::SYSTEM_EVENT_TYPES.contains(&event_type)).then_some(&self.any);
        let mut idx: Vec<usize> = Vec::new();
        for slot in [
            self.by_type.get(event_type),
            self.by_family.get(family),
            catch_all,
        ]
        .into_iter()
        .flatten()
        {
            slot.candidates(body, &mut idx);
        }
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| &self.rules[i])
            .filter(|r| r.condition.as_ref().is_none_or(|c| c.matches(body)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(id: u64, events: &[&str], conditions: Option<Value>) -> Rule {
        Rule {
            id,
            uuid: format!("u{id}"),
            spec: RuleSpec {
                name: format!("r{id}"),
                events: Some(events.iter().map(|s| s.to_string()).collect()),
                conditions,
                actions: vec![Action::Webhook {
                    endpoint_id: "ep".into(),
                }],
                enabled: true,
                schedule: None,
                payload: None,
            },
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn index_by_type_family_and_catch_all() {
        let mut disabled = rule(5, &["*"], None);
        disabled.spec.enabled = false;
        let set = RuleSet::build(&[
            rule(3, &["member:*", "member:created"], None),
            rule(1, &["data_record:created"], None),
            rule(
                2,
                &["*"],
                Some(json!({"field": "member.id", "op": "eq", "value": 7})),
            ),
            rule(4, &["call:completed"], None),
            disabled,
        ]);
        let ids = |t: &str, body: Value| -> Vec<u64> {
            set.matching(t, body.as_object().unwrap())
                .iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(
            ids("member:created", json!({"member": {"id": 7}})),
            vec![2, 3]
        );
        assert_eq!(ids("member:created", json!({"member": {"id": 8}})), vec![3]);
        assert_eq!(ids("data_record:created", json!({})), vec![1]);
        assert_eq!(ids("data_record:updated", json!({})), Vec::<u64>::new());
        assert_eq!(
            ids("call:completed", json!({"member": {"id": 7}})),
            vec![2, 4]
        );
        assert_eq!(
            ids("switchyard:endpoint_failing", json!({"member": {"id": 7}})),
            Vec::<u64>::new(),
            "`*` does not take Switchyard's own events"
        );
    }

    #[test]
    fn equality_conditions_are_found_by_value_and_still_fully_checked() {
        let mut rules: Vec<Rule> = (0..100)
            .map(|i| {
                rule(
                    i + 1,
                    &["member:*"],
                    Some(json!({"all": [
                {"field": "member.id", "op": "eq", "value": i},
                {"field": "member.labels", "op": "contains", "value": "vip"}]})),
                )
            })
            .collect();
        rules.push(rule(
            500,
            &["member:*"],
            Some(json!({"field": "member.id", "op": "gt", "value": 98})),
        ));
        let set = RuleSet::build(&rules);
        let ids = |body: Value| -> Vec<u64> {
            set.matching("member:created", body.as_object().unwrap())
                .iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(
            ids(json!({"member": {"id": 42, "labels": ["vip"]}})),
            vec![43]
        );
        assert_eq!(
            ids(json!({"member": {"id": 42.0, "labels": ["vip"]}})),
            vec![43],
            "1 and 1.0 are equal"
        );
        assert_eq!(
            ids(json!({"member": {"id": 42, "labels": []}})),
            Vec::<u64>::new(),
            "the other leaves still apply"
        );
        assert_eq!(
            ids(json!({"member": {"id": 99, "labels": ["vip"]}})),
            vec![100, 500]
        );
        assert_eq!(
            ids(json!({"member": {"labels": ["vip"]}})),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn patterns_and_specs_are_validated() {
        assert!(Pattern::parse("member:*").is_ok());
        assert!(Pattern::parse("invoice:*").is_err());
        assert!(Pattern::parse("member:exploded").is_err());
        let mut spec = rule(1, &["member:created", "nope"], None).spec;
        assert_eq!(validate(&spec).unwrap_err().field, "events[1]");
        spec.events = Some(vec!["member:created".into()]);
        spec.conditions = Some(json!({"all": [{"field": "x", "op": "near", "value": 1}]}));
        assert_eq!(validate(&spec).unwrap_err().field, "conditions.all[0].op");
        spec.conditions = None;
        spec.actions.clear();
        assert_eq!(validate(&spec).unwrap_err().field, "actions");
    }
}
