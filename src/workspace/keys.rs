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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Workspace, hash_api_key};

/// How long a valid key is trusted without asking the store again.
pub const TTL: Duration = Duration::from_secs(5);
/// Keys kept at most.
const MAX_KEYS: usize = 100_000;

pub struct KeyCache {
    keys: RwLock<HashMap<String, (Workspace, Instant)>>,
    /// Bumped by every eviction: a lookup that started before one may not cache its answer
    /// (the key may have been revoked between the store's answer and the `put`).
    generation: AtomicU64,
    /// Whether this node hears revocations. On Redis, keys are cached only while the change
    /// listener is subscribed (a node that cannot hear a revocation must not trust a key);
    /// a single embedded node revokes in its own cache, so it always can.
    hears: AtomicBool,
}

impl Default for KeyCache {
    /// A cache that always hears revocations (one node, no pub/sub).
    fn default() -> Self {
        KeyCache::new(true)
    }
}

impl KeyCache {
    /// `hears`: whether revocations reach it from the start (`false` on Redis until the change
    /// listener has subscribed).
    pub fn new(hears: bool) -> KeyCache {
        KeyCache {
            keys: RwLock::default(),
            generation: AtomicU64::new(0),
            hears: AtomicBool::new(hears),
        }
    }

    /// The workspace of `key` if it was valid less than [`TTL`] ago.
    pub fn get(&self, key: &str) -> Option<Workspace> {
        let hash = hash_api_key(key);
        let keys = self.keys.read().expect("key cache lock");
        keys.get(&hash)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(ws, _)| ws.clone())
    }

    /// The eviction count, read before a store lookup whose answer may be cached.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Forgets these key hashes (revoked), or every key of workspace `ws` when given.
    pub fn evict(&self, hashes: &[String], ws: Option<&str>) {
        let mut keys = self.keys.write().expect("key cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        for h in hashes {
            keys.remove(h);
        }
        if let Some(ws) = ws {
            keys.retain(|_, (w, _)| w.uuid != ws);
        }
    }

    /// Whether revocations reach this cache: when they stop (the listener lost its
    /// subscription), everything is forgotten and nothing is cached until they reach it again.
    pub fn set_hears(&self, hears: bool) {
        let mut keys = self.keys.write().expect("key cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        keys.clear();
        self.hears.store(hears, Ordering::SeqCst);
    }

    /// `key` was found valid for `ws` by a lookup that started at eviction count `since`: it
    /// is cached only if no eviction happened meanwhile and revocations reach this cache.
    pub fn put(&self, key: &str, ws: &Workspace, since: u64) {
        let mut keys = self.keys.write().expect("key cache lock");
        if self.generation.load(Ordering::SeqCst) != since || !self.hears.load(Ordering::SeqCst) {
            return;
        }
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(hash_api_key(key), (ws.clone(), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> Workspace {
        Workspace {
            uuid: "w".into(),
            name: "W".into(),
            created_at: String::new(),
        }
    }

    #[test]
    fn a_valid_key_is_remembered_and_only_that_key() {
        let cache = KeyCache::default();
        let ws = workspace();
        assert!(cache.get("sy_a").is_none());
        cache.put("sy_a", &ws, cache.generation());
        assert_eq!(cache.get("sy_a"), Some(ws.clone()));
        assert!(cache.get("sy_b").is_none());
        cache.evict(&[hash_api_key("sy_a")], None);
        assert!(cache.get("sy_a").is_none(), "a revoked key is forgotten");
        cache.put("sy_a", &ws, cache.generation());
        cache.put("sy_c", &ws, cache.generation());
        cache.evict(&[], Some("w"));
        assert!(cache.get("sy_a").is_none() && cache.get("sy_c").is_none());
    }

    #[test]
    fn a_lookup_that_raced_a_revocation_or_a_deaf_cache_caches_nothing() {
        let cache = KeyCache::default();
        let ws = workspace();
        let before = cache.generation();
        cache.evict(&[hash_api_key("sy_a")], None);
        cache.put("sy_a", &ws, before);
        assert!(
            cache.get("sy_a").is_none(),
            "the answer predates the revocation"
        );
        let deaf = KeyCache::new(false);
        deaf.put("sy_a", &ws, deaf.generation());
        assert!(deaf.get("sy_a").is_none(), "no revocation could reach it");
        deaf.set_hears(true);
        deaf.put("sy_a", &ws, deaf.generation());
        assert!(deaf.get("sy_a").is_some());
        deaf.set_hears(false);
        assert!(
            deaf.get("sy_a").is_none(),
            "a lost subscription forgets everything"
        );
    }
}
