//! The numbers of a load run, as a table for people and JSON for tools.

use serde::Serialize;

/// What one load run measured.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub store: String,
    /// The batch API alone: no delivery figures.
    pub ingest_only: bool,
    pub endpoints: usize,
    pub events: usize,
    pub offered_rate: Option<f64>,
    pub events_accepted_per_s: f64,
    pub deliveries: usize,
    pub deliveries_per_s: f64,
    /// Deliveries/s while ingest ran (up to the last batch's 202).
    pub during_ingest_per_s: Option<f64>,
    /// Deliveries/s after it, while the backlog drained (`None`: too little was left).
    pub after_ingest_per_s: Option<f64>,
    pub latency_ms: Percentiles,
    /// From the delivery's `createdAt` (stamped at ingest, before the store write) to its first
    /// arrival: accept-to-arrival, to the millisecond `createdAt` keeps.
    pub accept_latency_ms: Option<Percentiles>,
    pub lost: usize,
    /// Events the API never accepted (their batch was refused until the run gave up).
    pub unaccepted: usize,
    pub duplicates: usize,
    /// Order violations, counted within each sequence: an endpoint, or with ordering keys
    /// an (endpoint, key value).
    pub order_violations: usize,
    /// Key values per endpoint when the endpoints were ordered per key.
    pub ordering_keys: Option<usize>,
    pub rate_limit_violations: usize,
    pub node_cpu_s: Option<f64>,
    /// Node CPU per delivery (ingest and dispatch together), µs.
    pub node_cpu_us_per_delivery: Option<f64>,
    pub node_peak_rss_mib: Option<f64>,
    /// What the run cost Redis, per delivery (runs on Redis only).
    pub redis: Option<super::redis_usage::RedisUsage>,
    pub baseline_per_s: Option<f64>,
    /// deliveries/s over the raw client's requests/s.
    pub ratio: Option<f64>,
    /// Whose clock the arrival times are on: this process's (the built-in receiver) or the
    /// remote receivers' (`--receiver`), which latencies then also measure the skew of.
    pub arrival_clock: String,
    /// Throughput and latency over the run, from its start.
    pub timeline: Vec<Sample>,
}

/// One bucket of the timeline: the first arrivals in it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// The bucket's end, seconds from the start of the run.
    pub t_s: f64,
    pub deliveries_per_s: f64,
    /// Submit-to-arrival of the bucket's deliveries (`None`: none arrived in it).
    pub latency_ms: Option<Percentiles>,
}

/// Latency percentiles, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut ms: Vec<f64>) -> Percentiles {
        if ms.is_empty() {
            return Percentiles::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: ms[ms.len() - 1],
        }
    }
}

impl Report {
    /// A summary table.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("  {k:<width$}  {v}\n"))
            .collect()
    }

    /// The summary's rows, label and value, for the table and the HTML report.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
        let l = &self.latency_ms;
        let rows = [
            ("store", self.store.clone()),
            (
                "endpoints / events",
                format!("{} / {}", self.endpoints, self.events),
            ),
            ("offered rate", opt(self.offered_rate, " events/s")),
            (
                "events accepted",
                format!("{:.0}/s", self.events_accepted_per_s),
            ),
            (
                "deliveries",
                format!("{} at {:.0}/s", self.deliveries, self.deliveries_per_s),
            ),
            (
                "deliveries/s during / after ingest",
                match (self.during_ingest_per_s, self.after_ingest_per_s) {
                    (Some(d), Some(a)) => format!("{d:.0} / {a:.0} (ratio {:.2})", d / a),
                    (Some(d), None) => format!("{d:.0} / - (no backlog left)"),
                    _ => "-".into(),
                },
            ),
            (
                "latency p50 / p90 / p99",
                format!("{:.1} / {:.1} / {:.1} ms", l.p50, l.p90, l.p99),
            ),
            (
                "latency p99.9 / max",
                format!("{:.1} / {:.1} ms", l.p999, l.max),
            ),
            (
                "accept-to-arrival p50 / p99 / max",
                self.accept_latency_ms.as_ref().map_or("-".into(), |a| {
                    format!("{:.1} / {:.1} / {:.1} ms", a.p50, a.p99, a.max)
                }),
            ),
            (
                "lost / duplicates",
                format!("{} / {}", self.lost, self.duplicates),
            ),
            ("events not accepted", self.unaccepted.to_string()),
            ("arrival times from", self.arrival_clock.clone()),
            (
                "order / rate-limit violations",
                match self.ordering_keys {
                    Some(keys) => format!(
                        "{} (per key, {keys} keys per endpoint) / {}",
                        self.order_violations, self.rate_limit_violations
                    ),
                    None => format!("{} / {}", self.order_violations, self.rate_limit_violations),
                },
            ),
            (
                "node CPU / peak RSS",
                format!(
                    "{} / {}",
                    opt(self.node_cpu_s, " s"),
                    opt(self.node_peak_rss_mib, " MiB")
                ),
            ),
            (
                "node CPU per delivery",
                opt(self.node_cpu_us_per_delivery, " µs"),
            ),
            (
                "Redis commands / CPU / bytes per delivery",
                self.redis.as_ref().map_or("-".into(), |r| {
                    format!(
                        "{:.2} / {:.1} µs / {:.0} B",
                        r.commands_per_delivery, r.cpu_us_per_delivery, r.bytes_per_delivery
                    )
                }),
            ),
            (
                "Redis commands by name (per delivery)",
                self.redis.as_ref().map_or("-".into(), |r| {
                    r.by_command
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }),
            ),
            (
                "Redis µs by command (per delivery)",
                self.redis.as_ref().map_or("-".into(), |r| {
                    r.us_by_command
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }),
            ),
            ("raw client baseline", opt(self.baseline_per_s, " req/s")),
            ("dispatcher / raw client", opt(self.ratio, "")),
        ];
        // An ingest-only run sent nothing: its delivery rows would only show zeros.
        let delivery_rows = [
            "deliveries",
            "deliveries/s during / after ingest",
            "latency p50 / p90 / p99",
            "latency p99.9 / max",
            "accept-to-arrival p50 / p99 / max",
            "lost / duplicates",
            "order / rate-limit violations",
            "raw client baseline",
            "dispatcher / raw client",
        ];
        rows.into_iter()
            .filter(|(k, _)| !(self.ingest_only && delivery_rows.contains(k)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_ranks() {
        let p = Percentiles::of((1..=1000).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (501.0, 900.0, 990.0, 1000.0));
        assert_eq!(Percentiles::of(vec![]).max, 0.0);
    }
}
