//! Switchyard: a webhook dispatcher cluster.
pub mod api;
pub mod cluster;
pub mod config;
pub mod deliverer;
pub mod delivery;
pub mod dispatch;
pub mod endpoint;
pub mod event;
pub mod invalid;
pub mod load;
pub mod node;
pub mod rule;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod workspace;
