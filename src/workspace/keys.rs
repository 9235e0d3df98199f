//! API keys seen lately, so a busy producer's requests do not each cost two store round trips
//! (the key's hash, then its workspace) before any work.
//!
//! Only keys that were valid are kept, for [`TTL`]: a key unknown to the store is looked up
//! every time (a guess earns nothing). A revoked key (or every key of a deleted workspace) is
//! evicted from every node's cache before the revocation is answered: the node that revokes
//! evicts its own and publishes the hashes, and waits for the other nodes to confirm or for
//! `TTL` to pass (`crate::cluster::listen_for_changes`), so no node trusts it afterwards. The
//! map is cleared when it reaches [`MAX_KEYS`], so it cannot grow without bound however many
//! keys are used.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::{Workspace, hash_api_key};

/// How long a valid key is trusted without asking the store again.
pub const TTL: Duration = Duration::from_secs(5);
/// Keys kept at most.
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
pub struct KeyCache {
    keys: RwLock<HashMap<String, (Workspace, Instant)>>,
}

impl KeyCache {
    /// The workspace of `key` if it was valid less than [`TTL`] ago.
    pub fn get(&self, key: &str) -> Option<Workspace> {
        let hash = hash_api_key(key);
        let keys = self.keys.read().expect("key cache lock");
        keys.get(&hash)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(ws, _)| ws.clone())
    }

    /// Forgets these key hashes (revoked), or every key of workspace `ws` when given.
    pub fn evict(&self, hashes: &[String], ws: Option<&str>) {
        let mut keys = self.keys.write().expect("key cache lock");
        for h in hashes {
            keys.remove(h);
        }
        if let Some(ws) = ws {
            keys.retain(|_, (w, _)| w.uuid != ws);
        }
    }

    /// `key` was just found valid for `ws`.
    pub fn put(&self, key: &str, ws: &Workspace) {
        let mut keys = self.keys.write().expect("key cache lock");
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(hash_api_key(key), (ws.clone(), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_key_is_remembered_and_only_that_key() {
        let cache = KeyCache::default();
        let ws = Workspace {
            uuid: "w".into(),
            name: "W".into(),
            created_at: String::new(),
        };
        assert!(cache.get("sy_a").is_none());
        cache.put("sy_a", &ws);
        assert_eq!(cache.get("sy_a"), Some(ws.clone()));
        assert!(cache.get("sy_b").is_none());
        cache.evict(&[hash_api_key("sy_a")], None);
        assert!(cache.get("sy_a").is_none(), "a revoked key is forgotten");
        cache.put("sy_a", &ws);
        cache.put("sy_c", &ws);
        cache.evict(&[], Some("w"));
        assert!(cache.get("sy_a").is_none() && cache.get("sy_c").is_none());
    }
}
