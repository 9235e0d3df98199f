//! Load: what `switchyard load` and the benchmarks use to drive a node and measure it.
//!
//! `receiver` is a real HTTPS receiver with a run-time CA.

pub mod receiver;
