//! Workspaces (tenants) and their API keys.
//!
//! Keys are 32 random bytes, so a plain SHA-256 is enough to store them: nobody can brute-force
//! the preimage, and a lookup stays one hash and one `GET` per request (no slow KDF on the hot
//! path). Only the hash is stored; a key is shown once, when it is created.

use rand::RngCore;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::invalid::Invalid;

pub mod keys;

/// Prefix of workspace API keys, so a leaked key is recognisable in logs and scanners.
pub const API_KEY_PREFIX: &str = "sy_";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    pub uuid: String,
    pub name: String,
    pub created_at: String,
}

/// `POST /v1/workspaces` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
}

/// An API key as stored: never the key itself, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub id: String,
    /// The key's first characters, to recognise it (`sy_1a2b3c4d`).
    pub prefix: String,
    pub hash: String,
    pub created_at: String,
    #[serde(default)]
    pub last_used_at: Option<String>,
}

/// An API key as `GET /v1/workspaces/{uuid}/api-keys` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub id: String,
    pub prefix: String,
    pub created_at: String,
    /// When a node last looked the key up in the store (nodes trust a key they checked for
    /// a few seconds, so this is exact to those seconds).
    pub last_used_at: Option<String>,
}

impl KeyRecord {
    /// A record for a new key.
    pub fn new(key: &str) -> KeyRecord {
        KeyRecord {
            id: format!("key_{}", uuid::Uuid::now_v7().simple()),
            prefix: key.chars().take(API_KEY_PREFIX.len() + 8).collect(),
            hash: hash_api_key(key),
            created_at: crate::delivery::now_rfc3339(),
            last_used_at: None,
        }
    }

    pub fn info(&self) -> ApiKeyInfo {
        ApiKeyInfo {
            id: self.id.clone(),
            prefix: self.prefix.clone(),
            created_at: self.created_at.clone(),
            last_used_at: self.last_used_at.clone(),
        }
    }
}

/// What a key's lookup entry holds: its workspace and its id, space-separated.
pub fn key_owner(stored: &str) -> (&str, &str) {
    stored.split_once(' ').unwrap_or((stored, ""))
}

impl NewWorkspace {
    pub fn validate(&self) -> Result<(), Invalid> {
        let n = self.name.trim();
        if n.is_empty() || n.chars().count() > 200 {
            return Err(Invalid::field("name", "must be 1 to 200 characters"));
        }
        Ok(())
    }
}

/// A new random API key.
pub fn generate_api_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{API_KEY_PREFIX}{}", hex::encode(bytes))
}

/// What is stored for a key: its SHA-256, hex.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}
