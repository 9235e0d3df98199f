//! `SWITCHYARD_*` variables over the file: each key upper-cased behind the prefix.

use super::{Config, ConfigError, LogFormat, Overload, invalid};

impl Config {
    /// Overrides from `SWITCHYARD_*` variables, read through `get` so tests need no process env.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim()
                .parse()
                .map_err(|e| invalid(key, format!("`{v}`: {e}")))
        }
        let var = |key: &str| get(&format!("SWITCHYARD_{}", key.to_ascii_uppercase()));
        if let Some(v) = var("listen") {
            self.listen = parse("listen", &v)?;
        }
        if let Some(v) = var("admin_token") {
            self.admin_token = Some(v).filter(|t| !t.is_empty());
        }
        if let Some(v) = var("redis_url") {
            self.redis_url = Some(v).filter(|t| !t.is_empty());
        }
        if let Some(v) = var("data_dir") {
            self.data_dir = v.into();
        }
        if let Some(v) = var("key_prefix") {
            self.key_prefix = v;
        }
        if let Some(v) = var("partitions") {
            self.partitions = parse("partitions", &v)?;
        }
        if let Some(v) = var("allow_private_cidrs") {
            self.allow_private_cidrs = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| parse("allow_private_cidrs", s))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = var("allow_http") {
            self.allow_http = parse("allow_http", &v)?;
        }
        if let Some(v) = var("dev") {
            self.dev = parse("dev", &v)?;
        }
        if let Some(v) = var("deliver_http2") {
            self.deliver_http2 = parse("deliver_http2", &v)?;
        }
        if let Some(v) = var("extra_root_certs") {
            self.extra_root_certs = Some(v.into());
        }
        if let Some(v) = var("node_id") {
            self.node_id = v;
        }
        if let Some(v) = var("default_rate_per_second") {
            self.default_rate_per_second = Some(parse("default_rate_per_second", &v)?);
        }
        if let Some(v) = var("default_rate_burst") {
            self.default_rate_burst = parse("default_rate_burst", &v)?;
        }
        if let Some(v) = var("breaker_threshold") {
            self.breaker_threshold = parse("breaker_threshold", &v)?;
        }
        if let Some(v) = var("breaker_cooldown_ms") {
            self.breaker_cooldown_ms = parse("breaker_cooldown_ms", &v)?;
        }
        if let Some(v) = var("auto_disable_after_secs") {
            self.auto_disable_after_secs = parse("auto_disable_after_secs", &v)?;
        }
        if let Some(v) = var("overload") {
            self.overload = match v.trim() {
                "accept" => Overload::Accept,
                "shed" => Overload::Shed,
                other => {
                    return Err(invalid(
                        "overload",
                        format!("`{other}`: expected accept or shed"),
                    ));
                }
            };
        }
        if let Some(v) = var("log_format") {
            self.log_format = match v.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "log_format",
                        format!("`{other}`: expected text or json"),
                    ));
                }
            };
        }
        for (key, field) in [
            ("actor_idle_secs", &mut self.actor_idle_secs),
            ("breaker_max_cooldown_ms", &mut self.breaker_max_cooldown_ms),
            ("idempotency_ttl_secs", &mut self.idempotency_ttl_secs),
            (
                "retention_max_per_partition",
                &mut self.retention_max_per_partition,
            ),
            ("min_free_disk_bytes", &mut self.min_free_disk_bytes),
            ("overload_backlog_jobs", &mut self.overload_backlog_jobs),
            ("max_throttle_secs", &mut self.max_throttle_secs),
            (
                "header_read_timeout_secs",
                &mut self.header_read_timeout_secs,
            ),
            ("body_timeout_secs", &mut self.body_timeout_secs),
            (
                "retry_after_ceiling_secs",
                &mut self.retry_after_ceiling_secs,
            ),
        ] {
            if let Some(v) = var(key) {
                *field = parse(key, &v)?;
            }
        }
        for (key, field) in [
            ("max_payload_bytes", &mut self.max_payload_bytes),
            ("partition_buffer", &mut self.partition_buffer),
            ("max_concurrent_attempts", &mut self.max_concurrent_attempts),
            (
                "http2_streams_per_connection",
                &mut self.http2_streams_per_connection,
            ),
            ("max_connections", &mut self.max_connections),
            ("max_concurrent_ingests", &mut self.max_concurrent_ingests),
            ("response_body_limit", &mut self.response_body_limit),
        ] {
            if let Some(v) = var(key) {
                *field = parse(key, &v)?;
            }
        }
        if let Some(v) = var("otlp_endpoint") {
            self.otlp_endpoint = Some(v).filter(|t| !t.is_empty());
        }
        if let Some(v) = var("lease_ms") {
            self.lease_ms = parse("lease_ms", &v)?;
        }
        if let Some(v) = var("heartbeat_ms") {
            self.heartbeat_ms = parse("heartbeat_ms", &v)?;
        }
        if let Some(v) = var("retention_secs") {
            self.retention_secs = parse("retention_secs", &v)?;
        }
        if let Some(v) = var("drain_timeout_secs") {
            self.drain_timeout_secs = parse("drain_timeout_secs", &v)?;
        }
        if let Some(v) = var("secret_grace_secs") {
            self.secret_grace_secs = parse("secret_grace_secs", &v)?;
        }
        Ok(())
    }
}
