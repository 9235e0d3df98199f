//! The workspace cache: compiled [`RuleSet`] snapshots and parsed endpoints that ingest
//! evaluates concurrently.
//!
//! Ingest must not funnel through one mailbox, nor read and parse every endpoint of every
//! rule that fires on every request, so the cache keeps immutable `Arc` snapshots behind locks
//! held only to clone an `Arc`. Each lookup reads the workspace's two version keys in one
//! round trip (bumped with every rule change and every endpoint change, on any node) and
//! compares them with the snapshots', so a change saved on node A applies to the next event
//! posted on node B. Endpoints are loaded lazily, by id, and forgotten together when their
//! version moves. Where the store checks the versions inside the ingest's own write (one
//! Redis), the API skips that round trip: it plans with [`WorkspaceCache::cached`] and plans
//! again through [`WorkspaceCache::get`] only when the write answers that a version moved.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::endpoint::Endpoint;
use crate::rule::RuleSet;
use crate::store::{Result, Store};

/// A workspace's parsed endpoints by id, as of one endpoint version.
type Endpoints = (u64, HashMap<String, Arc<Endpoint>>);

#[derive(Default)]
pub struct WorkspaceCache {
    rules: RwLock<HashMap<String, (u64, Arc<RuleSet>)>>,
    endpoints: RwLock<HashMap<String, Endpoints>>,
}

/// What one ingest of a workspace works with.
pub struct Snapshot {
    pub rules: Arc<RuleSet>,
    rules_version: u64,
    endpoints_version: u64,
}

impl Snapshot {
    /// The rule and endpoint versions this snapshot holds, for a write that checks them
    /// ([`Store::ingest`] with `expect`).
    pub fn versions(&self) -> (u64, u64) {
        (self.rules_version, self.endpoints_version)
    }
}

impl WorkspaceCache {
    /// The current rule set of a workspace, and the endpoint version it was read with.
    pub async fn get(&self, store: &Store, ws: &str) -> Result<Snapshot> {
        let (rules_version, endpoints_version) = store.versions(ws).await?;
        let cached = self
            .rules
            .read()
            .expect("cache lock")
            .get(ws)
            .filter(|(v, _)| *v == rules_version)
            .map(|(_, set)| set.clone());
        let (rules_version, rules) = match cached {
            Some(set) => (rules_version, set),
            None => {
                let (version, rules) = store.rules(ws).await?;
                let set = Arc::new(RuleSet::build(&rules));
                self.rules
                    .write()
                    .expect("cache lock")
                    .insert(ws.to_string(), (version, set.clone()));
                (version, set)
            }
        };
        Ok(Snapshot {
            rules,
            rules_version,
            endpoints_version,
        })
    }

    /// The cached rule set and endpoint version of a workspace as they are, without reading
    /// the versions: for a write that checks them itself and is retried through [`Self::get`]
    /// when they moved. `None` until both were loaded once.
    pub fn cached(&self, ws: &str) -> Option<Snapshot> {
        let (rules_version, rules) = self.rules.read().expect("cache lock").get(ws)?.clone();
        let endpoints_version = self.endpoints.read().expect("cache lock").get(ws)?.0;
        Some(Snapshot {
            rules,
            rules_version,
            endpoints_version,
        })
    }

    /// The endpoints of these ids that exist, as of the snapshot's version.
    pub async fn endpoints(
        &self,
        store: &Store,
        ws: &str,
        snapshot: &Snapshot,
        ids: HashSet<&str>,
    ) -> Result<HashMap<String, Arc<Endpoint>>> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut missing = HashSet::new();
        {
            let cache = self.endpoints.read().expect("cache lock");
            let current = cache
                .get(ws)
                .filter(|(v, _)| *v == snapshot.endpoints_version);
            for id in ids {
                match current.and_then(|(_, eps)| eps.get(id)) {
                    Some(ep) => {
                        out.insert(id.to_string(), ep.clone());
                    }
                    None => {
                        missing.insert(id);
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let loaded = store.endpoints_by_id(ws, missing).await?;
        let mut cache = self.endpoints.write().expect("cache lock");
        let entry = cache
            .entry(ws.to_string())
            .or_insert_with(|| (snapshot.endpoints_version, HashMap::new()));
        if entry.0 != snapshot.endpoints_version {
            *entry = (snapshot.endpoints_version, HashMap::new());
        }
        for (id, ep) in loaded {
            let ep = Arc::new(ep);
            entry.1.insert(id.clone(), ep.clone());
            out.insert(id, ep);
        }
        Ok(out)
    }
}
