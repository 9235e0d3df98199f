//! Endpoint health: the breaker and failure clock an endpoint actor persists, and the delivery
//! counts kept up to date by every status change, so any node can answer
//! `GET /v1/endpoints/{id}` without asking the owner.

use std::collections::HashMap;

use redis::AsyncCommands;

use super::RedisStore;
use crate::store::{Counts, Health, Result};

impl RedisStore {
    pub(crate) fn health_key(&self, ws: &str, ep: &str) -> String {
        self.ws_key(ws, &format!("ep:{ep}:health"))
    }

    /// In the endpoint's partition slot: every status change moves it in the same script.
    pub(crate) fn stats_key(&self, ws: &str, ep: &str) -> String {
        self.part_key(self.partition_of(ep), ws, &format!("ep:{ep}:stats"))
    }

    pub async fn save_health(&self, ws: &str, ep: &str, health: &Health) -> Result<()> {
        let _: () = self
            .conn()
            .set(self.health_key(ws, ep), serde_json::to_string(health)?)
            .await?;
        Ok(())
    }

    pub async fn health(&self, ws: &str, ep: &str) -> Result<Health> {
        let json: Option<String> = self.conn().get(self.health_key(ws, ep)).await?;
        Ok(json
            .map(|j| serde_json::from_str(&j))
            .transpose()?
            .unwrap_or_default())
    }

    pub async fn counts(&self, ws: &str, ep: &str) -> Result<Counts> {
        let h: HashMap<String, i64> = self.conn().hgetall(self.stats_key(ws, ep)).await?;
        Ok(Counts::from_map(&h))
    }
}
