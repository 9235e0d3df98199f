//! Workspaces and API keys on the embedded store: `ws/W` (the workspace), `wskey/W/{id}` (a
//! key's record, with its last use) and `key/{sha256}` (its lookup entry, `W id`), as JSON in
//! the `cfg` keyspace. One commit writes or removes a key's two entries together.

use super::{EmbeddedStore, Ks, event_key};
use crate::delivery::EntryId;
use crate::store::Result;
use crate::workspace::{
    ApiKeyInfo, KeyRecord, Workspace, generate_api_key, hash_api_key, key_owner,
};

/// Events of a deleted workspace's log removed per commit.
const DELETE_BATCH: usize = 10_000;

impl EmbeddedStore {
    pub async fn create_workspace(&self, ws: &Workspace) -> Result<String> {
        let key = generate_api_key();
        let (ws, record) = (ws.clone(), KeyRecord::new(&key));
        self.write(move |tx| {
            tx.put_json(&format!("ws/{}", ws.uuid), &ws)?;
            put_key(tx, &ws.uuid, &record)
        })
        .await?;
        Ok(key)
    }

    pub async fn workspace(&self, uuid: &str) -> Result<Option<Workspace>> {
        self.get_json(&format!("ws/{uuid}"))
    }

    pub async fn workspaces(&self) -> Result<Vec<Workspace>> {
        let mut all: Vec<Workspace> = self.scan_json("ws/")?;
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(all)
    }

    /// Deletes a workspace's configuration, keys, health and counts in one commit, then its
    /// event log in batches.
    pub async fn delete_workspace(&self, uuid: &str) -> Result<Option<(Vec<String>, Vec<String>)>> {
        if self.workspace(uuid).await?.is_none() {
            return Ok(None);
        }
        let keys: Vec<KeyRecord> = self.scan_json(&format!("wskey/{uuid}/"))?;
        let hashes: Vec<String> = keys.iter().map(|k| k.hash.clone()).collect();
        let endpoints: Vec<String> = self
            .scan_keys(&format!("ep/{uuid}/"))?
            .iter()
            .filter_map(|k| k.rsplit('/').next().map(str::to_string))
            .collect();
        let mut doomed: Vec<String> = hashes.iter().map(|h| format!("key/{h}")).collect();
        for prefix in [
            "wskey",
            "ep",
            "rule",
            "routine",
            "tick",
            "routinelast",
            "idem",
            "health",
            "n",
        ] {
            doomed.extend(self.scan_keys(&format!("{prefix}/{uuid}/"))?);
        }
        for single in ["ws", "epver", "ruleseq", "rulever"] {
            doomed.push(format!("{single}/{uuid}"));
        }
        self.write(move |tx| {
            for k in &doomed {
                tx.remove(Ks::Cfg, k.as_bytes());
            }
            Ok(())
        })
        .await?;
        let (start, end) = (
            event_key(uuid, EntryId::default()),
            event_key(
                uuid,
                EntryId {
                    ms: u64::MAX,
                    seq: u64::MAX,
                },
            ),
        );
        loop {
            let mut batch: Vec<Vec<u8>> = Vec::new();
            for g in self
                .ks(Ks::Ev)
                .range(start.clone()..=end.clone())
                .take(DELETE_BATCH)
            {
                batch.push(g.key().map_err(super::fjall_error)?.to_vec());
            }
            if batch.is_empty() {
                break;
            }
            self.write(move |tx| {
                for k in &batch {
                    tx.remove(Ks::Ev, k);
                }
                Ok(())
            })
            .await?;
        }
        Ok(Some((endpoints, hashes)))
    }

    pub async fn add_api_key(&self, uuid: &str) -> Result<Option<(String, String)>> {
        if self.workspace(uuid).await?.is_none() {
            return Ok(None);
        }
        let key = generate_api_key();
        let (uuid, record) = (uuid.to_string(), KeyRecord::new(&key));
        let id = record.id.clone();
        self.write(move |tx| put_key(tx, &uuid, &record)).await?;
        Ok(Some((id, key)))
    }

    pub async fn api_keys(&self, uuid: &str) -> Result<Option<Vec<ApiKeyInfo>>> {
        if self.workspace(uuid).await?.is_none() {
            return Ok(None);
        }
        let mut keys: Vec<KeyRecord> = self.scan_json(&format!("wskey/{uuid}/"))?;
        keys.reverse();
        Ok(Some(keys.iter().map(KeyRecord::info).collect()))
    }

    pub async fn revoke_api_key(&self, uuid: &str, id: &str) -> Result<Option<String>> {
        let key = format!("wskey/{uuid}/{id}");
        self.write(move |tx| {
            let Some(record) = tx.get_json::<KeyRecord>(&key)? else {
                return Ok(None);
            };
            tx.remove(Ks::Cfg, format!("key/{}", record.hash).as_bytes());
            tx.remove(Ks::Cfg, key.as_bytes());
            Ok(Some(record.hash))
        })
        .await
    }

    pub async fn workspace_for_key(&self, key: &str) -> Result<Option<(Workspace, String)>> {
        let owner: Option<String> = self.get_json(&format!("key/{}", hash_api_key(key)))?;
        let Some(owner) = owner else {
            return Ok(None);
        };
        let (uuid, id) = key_owner(&owner);
        Ok(self.workspace(uuid).await?.map(|ws| (ws, id.to_string())))
    }

    /// Records that key `id` was used now (when it still exists).
    pub async fn touch_api_key(&self, uuid: &str, id: &str) -> Result<()> {
        let key = format!("wskey/{uuid}/{id}");
        self.write(move |tx| {
            if let Some(mut record) = tx.get_json::<KeyRecord>(&key)? {
                record.last_used_at = Some(crate::delivery::now_rfc3339());
                tx.put_json(&key, &record)?;
            }
            Ok(())
        })
        .await
    }
}

fn put_key(tx: &mut super::Tx, uuid: &str, record: &KeyRecord) -> Result<()> {
    tx.put_json(&format!("wskey/{uuid}/{}", record.id), record)?;
    tx.put_json(
        &format!("key/{}", record.hash),
        &format!("{uuid} {}", record.id),
    )
}
