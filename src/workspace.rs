//! Workspaces (tenants) and their API keys.
//!
//! Keys are 32 random bytes, so a plain SHA-256 is enough to store them: nobody can brute-force
//! the preimage, and a lookup stays one hash and one `GET` per request (no slow KDF on the hot
//! path). Only the hash is stored; a key is shown once, when it is created.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::invalid::Invalid;

/// Prefix of workspace API keys, so a leaked key is recognisable in logs and scanners.
pub const API_KEY_PREFIX: &str = "sy_";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    pub uuid: String,
    pub name: String,
    pub created_at: String,
}

/// `POST /v1/workspaces` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    pub name: String,
}

impl NewWorkspace {
    pub fn validate(&self) -> Result<(), Invalid> {
        let n = self.name.trim();
        if n.is_empty() || n.len() > 200 {
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
