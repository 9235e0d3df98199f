//! What a load run cost Redis: commands, CPU and memory per delivery, from `INFO` before and
//! after the measured part of the run (the warm-up is not counted).

use std::collections::BTreeMap;

use serde::Serialize;

/// One reading of `INFO commandstats`, `INFO cpu` and `INFO memory`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Calls per command, scripts' inner commands included.
    pub calls: BTreeMap<String, u64>,
    /// Microseconds per command (a script's time includes its inner commands').
    pub usec: BTreeMap<String, u64>,
    /// Redis's own CPU (user + system, main thread and I/O threads), seconds.
    pub cpu_s: f64,
    pub used_memory: i64,
}

/// The difference of two snapshots, per delivery.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisUsage {
    pub commands_per_delivery: f64,
    pub cpu_us_per_delivery: f64,
    /// Memory added per delivery that reached its outcome (the log of it included).
    pub bytes_per_delivery: f64,
    /// Calls per delivery, by command (those of at least 0.01).
    pub by_command: BTreeMap<String, f64>,
    /// Redis µs per delivery in each command (those of at least 0.1), as `INFO
    /// commandstats` times them: a script's time includes its inner commands', and the time
    /// outside commands (reading requests, writing replies and the AOF) is in none.
    pub us_by_command: BTreeMap<String, f64>,
}

fn field(info: &str, key: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads a snapshot; `None` when Redis cannot be asked.
pub async fn snapshot(url: &str) -> Option<Snapshot> {
    let client = redis::Client::open(url.split(',').next()?.trim()).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .ok()?;
    let cpu: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .ok()?;
    let memory: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .ok()?;
    let mut calls = BTreeMap::new();
    let mut usec = BTreeMap::new();
    for line in stats.lines() {
        // cmdstat_xadd:calls=10,usec=20,usec_per_call=2.00,...
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, values)) = rest.split_once(':') else {
            continue;
        };
        let value = |k: &str| -> u64 {
            values
                .split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        calls.insert(name.to_string(), value("calls"));
        usec.insert(name.to_string(), value("usec"));
    }
    Some(Snapshot {
        calls,
        usec,
        cpu_s: field(&cpu, "used_cpu_user").unwrap_or(0.0)
            + field(&cpu, "used_cpu_sys").unwrap_or(0.0),
        used_memory: field(&memory, "used_memory").unwrap_or(0.0) as i64,
    })
}

impl Snapshot {
    /// What happened between `self` and `after`, for `deliveries` deliveries. The `INFO`
    /// calls of the snapshots themselves are not counted.
    pub fn usage(&self, after: &Snapshot, deliveries: usize) -> RedisUsage {
        let n = deliveries.max(1) as f64;
        let mut by_command = BTreeMap::new();
        let mut total = 0u64;
        for (name, calls) in &after.calls {
            let before = self.calls.get(name).copied().unwrap_or(0);
            let mut delta = calls.saturating_sub(before);
            if name == "info" {
                delta = delta.saturating_sub(3);
            }
            total += delta;
            let per = delta as f64 / n;
            if per >= 0.01 {
                by_command.insert(name.clone(), (per * 100.0).round() / 100.0);
            }
        }
        let mut us_by_command = BTreeMap::new();
        for (name, usec) in &after.usec {
            let delta = usec.saturating_sub(self.usec.get(name).copied().unwrap_or(0)) as f64;
            let per = delta / n;
            if name != "info" && per >= 0.1 {
                us_by_command.insert(name.clone(), (per * 10.0).round() / 10.0);
            }
        }
        RedisUsage {
            commands_per_delivery: total as f64 / n,
            cpu_us_per_delivery: (after.cpu_s - self.cpu_s).max(0.0) * 1e6 / n,
            bytes_per_delivery: (after.used_memory - self.used_memory) as f64 / n,
            by_command,
            us_by_command,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_per_delivery_and_leaves_out_the_snapshots_own_calls() {
        let before = Snapshot {
            calls: [("xadd".into(), 10), ("info".into(), 6)].into(),
            usec: [("xadd".into(), 100)].into(),
            cpu_s: 1.0,
            used_memory: 1000,
        };
        let after = Snapshot {
            calls: [
                ("xadd".into(), 210),
                ("hset".into(), 100),
                ("info".into(), 9),
            ]
            .into(),
            usec: [("xadd".into(), 600), ("hset".into(), 5)].into(),
            cpu_s: 1.002,
            used_memory: 71_000,
        };
        let u = before.usage(&after, 100);
        assert_eq!(u.commands_per_delivery, 3.0);
        assert!((u.cpu_us_per_delivery - 20.0).abs() < 1e-6);
        assert_eq!(u.bytes_per_delivery, 700.0);
        assert_eq!(u.by_command["xadd"], 2.0);
        assert!(!u.by_command.contains_key("info"));
        assert_eq!(u.us_by_command["xadd"], 5.0);
        assert!(
            !u.us_by_command.contains_key("hset"),
            "under 0.1 µs a delivery"
        );
    }
}
