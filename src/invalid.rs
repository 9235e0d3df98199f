//! A refused input, naming the field at fault.
//!
//! Every validator (events, rules, endpoints, config) returns this one type so that the API can
//! turn it into the error body of the contract (`{"error": {"code", "message", "field"}}`)
//! without knowing which validator ran.

/// Input that was refused, with the JSON path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// A snake_case error code for machines (`invalid_field`, `unknown_event_type`, ...).
    pub code: &'static str,
    /// A JSON path such as `conditions.all[0].op`; empty when the whole body is at fault.
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A field error with the generic code.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new("invalid_field", field, message)
    }

    /// Prefixes the path with a parent field (`op` under `conditions.all[0]`).
    pub fn under(mut self, parent: &str) -> Self {
        self.field = match (parent.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => parent.to_string(),
            (false, false) if self.field.starts_with('[') => format!("{parent}{}", self.field),
            (false, false) => format!("{parent}.{}", self.field),
        };
        self
    }
}

/// Deserialises `value` into `T`, naming the failing field on error.
///
/// Valid input, the common case, is deserialised without tracking the path (which costs an
/// allocation per field); the path is tracked only to explain a failure, by deserialising again.
pub fn from_value<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, Invalid> {
    if let Ok(t) = T::deserialize(value) {
        return Ok(t);
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let parent = if path == "." { String::new() } else { path };
        let message = e.into_inner().to_string();
        // serde reports a missing field at its parent's path: name the field itself.
        match message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            Some(name) => Invalid::field(name, "is required").under(&parent),
            None => Invalid::field(parent, message),
        }
    })
}

/// Parses a request body, naming the field at fault (or the whole body when it is not JSON).
///
/// Valid input is parsed once, straight into `T`; only a failure is parsed again, into a value
/// and then with the path tracked, to name the field (and to accept what only that reading
/// accepts, such as a repeated key, whose last value wins, as it always has).
pub fn from_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Invalid> {
    if let Ok(t) = serde_json::from_slice::<T>(body) {
        return Ok(t);
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        Invalid::new(
            "invalid_json",
            "",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    from_value(&value)
}

/// Applies a PATCH body to a stored object: top-level keys replace, `null` removes (back to
/// the default). The caller re-validates the result whole, so a partial update can never
/// leave what a create would have refused.
pub fn merge_patch(
    mut base: serde_json::Value,
    patch: &serde_json::Value,
) -> Result<serde_json::Value, Invalid> {
    let serde_json::Value::Object(changes) = patch else {
        return Err(Invalid::field("", "the body must be a JSON object"));
    };
    if let Some(obj) = base.as_object_mut() {
        for (k, v) in changes {
            if v.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(base)
}
