//! The condition language of event rules, compiled once when a rule is saved.
//!
//! A condition is a tree of `all` / `any` / `not` over leaves `{field, op, value}`. Compiling
//! splits each field path into segments and checks each op's operand once, so evaluating an
//! event is a walk over pre-split paths with no parsing and no allocation.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::invalid::Invalid;

/// The comparison of one leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    In,
    Contains,
    Exists,
    Gt,
    Gte,
    Lt,
    Lte,
    Prefix,
}

impl Op {
    const NAMES: &[(&'static str, Op)] = &[
        ("eq", Op::Eq),
        ("ne", Op::Ne),
        ("in", Op::In),
        ("contains", Op::Contains),
        ("exists", Op::Exists),
        ("gt", Op::Gt),
        ("gte", Op::Gte),
        ("lt", Op::Lt),
        ("lte", Op::Lte),
        ("prefix", Op::Prefix),
    ];

    fn parse(name: &str) -> Option<Op> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, op)| *op)
    }
}

/// One step of a field path: an object key, or an index when the segment is a number.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Key(String),
    Index(usize, String),
}

/// A compiled condition tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Leaf {
        path: Vec<Segment>,
        op: Op,
        value: Value,
    },
}

/// Deepest nesting accepted, so a hostile rule cannot blow the stack at evaluation.
const MAX_DEPTH: usize = 16;

impl Condition {
    /// Compiles the JSON form; errors carry the path inside `conditions`.
    pub fn compile(value: &Value) -> Result<Condition, Invalid> {
        Self::compile_at(value, 0)
    }

    fn compile_at(value: &Value, depth: usize) -> Result<Condition, Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid::new(
                "invalid_condition",
                "",
                "conditions nest too deeply",
            ));
        }
        let Value::Object(obj) = value else {
            return Err(Invalid::new(
                "invalid_condition",
                "",
                "a condition must be an object",
            ));
        };
        for key in ["all", "any"] {
            if let Some(list) = obj.get(key) {
                let Value::Array(items) = list else {
                    return Err(Invalid::new("invalid_condition", key, "must be an array"));
                };
                let compiled = items
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        Self::compile_at(c, depth + 1).map_err(|e| e.under(&format!("{key}[{i}]")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(if key == "all" {
                    Condition::All(compiled)
                } else {
                    Condition::Any(compiled)
                });
            }
        }
        if let Some(inner) = obj.get("not") {
            let compiled = Self::compile_at(inner, depth + 1).map_err(|e| e.under("not"))?;
            return Ok(Condition::Not(Box::new(compiled)));
        }
        Self::compile_leaf(obj)
    }

    fn compile_leaf(obj: &Map<String, Value>) -> Result<Condition, Invalid> {
        let bad = |field: &str, msg: &str| Invalid::new("invalid_condition", field, msg);
        let field = match obj.get("field") {
            Some(Value::String(f)) if !f.is_empty() => f,
            Some(_) => return Err(bad("field", "must be a non-empty string")),
            None => return Err(bad("field", "is required (or use all / any / not)")),
        };
        let op_name = obj
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("op", "is required"))?;
        let op = Op::parse(op_name).ok_or_else(|| {
            let names: Vec<_> = Op::NAMES.iter().map(|(n, _)| *n).collect();
            Invalid::new(
                "unknown_condition_op",
                "op",
                format!(
                    "`{op_name}` is not an op; expected one of {}",
                    names.join(", ")
                ),
            )
        })?;
        let value = obj.get("value").cloned();
        let value = match (op, value) {
            (Op::Exists, None) => Value::Bool(true),
            (Op::Exists, Some(Value::Bool(b))) => Value::Bool(b),
            (Op::Exists, Some(_)) => return Err(bad("value", "must be true or false for exists")),
            (_, None) => return Err(bad("value", "is required")),
            (Op::In, Some(v @ Value::Array(_))) => v,
            (Op::In, Some(_)) => return Err(bad("value", "must be an array for in")),
            (
                Op::Gt | Op::Gte | Op::Lt | Op::Lte,
                Some(v @ (Value::Number(_) | Value::String(_))),
            ) => v,
            (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(_)) => {
                return Err(bad("value", "must be a number or a string to compare"));
            }
            (Op::Prefix, Some(v @ Value::String(_))) => v,
            (Op::Prefix, Some(_)) => return Err(bad("value", "must be a string for prefix")),
            (_, Some(v)) => v,
        };
        let path = parse_path(field).map_err(|e| Invalid::new(e.code, "field", e.message))?;
        Ok(Condition::Leaf { path, op, value })
    }

    /// Evaluates against an event body.
    pub fn matches(&self, event: &Map<String, Value>) -> bool {
        match self {
            Condition::All(cs) => cs.iter().all(|c| c.matches(event)),
            Condition::Any(cs) => cs.iter().any(|c| c.matches(event)),
            Condition::Not(c) => !c.matches(event),
            Condition::Leaf { path, op, value } => eval_leaf(lookup(event, path), *op, value),
        }
    }
}

impl Condition {
    /// A `field == value` that must hold for this condition to match (the leaf itself, or an
    /// `eq` leaf of a top-level `all`): the rule set indexes rules by it.
    pub fn discriminator(&self) -> Option<(&[Segment], &Value)> {
        match self {
            Condition::Leaf {
                path,
                op: Op::Eq,
                value,
            } => Some((path, value)),
            Condition::All(cs) => cs.iter().find_map(|c| match c {
                Condition::Leaf {
                    path,
                    op: Op::Eq,
                    value,
                } => Some((path.as_slice(), value)),
                _ => None,
            }),
            _ => None,
        }
    }
}

/// A key under which values that [`Op::Eq`] finds equal are equal (`1` and `1.0` alike).
pub fn eq_key(v: &Value) -> String {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            format!("n:{}", if f == 0.0 { 0.0 } else { f })
        }
        other => format!("j:{other}"),
    }
}

/// Segments a path may have at most.
const MAX_SEGMENTS: usize = 16;

/// A dotted field path (`member.id`, `dataRecord.fields.priority`, `member.labels.0`) split
/// into segments: the syntax of a condition's `field` and of an endpoint's `orderingKey`.
pub fn parse_path(field: &str) -> Result<Vec<Segment>, Invalid> {
    let bad = |msg: &str| Invalid::new("invalid_path", "", msg);
    if field.is_empty() || field.len() > 512 {
        return Err(bad("must be a dotted path of 1 to 512 characters"));
    }
    let parts: Vec<&str> = field.split('.').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(bad("must have at most 16 segments"));
    }
    if parts
        .iter()
        .any(|p| p.is_empty() || p.chars().any(char::is_whitespace))
    {
        return Err(bad(
            "must be dot-separated names without blanks (`member.id`), none of them empty",
        ));
    }
    Ok(parts
        .into_iter()
        .map(|s| match s.parse::<usize>() {
            Ok(i) => Segment::Index(i, s.to_string()),
            Err(_) => Segment::Key(s.to_string()),
        })
        .collect())
}

/// The value at a compiled path in an event.
pub fn lookup<'a>(event: &'a Map<String, Value>, path: &[Segment]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut cur = match first {
        Segment::Key(k) | Segment::Index(_, k) => event.get(k)?,
    };
    for seg in rest {
        cur = match (seg, cur) {
            (Segment::Index(i, _), Value::Array(items)) => items.get(*i)?,
            (Segment::Key(k) | Segment::Index(_, k), Value::Object(map)) => map.get(k)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn eval_leaf(found: Option<&Value>, op: Op, value: &Value) -> bool {
    match op {
        Op::Exists => found.is_some_and(|v| !v.is_null()) == (value == &Value::Bool(true)),
        Op::Ne => found.is_none_or(|f| !loose_eq(f, value)),
        _ => {
            let Some(found) = found else { return false };
            match op {
                Op::Eq => loose_eq(found, value),
                Op::In => value
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(|v| loose_eq(found, v))),
                Op::Contains => match (found, value) {
                    (Value::Array(items), v) => items.iter().any(|i| loose_eq(i, v)),
                    (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
                    _ => false,
                },
                Op::Prefix => match (found, value) {
                    (Value::String(s), Value::String(p)) => s.starts_with(p.as_str()),
                    _ => false,
                },
                Op::Gt => compare(found, value) == Some(Ordering::Greater),
                Op::Gte => matches!(
                    compare(found, value),
                    Some(Ordering::Greater | Ordering::Equal)
                ),
                Op::Lt => compare(found, value) == Some(Ordering::Less),
                Op::Lte => matches!(
                    compare(found, value),
                    Some(Ordering::Less | Ordering::Equal)
                ),
                Op::Exists | Op::Ne => unreachable!(),
            }
        }
    }
}

/// Equality where `1` and `1.0` are equal (JSON has one number type).
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Map<String, Value> {
        json!({"event": "data_record:created",
            "member": {"id": 123, "labels": ["vip", "beta"], "email": "john@example.com"},
            "dataRecord": {"id": 4567, "fields": {"priority": "high", "amount": 250, "note": null}},
            "items": [{"sku": "a"}, {"sku": "b"}]})
        .as_object()
        .unwrap()
        .clone()
    }

    fn check(cond: Value) -> bool {
        Condition::compile(&cond).unwrap().matches(&event())
    }

    #[test]
    fn every_op_matches_and_misses() {
        let cases = [
            (
                json!({"field": "dataRecord.fields.priority", "op": "eq", "value": "high"}),
                true,
            ),
            (
                json!({"field": "dataRecord.fields.priority", "op": "eq", "value": "low"}),
                false,
            ),
            (
                json!({"field": "dataRecord.id", "op": "eq", "value": 4567.0}),
                true,
            ),
            (
                json!({"field": "dataRecord.fields.priority", "op": "ne", "value": "low"}),
                true,
            ),
            (
                json!({"field": "dataRecord.fields.missing", "op": "ne", "value": "low"}),
                true,
            ),
            (
                json!({"field": "dataRecord.fields.priority", "op": "in", "value": ["high", "urgent"]}),
                true,
            ),
            (
                json!({"field": "dataRecord.fields.priority", "op": "in", "value": ["low"]}),
                false,
            ),
            (
                json!({"field": "member.labels", "op": "contains", "value": "vip"}),
                true,
            ),
            (
                json!({"field": "member.labels", "op": "contains", "value": "gold"}),
                false,
            ),
            (
                json!({"field": "member.email", "op": "contains", "value": "@example"}),
                true,
            ),
            (json!({"field": "member.email", "op": "exists"}), true),
            (
                json!({"field": "dataRecord.fields.note", "op": "exists"}),
                false,
            ),
            (
                json!({"field": "member.phone", "op": "exists", "value": false}),
                true,
            ),
            (
                json!({"field": "dataRecord.fields.amount", "op": "gt", "value": 100}),
                true,
            ),
            (
                json!({"field": "dataRecord.fields.amount", "op": "gte", "value": 250}),
                true,
            ),
            (
                json!({"field": "dataRecord.fields.amount", "op": "lt", "value": 250}),
                false,
            ),
            (
                json!({"field": "dataRecord.fields.amount", "op": "lte", "value": 250}),
                true,
            ),
            (
                json!({"field": "dataRecord.fields.priority", "op": "gt", "value": 1}),
                false,
            ),
            (
                json!({"field": "member.email", "op": "prefix", "value": "john@"}),
                true,
            ),
            (
                json!({"field": "member.email", "op": "prefix", "value": "jane@"}),
                false,
            ),
            (
                json!({"field": "items.1.sku", "op": "eq", "value": "b"}),
                true,
            ),
            (
                json!({"field": "items.5.sku", "op": "eq", "value": "b"}),
                false,
            ),
        ];
        for (cond, expected) in cases {
            assert_eq!(check(cond.clone()), expected, "{cond}");
        }
    }

    #[test]
    fn all_any_not_nest() {
        assert!(check(json!({"all": [
            {"field": "dataRecord.fields.priority", "op": "eq", "value": "high"},
            {"any": [{"field": "member.labels", "op": "contains", "value": "gold"},
                     {"not": {"field": "member.id", "op": "eq", "value": 1}}]}]})));
        assert!(!check(json!({"all": [
            {"field": "dataRecord.fields.priority", "op": "eq", "value": "high"},
            {"not": {"field": "member.labels", "op": "contains", "value": "vip"}}]})));
        assert!(check(json!({"all": []})));
        assert!(!check(json!({"any": []})));
    }

    #[test]
    fn bad_conditions_name_their_field() {
        let err = Condition::compile(&json!({"all": [{"field": "a", "op": "eq", "value": 1},
            {"field": "b", "op": "matches", "value": 1}]}))
        .unwrap_err();
        assert_eq!(
            (err.code, err.field.as_str()),
            ("unknown_condition_op", "all[1].op")
        );
        let err = Condition::compile(&json!({"not": {"field": "a", "op": "in", "value": 1}}))
            .unwrap_err();
        assert_eq!(err.field, "not.value");
        let err = Condition::compile(&json!({"any": {"field": "a"}})).unwrap_err();
        assert_eq!(err.field, "any");
        let err = Condition::compile(&json!({"op": "eq", "value": 1})).unwrap_err();
        assert_eq!(err.field, "field");
        let mut deep = json!({"field": "a", "op": "exists"});
        for _ in 0..20 {
            deep = json!({"not": deep});
        }
        assert!(Condition::compile(&deep).is_err());
    }
}
