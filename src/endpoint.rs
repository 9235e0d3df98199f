//! Endpoints: where a workspace's webhooks go, and every per-endpoint policy.
//!
//! The API takes an [`EndpointSpec`] (only `url` required; the defaults below are the contract's);
//! a PATCH is merged into the stored spec's JSON and the result validated as a whole, so a
//! partial update can never leave an endpoint that a create would have refused.

pub mod health;
mod secrets;

pub use secrets::{PreviousSecret, RetiredSecret, Secrets};

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::invalid::{Invalid, from_value};

/// Default per-attempt timeout: 15 s.
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
/// Longest timeout an endpoint may ask for.
const MAX_TIMEOUT_MS: u64 = 300_000;
/// Longest backoff delay an endpoint may ask for: a week.
const MAX_DELAY_CEILING_MS: u64 = 7 * 24 * 3600 * 1000;
/// Headers an endpoint may not set: those Switchyard sets itself (`webhook-*` too), and the
/// hop-by-hop, framing and encoding headers, which describe one connection or the body's
/// encoding rather than the webhook (a `Content-Encoding: gzip` on a plain body, or an
/// `Upgrade`, would make receivers misread the request). `Authorization` stays allowed:
/// receivers use it.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];
/// Custom headers per endpoint at most.
pub const MAX_HEADERS: usize = 32;
/// Longest custom header value, in bytes.
pub const MAX_HEADER_VALUE: usize = 4 * 1024;
/// Custom header names and values together, in bytes: every attempt's log stores them.
pub const MAX_HEADERS_TOTAL: usize = 16 * 1024;

/// Per-endpoint delivery rate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    #[schemars(range(min = 1))]
    pub per_second: u32,
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub burst: u32,
}

fn one() -> u32 {
    1
}

/// `strict`: one delivery at a time in event order (retries included). `unordered`: up to
/// `maxInFlight` at once.
#[derive(
    Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    #[default]
    Strict,
    Unordered,
}

/// Exponential backoff with jitter: attempt 1 now, then `initialDelayMs * multiplier^(n-1)`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "RetryPolicy::default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    #[serde(default = "RetryPolicy::default_initial")]
    pub initial_delay_ms: u64,
    #[serde(default = "RetryPolicy::default_multiplier")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub multiplier: f64,
    #[serde(default = "RetryPolicy::default_max_delay")]
    #[schemars(range(max = 604_800_000))]
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    /// The product page's policy: 5 attempts, the first now, then 10 s, 20 s, 40 s, 80 s.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay_ms: 10_000,
            multiplier: 2.0,
            max_delay_ms: 3_600_000,
        }
    }
}

impl RetryPolicy {
    fn default_max_attempts() -> u32 {
        Self::default().max_attempts
    }
    fn default_initial() -> u64 {
        Self::default().initial_delay_ms
    }
    fn default_multiplier() -> f64 {
        Self::default().multiplier
    }
    fn default_max_delay() -> u64 {
        Self::default().max_delay_ms
    }

    /// The delay before attempt `attempts_done + 1`, before jitter.
    pub fn delay_after(&self, attempts_done: u32) -> Duration {
        let exp = attempts_done.saturating_sub(1).min(64) as i32;
        let ms = self.initial_delay_ms as f64 * self.multiplier.powi(exp);
        Duration::from_millis(ms.min(self.max_delay_ms as f64) as u64)
    }

    /// [`Self::delay_after`] with ±10 % jitter, so retries of many deliveries do not align.
    pub fn jittered_delay_after(&self, attempts_done: u32) -> Duration {
        let base = self.delay_after(attempts_done);
        base.mul_f64(rand::random_range(0.9..=1.1))
    }

    fn validate(&self) -> Result<(), Invalid> {
        if !(1..=100).contains(&self.max_attempts) {
            return Err(Invalid::field("retry.maxAttempts", "must be 1 to 100"));
        }
        if !(1.0..=10.0).contains(&self.multiplier) {
            return Err(Invalid::field("retry.multiplier", "must be 1.0 to 10.0"));
        }
        if self.max_delay_ms > MAX_DELAY_CEILING_MS {
            return Err(Invalid::field("retry.maxDelayMs", "must be at most a week"));
        }
        if self.initial_delay_ms > self.max_delay_ms {
            return Err(Invalid::field(
                "retry.initialDelayMs",
                "must not exceed maxDelayMs",
            ));
        }
        Ok(())
    }
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_in_flight() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// An endpoint as clients write it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    /// `https://`, at most 2048 characters, not a private address.
    #[schemars(length(max = 2048), extend("format" = "uri"))]
    pub url: String,
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub description: String,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub ordering: Ordering,
    #[serde(default = "default_in_flight")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_in_flight: u32,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 300_000))]
    pub timeout_ms: u64,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A dotted path into the event (`member.id`): with `strict`, order is kept per value of
    /// that field, up to `maxInFlight` values in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// The body's shape when it is not the payload as it is (`crate::transform`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<crate::transform::TransformSpec>,
}

impl EndpointSpec {
    fn validate_headers(&self) -> Result<(), Invalid> {
        if self.headers.len() > MAX_HEADERS {
            return Err(Invalid::field(
                "headers",
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut total = 0;
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("webhook-") || RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(Invalid::field(
                    field,
                    "is set by Switchyard or describes the connection, and may not be set",
                ));
            }
            if !seen.insert(lower) {
                return Err(Invalid::field(
                    field,
                    "is given twice (header names are case-insensitive)",
                ));
            }
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(Invalid::field(field, "is not a valid header name"));
            }
            if value.len() > MAX_HEADER_VALUE {
                return Err(Invalid::field(
                    field,
                    format!("must be at most {MAX_HEADER_VALUE} bytes"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(Invalid::field(field, "is not a valid header value"));
            }
            total += name.len() + value.len();
        }
        if total > MAX_HEADERS_TOTAL {
            return Err(Invalid::field(
                "headers",
                format!("names and values must total at most {MAX_HEADERS_TOTAL} bytes"),
            ));
        }
        Ok(())
    }

    /// Parses and validates a create body (everything but the SSRF check, which resolves DNS).
    pub fn from_json(value: &Value) -> Result<(EndpointSpec, Url), Invalid> {
        let mut spec: EndpointSpec = from_value(value)?;
        // Surrounding blanks are a paste artefact: trimmed. Blanks or control characters
        // inside are refused (the URL parser would silently drop tabs and newlines, so the
        // URL stored and the URL called would differ).
        spec.url = spec
            .url
            .trim_matches(|c: char| c.is_whitespace())
            .to_string();
        let url = spec.validate()?;
        Ok((spec, url))
    }

    /// Applies a PATCH body: top-level keys replace, `null` resets to the default.
    pub fn patched(&self, patch: &Value) -> Result<(EndpointSpec, Url), Invalid> {
        let merged = crate::invalid::merge_patch(
            serde_json::to_value(self).expect("a spec serialises"),
            patch,
        )?;
        Self::from_json(&merged)
    }

    fn validate(&self) -> Result<Url, Invalid> {
        if self.url.chars().count() > 2048 {
            return Err(Invalid::field("url", "must be at most 2048 characters"));
        }
        if self
            .url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Invalid::new(
                "invalid_url",
                "url",
                "must not contain blanks or control characters",
            ));
        }
        let url = Url::parse(&self.url)
            .map_err(|e| Invalid::new("invalid_url", "url", format!("is not a URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Invalid::new(
                "invalid_url",
                "url",
                "must not carry credentials",
            ));
        }
        if self.description.chars().count() > 1000 {
            return Err(Invalid::field(
                "description",
                "must be at most 1000 characters",
            ));
        }
        if let Some(rl) = self.rate_limit {
            if rl.per_second == 0 {
                return Err(Invalid::field("rateLimit.perSecond", "must be at least 1"));
            }
            if rl.burst == 0 {
                return Err(Invalid::field("rateLimit.burst", "must be at least 1"));
            }
        }
        if !(1..=1000).contains(&self.max_in_flight) {
            return Err(Invalid::field("maxInFlight", "must be 1 to 1000"));
        }
        if self.ordering == Ordering::Strict
            && self.ordering_key.is_none()
            && self.max_in_flight != 1
        {
            return Err(Invalid::field(
                "maxInFlight",
                "must be 1 when ordering is strict without an orderingKey (one sequence per endpoint)",
            ));
        }
        if let Some(path) = &self.ordering_key {
            crate::rule::condition::parse_path(path).map_err(|e| e.under("orderingKey"))?;
        }
        if let Some(t) = &self.transform {
            t.compile()?;
        }
        self.retry.validate()?;
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(Invalid::field("timeoutMs", "must be 1 to 300000"));
        }
        self.validate_headers()?;
        Ok(url)
    }
}

/// A stored endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: String,
    #[serde(flatten)]
    pub spec: EndpointSpec,
    /// The current signing secret.
    pub secret: String,
    /// Rotated-out secrets in their grace period. Stored, never shown by the API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_secrets: Vec<RetiredSecret>,
    pub created_at: String,
    pub updated_at: String,
    /// The transform, compiled on first use (so once per cached copy of the endpoint).
    #[serde(skip)]
    pub compiled: CompiledTransform,
}

/// An endpoint's compiled transform, made when first asked for. Not part of what is stored
/// or compared.
#[derive(Debug, Clone, Default)]
pub struct CompiledTransform(
    std::sync::OnceLock<Option<Result<crate::transform::Transform, String>>>,
);

impl PartialEq for CompiledTransform {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Longest ordering-key value kept as it is; a longer one is kept as its SHA-256.
const MAX_KEY_VALUE: usize = 256;

impl Endpoint {
    /// The value of this endpoint's `orderingKey` in an event: a string as it is, another
    /// scalar as its JSON text, an absent field as `""`. Without an `orderingKey`, `""`.
    pub fn ordering_key_of(&self, event: &serde_json::Map<String, Value>) -> String {
        let Some(path) = &self.spec.ordering_key else {
            return String::new();
        };
        let Ok(segments) = crate::rule::condition::parse_path(path) else {
            return String::new();
        };
        let value = match crate::rule::condition::lookup(event, &segments) {
            None | Some(Value::Null) => return String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        if value.len() > MAX_KEY_VALUE {
            use sha2::Digest;
            return hex::encode(sha2::Sha256::digest(value.as_bytes()));
        }
        value
    }

    /// The endpoint's transform, compiled; `None` when the body is the payload as it is. A
    /// stored transform compiled when it was saved; should it not compile now (a template
    /// engine upgrade), the error is returned, so its deliveries fail visibly rather than
    /// going out untransformed.
    pub fn transform(&self) -> Option<Result<&crate::transform::Transform, &str>> {
        self.compiled
            .0
            .get_or_init(|| {
                self.spec
                    .transform
                    .as_ref()
                    .map(|t| t.compile().map_err(|e| e.to_string()))
            })
            .as_ref()
            .map(|r| r.as_ref().map_err(String::as_str))
    }
}

#[cfg(test)]
mod tests;
