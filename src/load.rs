//! Load: the engine behind `switchyard load` and `cargo bench --bench load`.
//!
//! One run starts (or targets) a node, creates `endpoints` endpoints on a built-in HTTPS
//! receiver (a latency range and an error rate to simulate real receivers), one rule per
//! endpoint, then sends `events` events through the batch API — as fast as possible or at a
//! fixed rate — and waits until every accepted delivery has arrived. The report gives events
//! accepted/s, deliveries/s, submit-to-arrival latency percentiles (from sending the event's batch,
//! an upper bound of accept-to-arrival: a delivery often arrives before its batch's 202), lost deliveries (must be
//! 0), duplicates, per-endpoint order violations, rate-limit violations, and the node's CPU and
//! peak RSS when it runs as a child process. The same run then measures a baseline: the same
//! receiver hit by a bare reqwest client loop (same TLS and pooling, no store, no actors), so
//! every report carries the ratio dispatcher / raw client.
//!
//! With `--receiver URL` (repeatable) the run delivers to receivers running elsewhere
//! (`switchyard receiver`) instead, the endpoints spread over them, and reads what arrived
//! through their control API: the checks are the same, on arrival times from the receivers'
//! clocks. `--html FILE` writes the report as a page with its charts ([`html`]).

mod arrivals;
mod baseline;
pub mod cli;
pub mod html;
mod measure;
pub mod receiver;
pub mod redis_usage;
mod report;
mod run;
mod send;

pub use report::{Percentiles, Report, Sample};
pub use run::{LoadConfig, NodeSpec, OrderingKeys, run};
