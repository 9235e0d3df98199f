//! The deliverer: signs a delivery and POSTs it, once, through the SSRF-guarded client.
//!
//! One `reqwest::Client` is shared by every endpoint actor of the node: connection pooling
//! and keep-alive are per host inside it, so a busy endpoint reuses its TLS sessions. The
//! client never follows redirects (a 3xx is a failed attempt: following one would let a
//! customer bounce us into a private address), never reads a system proxy, and resolves every
//! name through [`GuardedResolver`]. An attempt never returns an error: whatever happens
//! becomes an [`Attempt`] record for the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use url::Url;

use crate::config::Config;
use crate::delivery::{Attempt, AttemptError, AttemptRequest, AttemptResponse, Job, rfc3339};
use crate::endpoint::Endpoint;
use crate::signing::{SigningKey, signature_header};
use crate::ssrf::{Guard, GuardedResolver, SsrfError};

/// The `User-Agent` of every webhook.
pub const USER_AGENT: &str = concat!("Switchyard/", env!("CARGO_PKG_VERSION"));
/// Idle pooled connections kept per host. Many endpoints often share a host (hook relays,
/// automation platforms), each strict endpoint holding one request in flight: a small idle pool
/// would close and re-handshake TLS connections constantly (in a profile at 1,000 endpoints on
/// one host, handshakes cost 15 % of the CPU with 32).
const POOL_IDLE_PER_HOST: usize = 1024;

/// Why the deliverer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DelivererError {
    #[error("cannot read extra_root_certs {path}: {source}")]
    ReadRoots {
        path: String,
        source: std::io::Error,
    },
    #[error("extra_root_certs {path} holds no usable PEM certificate: {source}")]
    BadRoots {
        path: String,
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What the endpoint actor needs from an attempt besides the log record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub attempt: Attempt,
    /// `Retry-After` of a 429 or 503, when the receiver sent one.
    pub retry_after: Option<Duration>,
    /// The failure is final whatever attempts are left (410 Gone, SSRF refusal, ...).
    pub final_failure: bool,
}

/// Signs and sends attempts.
pub struct Deliverer {
    client: reqwest::Client,
    guard: Arc<Guard>,
    response_limit: usize,
    /// Attempts in flight on this node (`max_concurrent_attempts`). Each holds a TLS
    /// connection and its buffers: without a cap, 100k endpoints each with a job open
    /// connections by the thousand at once.
    in_flight: tokio::sync::Semaphore,
}

impl Deliverer {
    pub fn new(config: &Config) -> Result<Deliverer, DelivererError> {
        let guard = Arc::new(Guard::new(
            config.allow_private_cidrs.clone(),
            config.allow_http,
        ));
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(GuardedResolver(guard.clone())));
        if let Some(path) = &config.extra_root_certs {
            let display = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| DelivererError::ReadRoots {
                path: display.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                DelivererError::BadRoots {
                    path: display,
                    source,
                }
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Deliverer {
            client: builder.build()?,
            guard,
            response_limit: config.response_body_limit,
            in_flight: tokio::sync::Semaphore::new(config.max_concurrent_attempts),
        })
    }

    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// One signed POST of `job`'s delivery to `endpoint`; `None` when `may_send` said no at
    /// the last moment (the partition's lease may have passed: nothing was sent).
    pub async fn attempt(
        &self,
        endpoint: &Endpoint,
        keys: &[SigningKey],
        job: &Job,
        number: u32,
        may_send: impl Fn() -> bool,
    ) -> Option<Outcome> {
        let _slot = self.in_flight.acquire().await.expect("never closed");
        let started_at: DateTime<Utc> = Utc::now();
        let timestamp = started_at.timestamp();
        let id = job.id.to_string();
        let mut headers: BTreeMap<String, String> = endpoint.spec.headers.clone();
        headers.insert("content-type".into(), "application/json".into());
        headers.insert("user-agent".into(), USER_AGENT.into());
        headers.insert(
            "webhook-signature".into(),
            signature_header(keys, &id, timestamp, job.body.as_bytes()),
        );
        headers.insert("webhook-id".into(), id);
        headers.insert("webhook-timestamp".into(), timestamp.to_string());
        let request = AttemptRequest {
            url: endpoint.spec.url.clone(),
            headers: headers.clone(),
            body: None,
        };
        // The last check before bytes leave: a node paused past its lease sends nothing.
        if !may_send() {
            return None;
        }
        let clock = Instant::now();
        let result = self.send(endpoint, headers, &job.body).await;
        match &result {
            Ok((r, _)) => tracing::debug!(status = r.status, "attempt answered"),
            Err(e) => tracing::debug!(kind = %e.kind, error = %e.message, "attempt failed"),
        }
        let mut attempt = Attempt {
            attempt: number,
            started_at: rfc3339(started_at),
            duration_ms: clock.elapsed().as_millis() as u64,
            request,
            response: None,
            error: None,
            next_attempt_at: None,
        };
        match result {
            Ok((response, retry_after)) => {
                // 410 Gone, or the receiver's explicit `webhook-delivery: abort`, ends the delivery.
                let aborted = response
                    .headers
                    .get("webhook-delivery")
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("abort"));
                let gone = response.status == 410 || aborted;
                if !(200..300).contains(&response.status) {
                    attempt.error = Some(AttemptError {
                        kind: "status".into(),
                        message: format!("the endpoint answered {}", response.status),
                    });
                }
                attempt.response = Some(response);
                Some(Outcome {
                    attempt,
                    retry_after,
                    final_failure: gone,
                })
            }
            Err(error) => {
                let final_failure = error.kind == "ssrf";
                attempt.error = Some(error);
                Some(Outcome {
                    attempt,
                    retry_after: None,
                    final_failure,
                })
            }
        }
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        headers: BTreeMap<String, String>,
        body: &str,
    ) -> Result<(AttemptResponse, Option<Duration>), AttemptError> {
        let url = Url::parse(&endpoint.spec.url).map_err(|e| err("request", e.to_string()))?;
        self.guard
            .check_url(&url)
            .map_err(|e| err("ssrf", e.to_string()))?;
        let mut req = self
            .client
            .post(url)
            .timeout(Duration::from_millis(endpoint.spec.timeout_ms))
            .body(body.to_string());
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let mut resp = req.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let resp_headers: BTreeMap<String, String> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let retry_after = matches!(status, 429 | 503)
            .then(|| {
                resp_headers
                    .get("retry-after")
                    .and_then(|v| parse_retry_after(v, Utc::now()))
            })
            .flatten();
        let mut kept = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            let room = self.response_limit.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.len() > room {
                truncated = true;
                break;
            }
        }
        let response = AttemptResponse {
            status,
            headers: resp_headers,
            body: String::from_utf8_lossy(&kept).into_owned(),
            truncated,
        };
        Ok((response, retry_after))
    }
}

fn err(kind: &str, message: String) -> AttemptError {
    AttemptError {
        kind: kind.into(),
        message,
    }
}

/// Maps a transport error to the log's error kinds.
fn classify(e: reqwest::Error) -> AttemptError {
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = source {
        if let Some(ssrf) = s.downcast_ref::<SsrfError>() {
            return err("ssrf", ssrf.to_string());
        }
        if !chain.is_empty() {
            chain.push_str(": ");
        }
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let lower = chain.to_ascii_lowercase();
    let kind = if e.is_timeout() {
        "timeout"
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        "tls"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    err(kind, chain)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((when - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
