//! Metrics: what operators watch before their customers notice, served as Prometheus text at
//! `/metrics`.
//!
//! One `metrics` recorder per process (metrics-exporter-prometheus, no HTTP server of its own:
//! the API serves the text). Every series carries a `node` label and otherwise only bounded
//! labels (outcome, status class, partition): never an endpoint or workspace id, which would
//! grow without bound; the endpoints that lag most are found through the API instead.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Histogram buckets, seconds: from sub-millisecond attempts to multi-minute backoffs.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the recorder (once per process) and returns the handle that renders it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("static buckets")
            .install_recorder()
            .expect("the only metrics recorder of this process");
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("switchyard_events_accepted_total", "Events answered 202.");
    describe_counter!(
        "switchyard_attempts_total",
        "Delivery attempts by outcome and response class."
    );
    describe_counter!(
        "switchyard_deliveries_total",
        "Deliveries that reached a final outcome."
    );
    describe_histogram!(
        "switchyard_attempt_duration_seconds",
        "Duration of one HTTP attempt."
    );
    describe_histogram!(
        "switchyard_delivery_latency_seconds",
        "From ingest to the successful attempt's end."
    );
    describe_gauge!(
        "switchyard_partition_lag",
        "Entries of an owned partition not yet read."
    );
    describe_gauge!(
        "switchyard_partition_pending",
        "Entries of an owned partition read but not finished."
    );
    describe_gauge!(
        "switchyard_endpoint_actors",
        "Endpoint actors alive on this node."
    );
    describe_gauge!(
        "switchyard_breakers_open",
        "Endpoints whose circuit breaker is open or half-open."
    );
    describe_counter!(
        "switchyard_rate_limit_waits_total",
        "Times a delivery waited for its endpoint's rate limit."
    );
    describe_histogram!(
        "switchyard_store_roundtrip_seconds",
        "Round trip of the coordinator's heartbeat to Redis."
    );
    describe_counter!(
        "switchyard_ssrf_refusals_total",
        "Destinations refused by the SSRF guard, at save or at connect."
    );
    describe_counter!(
        "switchyard_retention_dropped_total",
        "Finished deliveries dropped by retention (age or the per-partition cap)."
    );
    describe_histogram!(
        "switchyard_commit_outcomes",
        "Outcomes written per group commit."
    );
}

/// Registers every documented series of `node` at zero, so dashboards and alerts see them from
/// the start (a series that appears only at its first event looks like a broken exporter, and
/// an alert on `rate(...)` of an absent series never fires).
pub fn register(node: &str) {
    let n = || node.to_string();
    counter!("switchyard_events_accepted_total", "node" => n()).increment(0);
    for outcome in ["succeeded", "failed"] {
        counter!("switchyard_deliveries_total", "node" => n(), "outcome" => outcome).increment(0);
    }
    counter!("switchyard_rate_limit_waits_total", "node" => n()).increment(0);
    counter!("switchyard_attempts_total", "node" => n(), "outcome" => "succeeded", "class" => "2xx")
        .increment(0);
    for at in ["save", "connect"] {
        counter!("switchyard_ssrf_refusals_total", "node" => n(), "at" => at).increment(0);
    }
    gauge!("switchyard_endpoint_actors", "node" => n()).set(0.0);
    counter!("switchyard_retention_dropped_total").increment(0);
    gauge!("switchyard_breakers_open", "node" => n()).set(0.0);
    for name in [
        "switchyard_attempt_duration_seconds",
        "switchyard_delivery_latency_seconds",
        "switchyard_store_roundtrip_seconds",
    ] {
        // Registered, not recorded: an empty histogram renders as zero counts.
        let _ = histogram!(name, "node" => n());
    }
}

pub fn events_accepted(node: &str, n: usize) {
    counter!("switchyard_events_accepted_total", "node" => node.to_string()).increment(n as u64);
}

/// `2xx`, `4xx`, `5xx`, or the error kind when there was no response.
pub fn status_class(status: Option<u16>, error_kind: Option<&str>) -> String {
    match status {
        Some(s) => format!("{}xx", s / 100),
        None => error_kind.unwrap_or("error").to_string(),
    }
}

pub fn attempt(node: &str, outcome: &'static str, class: String, took: Duration) {
    counter!("switchyard_attempts_total", "node" => node.to_string(), "outcome" => outcome, "class" => class).increment(1);
    histogram!("switchyard_attempt_duration_seconds", "node" => node.to_string())
        .record(took.as_secs_f64());
}

pub fn delivery_final(node: &str, outcome: &'static str, since_ingest: Option<Duration>) {
    counter!("switchyard_deliveries_total", "node" => node.to_string(), "outcome" => outcome)
        .increment(1);
    if let Some(d) = since_ingest {
        histogram!("switchyard_delivery_latency_seconds", "node" => node.to_string())
            .record(d.as_secs_f64());
    }
}

pub fn partition(node: &str, partition: u32, lag: i64, pending: i64) {
    gauge!("switchyard_partition_lag", "node" => node.to_string(), "partition" => partition.to_string()).set(lag as f64);
    gauge!("switchyard_partition_pending", "node" => node.to_string(), "partition" => partition.to_string()).set(pending as f64);
}

pub fn actors(node: &str, n: usize) {
    gauge!("switchyard_endpoint_actors", "node" => node.to_string()).set(n as f64);
}

pub fn breaker_moved(node: &str, opened: bool) {
    let g = gauge!("switchyard_breakers_open", "node" => node.to_string());
    if opened {
        g.increment(1.0)
    } else {
        g.decrement(1.0)
    }
}

pub fn rate_limit_wait(node: &str) {
    counter!("switchyard_rate_limit_waits_total", "node" => node.to_string()).increment(1);
}

pub fn store_roundtrip(node: &str, took: Duration) {
    histogram!("switchyard_store_roundtrip_seconds", "node" => node.to_string())
        .record(took.as_secs_f64());
}

pub fn retention_dropped(n: u64) {
    counter!("switchyard_retention_dropped_total").increment(n);
}

/// One group commit of `n` outcomes that took `took`.
pub fn commit(node: &str, n: usize, took: Duration) {
    histogram!("switchyard_commit_outcomes", "node" => node.to_string()).record(n as f64);
    histogram!("switchyard_store_roundtrip_seconds", "node" => node.to_string())
        .record(took.as_secs_f64());
}

pub fn ssrf_refused(node: &str, at: &'static str) {
    counter!("switchyard_ssrf_refusals_total", "node" => node.to_string(), "at" => at).increment(1);
}
