//! The checks of ranges and shapes after every layer is applied; each error names its key.

use super::{Config, ConfigError, invalid};

impl Config {
    /// Checks ranges and shapes; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=4096).contains(&self.partitions) {
            return Err(invalid("partitions", "must be 1 to 4096"));
        }
        let prefix_ok = !self.key_prefix.is_empty()
            && self
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !prefix_ok {
            return Err(invalid(
                "key_prefix",
                "must be non-empty ASCII letters, digits, - _ . :",
            ));
        }
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid("admin_token", "must be at least 16 characters"));
        }
        if self.node_id.is_empty() || self.node_id.len() > 100 {
            return Err(invalid("node_id", "must be 1 to 100 characters"));
        }
        if self.dev
            && let Some(urls) = &self.redis_url
        {
            let local = |url: &str| {
                url::Url::parse(url).ok().is_some_and(|u| {
                    matches!(
                        u.host_str(),
                        Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
                    )
                })
            };
            if let Some(far) = urls.split(',').map(str::trim).find(|u| !local(u)) {
                return Err(invalid(
                    "dev",
                    format!(
                        "development mode allows loopback endpoints, so it runs only with a Redis on loopback, not `{far}`"
                    ),
                ));
            }
        }
        if let Some(urls) = &self.redis_url {
            for url in urls.split(',').map(str::trim) {
                if redis::Client::open(url).is_err() {
                    return Err(invalid("redis_url", format!("`{url}` is not a Redis URL")));
                }
            }
        }
        if self.heartbeat_ms < 50 {
            return Err(invalid("heartbeat_ms", "must be at least 50"));
        }
        if self.lease_ms < 3 * self.heartbeat_ms {
            return Err(invalid(
                "lease_ms",
                "must be at least three heartbeats (heartbeat_ms)",
            ));
        }
        if self.retention_secs == 0 {
            return Err(invalid("retention_secs", "must be at least 1"));
        }
        if self.max_concurrent_ingests == 0 {
            return Err(invalid("max_concurrent_ingests", "must be at least 1"));
        }
        if self.overload_backlog_jobs == 0 {
            return Err(invalid("overload_backlog_jobs", "must be at least 1"));
        }
        if self.retention_max_per_partition == 0 {
            return Err(invalid("retention_max_per_partition", "must be at least 1"));
        }
        for (key, secs) in [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("body_timeout_secs", self.body_timeout_secs),
        ] {
            if secs == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if !(1..=10_000).contains(&self.http2_streams_per_connection) {
            return Err(invalid(
                "http2_streams_per_connection",
                "must be 1 to 10000",
            ));
        }
        if self.max_concurrent_attempts == 0 {
            return Err(invalid("max_concurrent_attempts", "must be at least 1"));
        }
        if self.partition_buffer == 0 {
            return Err(invalid("partition_buffer", "must be at least 1"));
        }
        if self.default_rate_per_second == Some(0) {
            return Err(invalid(
                "default_rate_per_second",
                "must be at least 1 (leave unset for no limit)",
            ));
        }
        if self.default_rate_burst == 0 {
            return Err(invalid("default_rate_burst", "must be at least 1"));
        }
        if self.breaker_threshold == 0 {
            return Err(invalid("breaker_threshold", "must be at least 1"));
        }
        if self.breaker_cooldown_ms == 0 || self.breaker_cooldown_ms > self.breaker_max_cooldown_ms
        {
            return Err(invalid(
                "breaker_cooldown_ms",
                "must be 1 to breaker_max_cooldown_ms",
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let scheme = url::Url::parse(endpoint).map(|u| u.scheme().to_string());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return Err(invalid(
                    "otlp_endpoint",
                    format!("`{endpoint}` is not an http(s) URL"),
                ));
            }
            if !cfg!(feature = "otlp") {
                return Err(invalid(
                    "otlp_endpoint",
                    "this build has no OTLP export: build with `--features otlp`, or unset it",
                ));
            }
        }
        if self.max_payload_bytes < 1024 {
            return Err(invalid("max_payload_bytes", "must be at least 1024"));
        }
        Ok(())
    }
}
