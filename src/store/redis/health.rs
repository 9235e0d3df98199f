//! Endpoint health: the breaker and failure clock an endpoint actor persists, so any node can
//! answer `GET /v1/endpoints/{id}` without asking the owner (the counts are kept by ingest and
//! the outcome commits, in `jobs`).

use redis::AsyncCommands;

use super::RedisStore;
use crate::store::{Health, Result};

impl RedisStore {
    pub(crate) fn health_key(&self, ws: &str, ep: &str) -> String {
        self.ws_key(ws, &format!("ep:{ep}:health"))
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
}
