//! Metrics: what operators watch before their customers notice, served as Prometheus text at
//! `/metrics`.
//!
//! One `metrics` recorder per process (metrics-exporter-prometheus, no HTTP server of its own:
//! the API serves the text). Every series carries a `node` label and otherwise only bounded
//! labels (outcome, status class, partition): never an endpoint or workspace id, which would
//! grow without bound; the endpoints that lag most are found through the API instead.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
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
    describe_counter!(
        "switchyard_ingest_shed_total",
        "Ingest requests refused with 429 under a backlog (overload = shed)."
    );
    describe_counter!(
        "switchyard_ingest_replanned_total",
        "Ingest requests planned with cached rule or endpoint versions that had moved, planned again."
    );
    describe_gauge!(
        "switchyard_backlog_jobs",
        "Jobs not finished in the partitions this node owns (unread and in memory)."
    );
    describe_gauge!(
        "switchyard_backlog_age_seconds",
        "Age of the oldest unfinished job this node has read."
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
    gauge!("switchyard_backlog_jobs", "node" => n()).set(0.0);
    counter!("switchyard_ingest_shed_total", "node" => n()).increment(0);
    counter!("switchyard_ingest_replanned_total", "node" => n()).increment(0);
    gauge!("switchyard_backlog_age_seconds", "node" => n()).set(0.0);
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

/// The series a node records on every delivery, registered once: building a labelled key and
/// looking it up in the registry on each call allocates, and it showed in profiles.
struct Handles {
    events: Counter,
    rate_waits: Counter,
    attempt_duration: Histogram,
    delivery_latency: Histogram,
    roundtrip: Histogram,
    commit_outcomes: Histogram,
    succeeded: Counter,
    failed: Counter,
    attempts: std::sync::Mutex<HashMap<(&'static str, String), Counter>>,
}

static HANDLES: LazyLock<RwLock<HashMap<String, Arc<Handles>>>> = LazyLock::new(Default::default);

fn handles(node: &str) -> Arc<Handles> {
    if let Some(h) = HANDLES.read().expect("metrics lock").get(node) {
        return h.clone();
    }
    let n = || node.to_string();
    let h = Arc::new(Handles {
        events: counter!("switchyard_events_accepted_total", "node" => n()),
        rate_waits: counter!("switchyard_rate_limit_waits_total", "node" => n()),
        attempt_duration: histogram!("switchyard_attempt_duration_seconds", "node" => n()),
        delivery_latency: histogram!("switchyard_delivery_latency_seconds", "node" => n()),
        roundtrip: histogram!("switchyard_store_roundtrip_seconds", "node" => n()),
        commit_outcomes: histogram!("switchyard_commit_outcomes", "node" => n()),
        succeeded: counter!("switchyard_deliveries_total", "node" => n(), "outcome" => "succeeded"),
        failed: counter!("switchyard_deliveries_total", "node" => n(), "outcome" => "failed"),
        attempts: Default::default(),
    });
    HANDLES
        .write()
        .expect("metrics lock")
        .insert(node.to_string(), h.clone());
    h
}

pub fn events_accepted(node: &str, n: usize) {
    handles(node).events.increment(n as u64);
}

/// `2xx`, `4xx`, `5xx`, or the error kind when there was no response.
pub fn status_class(status: Option<u16>, error_kind: Option<&str>) -> String {
    match status {
        Some(s) => format!("{}xx", s / 100),
        None => error_kind.unwrap_or("error").to_string(),
    }
}

pub fn attempt(node: &str, outcome: &'static str, class: String, took: Duration) {
    let h = handles(node);
    let counter = h
        .attempts
        .lock()
        .expect("metrics lock")
        .entry((outcome, class))
        .or_insert_with_key(|(o, c)| {
            counter!("switchyard_attempts_total", "node" => node.to_string(), "outcome" => *o, "class" => c.clone())
        })
        .clone();
    counter.increment(1);
    h.attempt_duration.record(took.as_secs_f64());
}

pub fn delivery_final(node: &str, outcome: &'static str, since_ingest: Option<Duration>) {
    let h = handles(node);
    match outcome {
        "succeeded" => h.succeeded.increment(1),
        _ => h.failed.increment(1),
    }
    if let Some(d) = since_ingest {
        h.delivery_latency.record(d.as_secs_f64());
    }
}

/// An ingest refused under a backlog (`overload = "shed"`).
pub fn ingest_shed(node: &str) {
    counter!("switchyard_ingest_shed_total", "node" => node.to_string()).increment(1);
}

/// An ingest planned with cached rule and endpoint versions that had moved: planned again.
pub fn ingest_replanned(node: &str) {
    counter!("switchyard_ingest_replanned_total", "node" => node.to_string()).increment(1);
}

/// This node's backlog: jobs not finished in its partitions, and the oldest one's age.
pub fn backlog(node: &str, jobs: u64, oldest_secs: f64) {
    gauge!("switchyard_backlog_jobs", "node" => node.to_string()).set(jobs as f64);
    gauge!("switchyard_backlog_age_seconds", "node" => node.to_string()).set(oldest_secs);
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
    handles(node).rate_waits.increment(1);
}

pub fn store_roundtrip(node: &str, took: Duration) {
    handles(node).roundtrip.record(took.as_secs_f64());
}

pub fn retention_dropped(n: u64) {
    counter!("switchyard_retention_dropped_total").increment(n);
}

/// One group commit of `n` outcomes that took `took`.
pub fn commit(node: &str, n: usize, took: Duration) {
    let h = handles(node);
    h.commit_outcomes.record(n as f64);
    h.roundtrip.record(took.as_secs_f64());
}

pub fn ssrf_refused(node: &str, at: &'static str) {
    counter!("switchyard_ssrf_refusals_total", "node" => node.to_string(), "at" => at).increment(1);
}
