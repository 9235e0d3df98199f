//! The tenants role of the store: workspaces and their API keys.
//!
//! A key is stored twice: its lookup entry (the key's SHA-256 → its workspace and id), which
//! authenticates a request in one read, and its record in the workspace (id, prefix,
//! creation, last use), which lists it. Creating writes the record first; revoking and
//! deleting remove the lookup entry first, so a crash between the two never leaves a key that
//! works without a record to revoke it by.
//!
//! Nodes trust a key they looked up for a few seconds (`crate::workspace::keys`), so a
//! revocation is also published as a [`Change`]: every node evicts the key and confirms, and
//! the revoking call returns once all have (or once no cache can still hold it).

use std::time::{Duration, Instant};

use super::{Result, Store};
use crate::workspace::keys::{KeyCache, TTL};
use crate::workspace::{ApiKeyInfo, Workspace};

/// What nodes tell each other through the store (Redis pub/sub).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An endpoint changed: its owner reloads it.
    Endpoint { workspace: String, endpoint: String },
    /// These keys (or every key of `workspace`) no longer authenticate: evict them, then
    /// confirm under `nonce`.
    Keys {
        nonce: String,
        workspace: Option<String>,
        hashes: Vec<String>,
    },
}

impl Change {
    /// `ws\tendpoint`, or `keys\tnonce\tws\thash,hash`.
    pub fn encode(&self) -> String {
        match self {
            Change::Endpoint {
                workspace,
                endpoint,
            } => format!("{workspace}\t{endpoint}"),
            Change::Keys {
                nonce,
                workspace,
                hashes,
            } => format!(
                "keys\t{nonce}\t{}\t{}",
                workspace.as_deref().unwrap_or(""),
                hashes.join(",")
            ),
        }
    }

    pub fn decode(s: &str) -> Option<Change> {
        let mut f = s.split('\t');
        match (f.next()?, f.next()?) {
            ("keys", nonce) => {
                let ws = f.next()?;
                let hashes = f.next()?;
                Some(Change::Keys {
                    nonce: nonce.to_string(),
                    workspace: (!ws.is_empty()).then(|| ws.to_string()),
                    hashes: hashes
                        .split(',')
                        .filter(|h| !h.is_empty())
                        .map(str::to_string)
                        .collect(),
                })
            }
            (ws, ep) => Some(Change::Endpoint {
                workspace: ws.to_string(),
                endpoint: ep.to_string(),
            }),
        }
    }
}

impl Store {
    /// Creates a workspace and its first API key (returned in clear, once).
    pub async fn create_workspace(&self, ws: &Workspace) -> Result<String> {
        each!(self, s => s.create_workspace(ws).await)
    }

    pub async fn workspace(&self, uuid: &str) -> Result<Option<Workspace>> {
        each!(self, s => s.workspace(uuid).await)
    }

    /// Every workspace, newest first.
    pub async fn workspaces(&self) -> Result<Vec<Workspace>> {
        each!(self, s => s.workspaces().await)
    }

    /// Deletes a workspace and everything of it (keys, endpoints, rules, routines, health,
    /// counts, its event log); `None` when there is none. Returns the endpoints it had, whose
    /// owners must learn that they are gone, and the hashes of its keys.
    pub async fn delete_workspace(&self, uuid: &str) -> Result<Option<(Vec<String>, Vec<String>)>> {
        each!(self, s => s.delete_workspace(uuid).await)
    }

    /// Adds an API key to a workspace: its id and the key (in clear, once); `None` when there
    /// is no such workspace.
    pub async fn add_api_key(&self, uuid: &str) -> Result<Option<(String, String)>> {
        each!(self, s => s.add_api_key(uuid).await)
    }

    /// A workspace's keys, newest first; `None` when there is no such workspace.
    pub async fn api_keys(&self, uuid: &str) -> Result<Option<Vec<ApiKeyInfo>>> {
        each!(self, s => s.api_keys(uuid).await)
    }

    /// Removes a key; its hash, or `None` when the workspace has no key of that id.
    pub async fn revoke_api_key(&self, uuid: &str, id: &str) -> Result<Option<String>> {
        each!(self, s => s.revoke_api_key(uuid, id).await)
    }

    /// The workspace an API key belongs to. The key's last use is recorded on the side,
    /// without holding up the request.
    pub async fn workspace_for_key(&self, key: &str) -> Result<Option<Workspace>> {
        let found = each!(self, s => s.workspace_for_key(key).await)?;
        Ok(found.map(|(ws, id)| {
            if !id.is_empty() {
                let (store, uuid) = (self.clone(), ws.uuid.clone());
                tokio::spawn(async move {
                    let touched = each!(store, s => s.touch_api_key(&uuid, &id).await);
                    if let Err(e) = touched {
                        tracing::debug!(error = %e, "cannot record an API key's last use");
                    }
                });
            }
            ws
        }))
    }

    /// Makes every node forget these keys (or every key of `workspace`): this node's cache at
    /// once; on Redis, every node that hears the change confirms its eviction, and this waits
    /// until every live node has (and at least as many as heard it), or until [`TTL`] has
    /// passed: then no cache can hold them any more. A node that does not hear changes
    /// caches nothing, so it cannot be missed. Errors only shorten nothing: on one, this
    /// waits out the TTL, which is always enough.
    pub async fn evict_keys(
        &self,
        cache: &KeyCache,
        hashes: Vec<String>,
        workspace: Option<String>,
    ) -> Result<()> {
        cache.evict(&hashes, workspace.as_deref());
        let Store::Redis(redis) = self else {
            return Ok(());
        };
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let deadline = Instant::now() + TTL;
        let confirmed = async {
            let heard = redis
                .publish(&Change::Keys {
                    nonce: nonce.clone(),
                    workspace,
                    hashes,
                })
                .await?;
            while Instant::now() < deadline {
                let (live, evicted) =
                    futures::future::try_join(redis.node_ids(), redis.confirmed_by(&nonce)).await?;
                if evicted.len() >= heard && live.iter().all(|n| evicted.contains(n)) {
                    return Ok::<bool, super::StoreError>(true);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(false)
        };
        match confirmed.await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "not every node confirmed a key eviction within the cache's lifetime; none trusts the key now"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot confirm a key eviction; waiting out the cache's lifetime");
                tokio::time::sleep_until(deadline.into()).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip() {
        for c in [
            Change::Endpoint {
                workspace: "w".into(),
                endpoint: "ep_1".into(),
            },
            Change::Keys {
                nonce: "n".into(),
                workspace: None,
                hashes: vec!["a".into(), "b".into()],
            },
            Change::Keys {
                nonce: "n".into(),
                workspace: Some("w".into()),
                hashes: vec![],
            },
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
    }
}
