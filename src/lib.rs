//! Switchyard: a webhook dispatcher cluster.
//!
//! Platforms publish their workspaces' events; event rules pick which endpoints get them;
//! Switchyard POSTs signed JSON (Standard Webhooks) over HTTPS to each endpoint in order,
//! within the endpoint's rate limit, retries with backoff, logs every attempt, and scales out
//! over Redis. `docs/architecture.md` draws the supervision tree, the keys and the life of a
//! delivery.
//!
//! # Layout
//!
//! - [`config`]: settings — embedded defaults, a TOML file, `SWITCHYARD_*` variables, validation.
//! - [`workspace`]: tenants and their API keys (stored hashed).
//! - [`event`]: the event families' typed models, their validation, the type catalogue.
//! - [`rule`]: event rules — patterns, the compiled condition language, the indexed rule set,
//!   the versioned cache.
//! - [`endpoint`]: endpoint specs and policies (retry, rate limit, ordering, headers, secrets).
//! - [`delivery`]: delivery and attempt records, deterministic ids, the partition hash.
//! - [`ingest`]: a fired event becomes deliveries (API and routines alike).
//! - [`transform`]: payload templates and the Slack / Discord presets.
//! - [`signing`]: Standard Webhooks signatures and secrets.
//! - [`ssrf`]: the guard that keeps webhooks on the public internet.
//! - [`deliverer`]: the shared HTTPS client that signs and sends one attempt.
//! - [`dispatch`]: partition consumers and the actor tree (RuleRouter → EndpointActors),
//!   the breaker, the outcome policy.
//! - [`store`]: every durable byte, on Redis (cluster) or fjall (embedded default).
//! - [`cluster`]: partition leases, fencing, membership and rebalancing over Redis.
//! - [`routine`]: cron schedules that fire exactly once per tick.
//! - [`api`]: the HTTP API (axum), auth, the error body, the OpenAPI document.
//! - [`console`]: the web console the node serves at `/console`.
//! - [`telemetry`]: Prometheus metrics with bounded labels.
//! - [`traces`]: log output and the optional OTLP span export (`otlp` feature).
//! - [`node`]: starting and stopping a node.
//! - [`client`]: the API client of the `deliveries` / `endpoints` commands.
//! - [`load`]: the load engine and the HTTPS receiver of tests and benchmarks.
//! - [`receiver`]: `switchyard receiver`, that receiver as a process (control API, `--print`).

pub mod api;
pub mod client;
pub mod cluster;
pub mod config;
pub mod console;
pub mod deliverer;
pub mod delivery;
pub mod dispatch;
pub mod endpoint;
pub mod event;
pub mod ingest;
pub mod invalid;
pub mod load;
pub mod node;
pub mod receiver;
pub mod routine;
pub mod rule;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod telemetry;
pub mod traces;
pub mod transform;
pub mod workspace;
