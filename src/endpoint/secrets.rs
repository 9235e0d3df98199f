//! An endpoint's signing secrets: the current one, those rotated out and still signing for
//! their grace period, and the one read that shows them (`GET /v1/endpoints/{id}/secret`).
//! Every other read of an endpoint leaves them out.

use serde::{Deserialize, Serialize};

use super::Endpoint;
use crate::signing::SigningKey;

/// A secret replaced by a rotation, still signing until `expires_at_ms` (unix ms).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetiredSecret {
    pub secret: String,
    pub expires_at_ms: i64,
}

impl Endpoint {
    /// Every secret that signs at `now_ms`: the current one first, then those in their grace.
    pub fn signing_keys(&self, now_ms: i64) -> Vec<SigningKey> {
        std::iter::once(self.secret.as_str())
            .chain(
                self.retired_secrets
                    .iter()
                    .filter(|r| r.expires_at_ms > now_ms)
                    .map(|r| r.secret.as_str()),
            )
            .filter_map(|s| SigningKey::parse(s).ok())
            .collect()
    }

    /// Replaces the secret; the old one keeps signing for `grace_ms`. Expired ones are dropped.
    pub fn rotate(&mut self, new_secret: String, now_ms: i64, grace_ms: i64) {
        self.retired_secrets.retain(|r| r.expires_at_ms > now_ms);
        let old = std::mem::replace(&mut self.secret, new_secret);
        if grace_ms > 0 {
            self.retired_secrets.push(RetiredSecret {
                secret: old,
                expires_at_ms: now_ms + grace_ms,
            });
        }
    }

    /// `GET /v1/endpoints/{id}/secret`: the current secret and those still in their grace
    /// period at `now_ms`.
    pub fn secrets_view(&self, now_ms: i64) -> Secrets {
        Secrets {
            secret: self.secret.clone(),
            previous_secrets: self
                .retired_secrets
                .iter()
                .filter(|r| r.expires_at_ms > now_ms)
                .map(|r| PreviousSecret {
                    secret: r.secret.clone(),
                    valid_until: chrono::DateTime::from_timestamp_millis(r.expires_at_ms)
                        .map(crate::delivery::rfc3339)
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// A rotated-out secret that still signs.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousSecret {
    pub secret: String,
    pub valid_until: String,
}

/// `GET /v1/endpoints/{id}/secret`: the only read that carries secrets.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Secrets {
    pub secret: String,
    /// Rotated-out secrets that still sign, until `validUntil`.
    pub previous_secrets: Vec<PreviousSecret>,
}
