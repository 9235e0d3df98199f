//! Configuration on the embedded store: endpoints, rules, routines and endpoint health, as
//! JSON in the `cfg` keyspace.

use super::{EmbeddedStore, Ks};
use crate::endpoint::Endpoint;
use crate::rule::Rule;
use crate::store::{Health, Result};

impl EmbeddedStore {
    pub async fn put_endpoint(&self, ws: &str, ep: &Endpoint) -> Result<()> {
        let (key, ep, ws) = (format!("ep/{ws}/{}", ep.id), ep.clone(), ws.to_string());
        self.write(move |tx| {
            tx.put_json(&key, &ep)?;
            Self::bump(tx, &format!("epver/{ws}"))
        })
        .await
    }

    pub async fn endpoint(&self, ws: &str, id: &str) -> Result<Option<Endpoint>> {
        self.get_json(&format!("ep/{ws}/{id}"))
    }

    pub async fn endpoints(&self, ws: &str) -> Result<Vec<Endpoint>> {
        let mut eps: Vec<Endpoint> = self.scan_json(&format!("ep/{ws}/"))?;
        eps.reverse();
        Ok(eps)
    }

    pub async fn endpoints_by_id(
        &self,
        ws: &str,
        ids: std::collections::HashSet<&str>,
    ) -> Result<std::collections::HashMap<String, Endpoint>> {
        let mut out = std::collections::HashMap::new();
        for id in ids {
            if let Some(ep) = self.get_json::<Endpoint>(&format!("ep/{ws}/{id}"))? {
                out.insert(ep.id.clone(), ep);
            }
        }
        Ok(out)
    }

    pub async fn delete_endpoint(&self, ws: &str, id: &str) -> Result<bool> {
        let key = format!("ep/{ws}/{id}");
        let ver = format!("epver/{ws}");
        self.write(move |tx| {
            let existed = tx.get(Ks::Cfg, key.as_bytes())?.is_some();
            tx.remove(Ks::Cfg, key.as_bytes());
            Self::bump(tx, &ver)?;
            Ok(existed)
        })
        .await
    }

    pub async fn next_rule_id(&self, ws: &str) -> Result<u64> {
        let key = format!("ruleseq/{ws}");
        self.write(move |tx| {
            let next = tx.get_json::<u64>(&key)?.unwrap_or(0) + 1;
            tx.put_json(&key, &next)?;
            Ok(next)
        })
        .await
    }

    fn bump(tx: &mut super::Tx, key: &str) -> Result<()> {
        let v = tx.get_json::<u64>(key)?.unwrap_or(0) + 1;
        tx.put_json(key, &v)
    }

    fn bump_version(tx: &mut super::Tx, ws: &str) -> Result<()> {
        Self::bump(tx, &format!("rulever/{ws}"))
    }

    pub async fn put_rule(&self, ws: &str, rule: &Rule) -> Result<()> {
        let (ws, rule) = (ws.to_string(), rule.clone());
        self.write(move |tx| {
            tx.put_json(&format!("rule/{ws}/{:020}", rule.id), &rule)?;
            let marker = format!("routine/{ws}/{:020}", rule.id);
            if rule.spec.schedule.is_some() {
                tx.put(Ks::Cfg, marker.as_bytes(), Vec::new());
            } else {
                tx.remove(Ks::Cfg, marker.as_bytes());
            }
            Self::bump_version(tx, &ws)
        })
        .await
    }

    pub async fn rule(&self, ws: &str, id: u64) -> Result<Option<Rule>> {
        self.get_json(&format!("rule/{ws}/{id:020}"))
    }

    pub async fn delete_rule(&self, ws: &str, id: u64) -> Result<bool> {
        let ws = ws.to_string();
        self.write(move |tx| {
            let key = format!("rule/{ws}/{id:020}");
            let existed = tx.get(Ks::Cfg, key.as_bytes())?.is_some();
            tx.remove(Ks::Cfg, key.as_bytes());
            tx.remove(Ks::Cfg, format!("routine/{ws}/{id:020}").as_bytes());
            Self::bump_version(tx, &ws)?;
            Ok(existed)
        })
        .await
    }

    pub async fn routines(&self) -> Result<Vec<(String, Rule)>> {
        let mut out = Vec::new();
        for key in self.scan_keys("routine/")? {
            let rest = &key["routine/".len()..];
            let Some((ws, id)) = rest.split_once('/') else {
                continue;
            };
            if let Some(rule) = self.get_json::<Rule>(&format!("rule/{ws}/{id}"))? {
                out.push((ws.to_string(), rule));
            }
        }
        Ok(out)
    }

    pub async fn claim_tick(&self, ws: &str, uuid: &str, at_ms: i64) -> Result<bool> {
        let (tick, last) = (
            format!("tick/{ws}/{uuid}/{at_ms:013}"),
            format!("routinelast/{ws}/{uuid}"),
        );
        self.write(move |tx| {
            if tx.get(Ks::Cfg, tick.as_bytes())?.is_some() {
                return Ok(false);
            }
            tx.put(Ks::Cfg, tick.as_bytes(), Vec::new());
            if tx.get_json::<i64>(&last)?.is_none_or(|l| at_ms > l) {
                tx.put_json(&last, &at_ms)?;
            }
            Ok(true)
        })
        .await
    }

    pub async fn routine_last(&self, ws: &str, uuid: &str) -> Result<Option<i64>> {
        self.get_json(&format!("routinelast/{ws}/{uuid}"))
    }

    pub async fn versions(&self, ws: &str) -> Result<(u64, u64)> {
        Ok((
            self.get_json::<u64>(&format!("rulever/{ws}"))?.unwrap_or(0),
            self.get_json::<u64>(&format!("epver/{ws}"))?.unwrap_or(0),
        ))
    }

    pub async fn rules(&self, ws: &str) -> Result<(u64, Vec<Rule>)> {
        let ver = self.get_json::<u64>(&format!("rulever/{ws}"))?.unwrap_or(0);
        let mut rules: Vec<Rule> = self.scan_json(&format!("rule/{ws}/"))?;
        rules.reverse();
        Ok((ver, rules))
    }

    pub async fn save_health(&self, ws: &str, ep: &str, health: &Health) -> Result<()> {
        let (key, health) = (format!("health/{ws}/{ep}"), health.clone());
        self.write(move |tx| tx.put_json(&key, &health)).await
    }

    pub async fn health(&self, ws: &str, ep: &str) -> Result<Health> {
        Ok(self
            .get_json(&format!("health/{ws}/{ep}"))?
            .unwrap_or_default())
    }
}
