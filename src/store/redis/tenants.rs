//! Workspaces and API keys on Redis.
//!
//! - `P:workspaces`: a sorted set of workspace uuids by creation time (the admin list).
//! - `P:ws:{W}`: the workspace (`uuid`, `name`, `createdAt`); `P:ws:{W}:keys` its keys' records
//!   by id, `P:ws:{W}:keys:used` their last use by id.
//! - `P:key:<sha256>`: a key's lookup entry, `W id`: one `GET` authenticates a request.
//!
//! Every key of a workspace is in the slot of `{W}`, so deleting a workspace removes them in
//! one `DEL`; the lookup entries, the counts (in the partitions' slots) and the routine set
//! are other slots, each removed by its own command before.

use redis::AsyncCommands;

use super::RedisStore;
use crate::store::{Result, StoreError};
use crate::workspace::{
    ApiKeyInfo, KeyRecord, Workspace, generate_api_key, hash_api_key, key_owner,
};

/// `HSET used id now` only while the key's record exists (both keys in the workspace's slot).
static TOUCH: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end return 0",
    )
});

impl RedisStore {
    fn lookup_key(&self, hash: &str) -> String {
        self.key(&format!("key:{hash}"))
    }

    /// Writes a key's record, then its lookup entry (two slots).
    async fn put_key(&self, uuid: &str) -> Result<(String, String)> {
        let key = generate_api_key();
        let record = KeyRecord::new(&key);
        let mut conn = self.conn();
        let _: () = conn
            .hset(
                self.ws_key(uuid, "keys"),
                &record.id,
                serde_json::to_string(&record)?,
            )
            .await?;
        let _: () = conn
            .set(
                self.lookup_key(&record.hash),
                format!("{uuid} {}", record.id),
            )
            .await?;
        Ok((record.id, key))
    }

    /// Creates a workspace and its first API key (returned in clear, once). The workspace is
    /// written before its key: a crash between them leaves a workspace nobody holds a key
    /// to, never a key to nothing.
    pub async fn create_workspace(&self, ws: &Workspace) -> Result<String> {
        let mut conn = self.conn();
        let _: () = conn
            .hset_multiple(
                self.ws_key(&ws.uuid, ""),
                &[
                    ("uuid", &ws.uuid),
                    ("name", &ws.name),
                    ("createdAt", &ws.created_at),
                ],
            )
            .await?;
        let created = chrono::DateTime::parse_from_rfc3339(&ws.created_at)
            .map_or(0, |t| t.timestamp_millis());
        let _: () = conn.zadd(self.key("workspaces"), &ws.uuid, created).await?;
        Ok(self.put_key(&ws.uuid).await?.1)
    }

    pub async fn workspace(&self, uuid: &str) -> Result<Option<Workspace>> {
        let (name, created): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.ws_key(uuid, ""))
            .arg("name")
            .arg("createdAt")
            .query_async(&mut self.conn())
            .await?;
        Ok(name.map(|name| Workspace {
            uuid: uuid.to_string(),
            name,
            created_at: created.unwrap_or_default(),
        }))
    }

    /// Every workspace, newest first.
    pub async fn workspaces(&self) -> Result<Vec<Workspace>> {
        let uuids: Vec<String> = self.conn().zrevrange(self.key("workspaces"), 0, -1).await?;
        let found = futures::future::try_join_all(uuids.iter().map(|u| self.workspace(u))).await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Deletes a workspace and everything of it: its keys' lookup entries first (so they stop
    /// working), its counts and routines, then every key in its slot, then its place in the
    /// list. Returns its endpoints and its keys' hashes.
    pub async fn delete_workspace(&self, uuid: &str) -> Result<Option<(Vec<String>, Vec<String>)>> {
        if self.workspace(uuid).await?.is_none() {
            return Ok(None);
        }
        let mut conn = self.conn();
        let records: Vec<String> = conn.hvals(self.ws_key(uuid, "keys")).await?;
        let hashes: Vec<String> = records
            .iter()
            .filter_map(|r| serde_json::from_str::<KeyRecord>(r).ok())
            .map(|r| r.hash)
            .collect();
        for h in &hashes {
            let _: () = conn.del(self.lookup_key(h)).await?;
        }
        let endpoints: Vec<String> = conn.hkeys(self.ws_key(uuid, "ep")).await?;
        for ep in &endpoints {
            let fields: Vec<String> = ["c", "r", "s", "f"]
                .iter()
                .map(|f| format!("{uuid}|{ep}|{f}"))
                .collect();
            let _: () = conn
                .hdel(self.counts_key(self.partition_of(ep)), fields)
                .await?;
        }
        let (_, rules) = self.rules(uuid).await?;
        for rule in &rules {
            let _: () = conn
                .srem(self.key("routines"), format!("{uuid}\t{}", rule.id))
                .await?;
        }
        let mut doomed: Vec<String> = [
            "",
            "ep",
            "ep:ver",
            "rules",
            "rules:ver",
            "rules:seq",
            "ev",
            "keys",
            "keys:used",
        ]
        .iter()
        .map(|k| self.ws_key(uuid, k))
        .collect();
        doomed.extend(endpoints.iter().map(|ep| self.health_key(uuid, ep)));
        doomed.extend(
            rules
                .iter()
                .map(|r| self.ws_key(uuid, &format!("routine:{}:last", r.uuid))),
        );
        let _: () = conn.del(doomed).await?;
        let _: () = conn.zrem(self.key("workspaces"), uuid).await?;
        Ok(Some((endpoints, hashes)))
    }

    /// Adds an API key to an existing workspace; `None` when there is no such workspace.
    pub async fn add_api_key(&self, uuid: &str) -> Result<Option<(String, String)>> {
        if self.workspace(uuid).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.put_key(uuid).await?))
    }

    /// A workspace's keys, newest first (ids are time-ordered).
    pub async fn api_keys(&self, uuid: &str) -> Result<Option<Vec<ApiKeyInfo>>> {
        if self.workspace(uuid).await?.is_none() {
            return Ok(None);
        }
        let mut conn = self.conn();
        let records: Vec<String> = conn.hvals(self.ws_key(uuid, "keys")).await?;
        let used: std::collections::HashMap<String, String> =
            conn.hgetall(self.ws_key(uuid, "keys:used")).await?;
        let mut keys = records
            .iter()
            .map(|r| serde_json::from_str::<KeyRecord>(r).map_err(StoreError::from))
            .collect::<Result<Vec<_>>>()?;
        keys.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(Some(
            keys.into_iter()
                .map(|mut k| {
                    k.last_used_at = used.get(&k.id).cloned();
                    k.info()
                })
                .collect(),
        ))
    }

    /// Removes a key: its lookup entry first (it stops working), then its record.
    pub async fn revoke_api_key(&self, uuid: &str, id: &str) -> Result<Option<String>> {
        let mut conn = self.conn();
        let record: Option<String> = conn.hget(self.ws_key(uuid, "keys"), id).await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let record: KeyRecord = serde_json::from_str(&record)?;
        let _: () = conn.del(self.lookup_key(&record.hash)).await?;
        redis::pipe()
            .hdel(self.ws_key(uuid, "keys"), id)
            .ignore()
            .hdel(self.ws_key(uuid, "keys:used"), id)
            .ignore()
            .exec_async(&mut conn)
            .await?;
        Ok(Some(record.hash))
    }

    /// The workspace an API key belongs to, and the key's id.
    pub async fn workspace_for_key(&self, key: &str) -> Result<Option<(Workspace, String)>> {
        let owner: Option<String> = self.conn().get(self.lookup_key(&hash_api_key(key))).await?;
        let Some(owner) = owner else {
            return Ok(None);
        };
        let (uuid, id) = key_owner(&owner);
        Ok(self.workspace(uuid).await?.map(|ws| (ws, id.to_string())))
    }

    /// Records that key `id` of workspace `uuid` was used now, if it still exists (a late
    /// touch must not bring back a revoked key's or a deleted workspace's entry).
    pub async fn touch_api_key(&self, uuid: &str, id: &str) -> Result<()> {
        let _: () = TOUCH
            .key(self.ws_key(uuid, "keys"))
            .key(self.ws_key(uuid, "keys:used"))
            .arg(id)
            .arg(crate::delivery::now_rfc3339())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }
}
