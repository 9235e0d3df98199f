//! Configuration: defaults, then an optional TOML file, then `SWITCHYARD_*` environment
//! variables, then [`Config::validate`] with errors that name the key.
//!
//! Every setting has one name, used in snake case as the file key and upper-cased behind
//! `SWITCHYARD_` as the variable (`redis_url` ↔ `SWITCHYARD_REDIS_URL`), so operators never
//! have to learn two vocabularies.

mod env;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// A setting that could not be used, naming the file key / environment variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{key} (SWITCHYARD_{env}): {message}", env = key.to_ascii_uppercase())]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The settings of one node.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// API address.
    pub listen: SocketAddr,
    /// Bearer token of the admin routes; `None` refuses them all.
    pub admin_token: Option<String>,
    /// Redis URL of the cluster store; comma-separated seed URLs for a Redis Cluster.
    pub redis_url: Option<String>,
    /// The embedded store's directory.
    pub data_dir: PathBuf,
    /// Prefix of every Redis key, so several deployments (or tests) share one Redis.
    pub key_prefix: String,
    /// Partition count; fixed for the life of a cluster (it decides which stream a job is in).
    pub partitions: u32,
    /// CIDRs exempt from the SSRF guard (tests and development only).
    pub allow_private_cidrs: Vec<IpNet>,
    /// Accept `http://` endpoints (tests and development only).
    pub allow_http: bool,
    /// Local development (`switchyard serve --dev`): loopback and plain-HTTP endpoints are
    /// allowed, the banner and `/readyz` say so, and only a Redis on loopback is accepted.
    pub dev: bool,
    /// PEM file of extra trusted roots for deliveries.
    pub extra_root_certs: Option<PathBuf>,
    /// Offer HTTP/2 to receivers (ALPN; the receiver chooses): the requests to an origin that
    /// takes it share a few connections. Off by default: it pays where hundreds of endpoints
    /// share an origin and costs where each has its own (docs/benchmarks.md).
    pub deliver_http2: bool,
    /// Requests in flight at once on one HTTP/2 connection; past it another is opened.
    pub http2_streams_per_connection: usize,
    /// This node's name in the cluster.
    pub node_id: String,
    /// Largest event body accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Response body bytes kept in the delivery log per attempt.
    pub response_body_limit: usize,
    /// A client must send a request's headers within this many seconds (one holding a
    /// connection with partial headers is cut off); a keep-alive connection idle this long
    /// between requests is closed too.
    pub header_read_timeout_secs: u64,
    /// A request's body must arrive within this many seconds (408 after).
    pub body_timeout_secs: u64,
    /// Open API connections at most; beyond it a new connection is answered 503 and closed at
    /// once, so it cannot starve the others (or the process's file descriptors).
    pub max_connections: usize,
    /// How long an `Idempotency-Key` is remembered, in seconds.
    pub idempotency_ttl_secs: u64,
    /// Jobs a partition consumer holds in memory (read but not yet finished) at most.
    pub partition_buffer: usize,
    /// HTTP attempts in flight at once on a node, over all endpoints (each holds a connection).
    pub max_concurrent_attempts: usize,
    /// An endpoint actor with nothing to do stops after this many seconds (longer when its rate
    /// limit's bucket takes longer to refill). Its successor reloads its state from the store,
    /// so this trades a few reads per restart against memory: at 100k endpoints, live actors
    /// are most of a node's memory.
    pub actor_idle_secs: u64,
    /// Rate limit (deliveries per second) of endpoints that set none; unset: unlimited.
    pub default_rate_per_second: Option<u32>,
    /// Burst of that default limit.
    pub default_rate_burst: u32,
    /// Longest wait a receiver's `Retry-After` can impose, in seconds.
    pub retry_after_ceiling_secs: u64,
    /// Consecutive failed attempts that open an endpoint's circuit breaker.
    pub breaker_threshold: u32,
    /// First cool-down of an open breaker, in milliseconds (doubles after each failed probe).
    pub breaker_cooldown_ms: u64,
    /// Longest cool-down, in milliseconds.
    pub breaker_max_cooldown_ms: u64,
    /// An endpoint whose deliveries have failed for this long without a success is disabled.
    pub auto_disable_after_secs: u64,
    /// How long a rotated-out secret keeps signing, in seconds.
    pub secret_grace_secs: u64,
    /// On shutdown, how long in-flight attempts may take to finish, in seconds.
    pub drain_timeout_secs: u64,
    /// How long finished deliveries, their attempts, the log and the dead letter are kept.
    pub retention_secs: u64,
    /// Finished deliveries kept per partition at most; beyond it the oldest go first (so the
    /// store stays bounded at any volume; `switchyard_retention_dropped_total` counts them).
    pub retention_max_per_partition: u64,
    /// The embedded store writes nothing while its disk has less free space than this (503
    /// `insufficient_storage`), and writes again by itself once there is room.
    pub min_free_disk_bytes: u64,
    /// How long a receiver may throttle one delivery (429, 503 with `Retry-After`) before the
    /// delivery fails; throttled answers never count toward `maxAttempts` or the breaker.
    pub max_throttle_secs: u64,
    /// How long a partition lease lasts without renewal (Redis clusters): the takeover time
    /// after a crash. Shorter is faster failover but less tolerance of Redis stalls.
    pub lease_ms: u64,
    /// How often a node heartbeats and renews its leases.
    pub heartbeat_ms: u64,
    /// What ingest does when a partition's backlog is over `overload_backlog_jobs`: `accept`
    /// (the store absorbs the burst) or `shed` (429 with `Retry-After`, nothing written).
    pub overload: Overload,
    /// Unfinished jobs in one partition beyond which `overload = "shed"` refuses ingest.
    pub overload_backlog_jobs: u64,
    /// Ingest requests parsed and planned at once; more wait their turn before any work, so
    /// a burst of producers leaves delivery its share of the cores. The write that follows
    /// only waits (and is grouped with other requests'), so it is outside this bound.
    pub max_concurrent_ingests: usize,
    /// `text` (for people) or `json` (one object per line, for log pipelines).
    pub log_format: LogFormat,
    /// OTLP/HTTP collector base URL (`http://collector:4318`): spans go to `{url}/v1/traces`.
    /// Needs a build with the `otlp` feature; unset exports nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

/// What ingest does under a backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overload {
    /// Keep accepting: the store absorbs bursts, bounded by retention and its size caps.
    #[default]
    Accept,
    /// Answer 429 with `Retry-After` while a partition the request writes to is over the bound.
    Shed,
}

/// The shape of the log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The commented defaults, embedded in the binary (and the reference of every key).
pub const DEFAULT_TOML: &str = include_str!("config.default.toml");

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            admin_token: None,
            redis_url: None,
            data_dir: PathBuf::from("./switchyard-data"),
            key_prefix: "sy".into(),
            partitions: 64,
            allow_private_cidrs: Vec::new(),
            allow_http: false,
            dev: false,
            extra_root_certs: None,
            deliver_http2: false,
            http2_streams_per_connection: 100,
            node_id: default_node_id(),
            max_payload_bytes: 256 * 1024,
            response_body_limit: 64 * 1024,
            header_read_timeout_secs: 10,
            body_timeout_secs: 30,
            max_connections: 4096,
            idempotency_ttl_secs: 24 * 3600,
            partition_buffer: 1024,
            actor_idle_secs: 2,
            max_concurrent_attempts: 1024,
            default_rate_per_second: None,
            default_rate_burst: 1,
            retry_after_ceiling_secs: 3600,
            breaker_threshold: 5,
            breaker_cooldown_ms: 30_000,
            breaker_max_cooldown_ms: 600_000,
            auto_disable_after_secs: 5 * 24 * 3600,
            secret_grace_secs: 24 * 3600,
            drain_timeout_secs: 30,
            retention_secs: 30 * 24 * 3600,
            retention_max_per_partition: crate::store::jobs::DEFAULT_MAX_PER_PARTITION,
            min_free_disk_bytes: crate::store::embedded::DEFAULT_MIN_FREE_BYTES,
            max_throttle_secs: 24 * 3600,
            lease_ms: 5_000,
            heartbeat_ms: 1_000,
            overload: Overload::Accept,
            overload_backlog_jobs: 100_000,
            max_concurrent_ingests: 4,
            log_format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{:04x}", rand::random::<u16>())
}

impl Config {
    /// The effective settings as TOML, with secrets masked (`admin_token`, Redis passwords).
    pub fn masked_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.admin_token.is_some() {
            shown.admin_token = Some("********".into());
        }
        if let Some(urls) = &shown.redis_url {
            let masked: Vec<String> = urls
                .split(',')
                .map(|url| match url::Url::parse(url.trim()) {
                    Ok(mut parsed) if parsed.password().is_some() => {
                        let _ = parsed.set_password(Some("********"));
                        parsed.to_string()
                    }
                    _ => url.to_string(),
                })
                .collect();
            shown.redis_url = Some(masked.join(","));
        }
        toml::to_string(&shown).unwrap_or_default()
    }

    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(file, &[])
    }

    /// Defaults, then `file`, then the environment, then `overrides` (`key=value` pairs from
    /// the command line, same names as the file keys).
    pub fn load_with(
        file: Option<&Path>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        if !overrides.is_empty() {
            config = config.with_overrides(overrides)?;
        }
        if config.dev {
            config.allow_http = true;
            for net in ["127.0.0.0/8", "::1/128"] {
                let net: IpNet = net.parse().expect("a static CIDR");
                if !config.allow_private_cidrs.contains(&net) {
                    config.allow_private_cidrs.push(net);
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets file keys from `key=value` pairs (a value is read as TOML, else as a string), so
    /// every key of the file can be set and an unknown one is refused by name.
    fn with_overrides(&self, overrides: &[(String, String)]) -> Result<Config, ConfigError> {
        let bad = |message: String| ConfigError::File {
            path: PathBuf::from("--set"),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(&toml::to_string(self).map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        for (key, raw) in overrides {
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.clone()));
            table.insert(key.clone(), value);
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string()))
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut c = Config::default();
        c.apply_env(|k| env.get(k).cloned())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = with_env(&[
            ("SWITCHYARD_PARTITIONS", "8"),
            ("SWITCHYARD_ALLOW_PRIVATE_CIDRS", "127.0.0.1/32, ::1/128"),
            ("SWITCHYARD_ALLOW_HTTP", "true"),
            ("SWITCHYARD_KEY_PREFIX", "test-1"),
        ])
        .unwrap();
        assert_eq!(
            (c.partitions, c.allow_private_cidrs.len(), c.allow_http),
            (8, 2, true)
        );
        assert_eq!(c.key_prefix, "test-1");
        assert_eq!(Config::default().listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn errors_name_the_key() {
        let msg = |pairs: &[(&str, &str)]| with_env(pairs).unwrap_err().to_string();
        assert!(msg(&[("SWITCHYARD_PARTITIONS", "many")]).contains("SWITCHYARD_PARTITIONS"));
        assert!(msg(&[("SWITCHYARD_PARTITIONS", "0")]).contains("partitions"));
        assert!(
            msg(&[("SWITCHYARD_ALLOW_PRIVATE_CIDRS", "10.0.0.0/33")])
                .contains("ALLOW_PRIVATE_CIDRS")
        );
        assert!(msg(&[("SWITCHYARD_LISTEN", "here")]).contains("SWITCHYARD_LISTEN"));
        assert!(msg(&[("SWITCHYARD_ADMIN_TOKEN", "short")]).contains("admin_token"));
        assert!(
            msg(&[("SWITCHYARD_HTTP2_STREAMS_PER_CONNECTION", "0")])
                .contains("http2_streams_per_connection")
        );
        assert!(msg(&[("SWITCHYARD_DELIVER_HTTP2", "maybe")]).contains("DELIVER_HTTP2"));
    }

    #[test]
    fn every_file_key_has_an_environment_variable() {
        let asked = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let mut c = Config {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            ..Config::default()
        };
        c.apply_env(|k| {
            asked.lock().unwrap().insert(k.to_string());
            None
        })
        .unwrap();
        let table: toml::Table = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        let asked = asked.into_inner().unwrap();
        for key in table.keys() {
            let var = format!("SWITCHYARD_{}", key.to_ascii_uppercase());
            assert!(asked.contains(&var), "{key} has no {var}");
        }
    }

    #[test]
    fn otlp_endpoint_is_checked_and_needs_the_feature() {
        let bad = with_env(&[("SWITCHYARD_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
        assert!(bad.to_string().contains("otlp_endpoint"), "{bad}");
        let good = with_env(&[("SWITCHYARD_OTLP_ENDPOINT", "http://127.0.0.1:4318")]);
        if cfg!(feature = "otlp") {
            assert_eq!(
                good.unwrap().otlp_endpoint.as_deref(),
                Some("http://127.0.0.1:4318")
            );
        } else {
            let e = good.unwrap_err().to_string();
            assert!(
                e.contains("otlp_endpoint") && e.contains("--features otlp"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_embedded_defaults_file_is_the_default() {
        let from_file: Config = toml::from_str(DEFAULT_TOML).expect("the defaults file parses");
        let def = Config::default();
        assert_eq!(
            from_file
                .masked_toml()
                .lines()
                .filter(|l| !l.starts_with("node_id"))
                .collect::<Vec<_>>(),
            def.masked_toml()
                .lines()
                .filter(|l| !l.starts_with("node_id"))
                .collect::<Vec<_>>()
        );
        let secret = Config {
            admin_token: Some("a-very-secret-token".into()),
            redis_url: Some("redis://:hunter22@db:6379/, redis://:hunter23@db2:6379/".into()),
            ..def
        };
        let shown = secret.masked_toml();
        assert!(
            !shown.contains("a-very-secret-token")
                && !shown.contains("hunter22")
                && !shown.contains("hunter23"),
            "{shown}"
        );
    }

    /// Defaults, the environment, then these `--set` pairs.
    fn set(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(None, &pairs)
    }

    #[test]
    fn dev_mode_opens_loopback_and_http_and_refuses_a_remote_redis() {
        let c = set(&[("dev", "true")]).unwrap();
        assert!(c.dev && c.allow_http);
        assert!(
            c.allow_private_cidrs
                .contains(&"127.0.0.0/8".parse().unwrap())
        );
        assert!(set(&[("dev", "true"), ("redis_url", "redis://127.0.0.1:6379")]).is_ok());
        let far = set(&[("dev", "true"), ("redis_url", "redis://10.1.2.3:6379")]).unwrap_err();
        assert!(far.to_string().starts_with("dev (SWITCHYARD_DEV)"), "{far}");
        let plain = set(&[]).unwrap();
        assert!(!plain.allow_http && plain.allow_private_cidrs.is_empty());
    }

    #[test]
    fn command_line_settings_come_last_and_unknown_ones_are_refused() {
        let c = set(&[
            ("partitions", "8"),
            ("listen", "127.0.0.1:9999"),
            ("allow_http", "true"),
            ("actor_idle_secs", "7"),
        ])
        .unwrap();
        assert_eq!(
            (
                c.partitions,
                c.listen.port(),
                c.allow_http,
                c.actor_idle_secs
            ),
            (8, 9999, true, 7)
        );
        assert!(
            set(&[("partitons", "8")])
                .unwrap_err()
                .to_string()
                .contains("partitons")
        );
        assert!(
            set(&[("partitions", "0")])
                .unwrap_err()
                .to_string()
                .contains("partitions")
        );
    }

    #[test]
    fn a_file_with_an_unknown_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("sy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "partitons = 3\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("partitons"), "{err}");
    }
}
