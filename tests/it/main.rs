//! Integration tests: one binary, real `redis-server`, real HTTPS receivers, nodes on port 0.

mod api_errors;
mod api_surface;
mod cli;
mod cluster;
mod console;
mod controls;
mod crash;
mod deliverer;
mod delivery;
mod edge;
mod faults;
mod load;
mod metrics;
mod operations;
mod ordering;
#[cfg(feature = "otlp")]
mod otlp;
mod outage;
mod overload;
mod receiver;
mod routines;
mod store_conformance;
mod store_grouping;
mod store_upgrade;
mod support;
mod transforms;
