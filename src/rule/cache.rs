//! The rule cache: compiled [`RuleSet`] snapshots that API handlers evaluate concurrently.
//!
//! Ingest must not funnel through one mailbox, so the cache is a map of immutable `Arc`
//! snapshots behind a lock held only to clone an `Arc`. Each lookup compares the workspace's
//! version key in the store (bumped with every rule change, on any node) with the snapshot's,
//! so a rule saved on node A applies to the next event posted on node B.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::RuleSet;
use crate::store::{Result, Store};

#[derive(Default)]
pub struct RuleCache {
    sets: RwLock<HashMap<String, (u64, Arc<RuleSet>)>>,
}

impl RuleCache {
    /// The current rule set of a workspace.
    pub async fn get(&self, store: &Store, ws: &str) -> Result<Arc<RuleSet>> {
        let version = store.rules_version(ws).await?;
        if let Some((v, set)) = self.sets.read().expect("rule cache lock").get(ws)
            && *v == version
        {
            return Ok(set.clone());
        }
        let (version, rules) = store.rules(ws).await?;
        let set = Arc::new(RuleSet::build(&rules));
        self.sets
            .write()
            .expect("rule cache lock")
            .insert(ws.to_string(), (version, set.clone()));
        Ok(set)
    }
}
