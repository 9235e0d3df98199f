//! The deliverer: signs a delivery and POSTs it, once, through the SSRF-guarded pool.
//!
//! Requests go out over hyper's HTTP/1.1 client connections, pooled per origin by
//! [`pool::Pool`]. What an endpoint's requests share (the parsed URL, the `Host`, the static
//! headers, the TLS name) is prepared once per endpoint version as a [`Target`], so an attempt
//! only signs, adds three headers and sends. Redirects are never followed (a 3xx is a failed
//! attempt: following one would let a customer bounce us into a private address) and no
//! proxy is used. An attempt never returns an error: whatever happens becomes the
//! [`AttemptRecord`] the delivery log stores, built here directly.

mod pool;
mod sender;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use url::{Host, Url};

use crate::config::Config;
use crate::delivery::{AttemptError, Job};
use crate::endpoint::Endpoint;
use crate::signing::{SigningKey, signature_header};
use crate::ssrf::Guard;
use crate::store::record::AttemptRecord;

/// The `User-Agent` of every webhook.
pub const USER_AGENT: &str = concat!("Switchyard/", env!("CARGO_PKG_VERSION"));
// The signature headers as constants: a name given as a `&str` is copied into a new
// allocation on every insert.
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// The error kind of an attempt whose body the endpoint's transform could not make.
pub const TEMPLATE_ERROR: &str = "template";

/// Why the deliverer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DelivererError {
    #[error("cannot read extra_root_certs {path}: {source}")]
    ReadRoots {
        path: String,
        source: std::io::Error,
    },
    #[error("extra_root_certs {path} holds no usable PEM certificate: {why}")]
    BadRoots { path: String, why: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// What the endpoint actor needs from an attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The attempt as the delivery log stores it (`x`, the next attempt, is set by the actor).
    pub record: AttemptRecord,
    /// `Retry-After` of a 429 or 503, when the receiver sent one.
    pub retry_after: Option<Duration>,
    /// The failure is final whatever attempts are left (410 Gone, SSRF refusal, ...).
    pub final_failure: bool,
}

impl Outcome {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.record.succeeded()
    }

    pub fn status(&self) -> Option<u16> {
        self.record.st
    }

    /// The error's kind and message (`status` for a non-2xx answer).
    pub fn error(&self) -> Option<(&str, &str)> {
        self.record.error()
    }

    /// An attempt that ended in an error of `kind` before any answer.
    pub fn failed(number: u32, kind: &str, message: String) -> Outcome {
        Outcome {
            record: AttemptRecord {
                n: number,
                t: Utc::now().timestamp_millis(),
                d: 0,
                u: String::new(),
                sig: String::new(),
                h: BTreeMap::new(),
                st: None,
                rh: Vec::new(),
                rb: String::new(),
                tr: false,
                e: Some((kind.to_string(), message)),
                x: None,
            },
            retry_after: None,
            final_failure: false,
        }
    }
}

/// What every request to one endpoint shares, prepared once per version of the endpoint.
pub struct Target {
    url: String,
    /// `scheme://host:port`: the pool's key.
    origin: Arc<str>,
    /// The host to resolve (no brackets), and the port.
    host: String,
    port: u16,
    /// The TLS name (`https`), `None` for `http` (tests and development only).
    server_name: Option<rustls::pki_types::ServerName<'static>>,
    path: http::Uri,
    /// `scheme://authority/path?query`: what an HTTP/2 request names (`:scheme`, `:authority`).
    absolute: http::Uri,
    /// `host`, `content-type`, `user-agent` and the endpoint's custom headers.
    headers: HeaderMap,
    /// The custom headers, as each attempt's record keeps them.
    custom: BTreeMap<String, String>,
    timeout: Duration,
}

impl Target {
    /// Prepares the requests to `endpoint`; the URL is checked against the SSRF guard here
    /// (its resolved addresses are checked at every connect).
    pub fn of(endpoint: &Endpoint, guard: &Guard) -> Result<Target, AttemptError> {
        let url = Url::parse(&endpoint.spec.url).map_err(|e| err("request", e.to_string()))?;
        guard
            .check_url(&url)
            .map_err(|e| err("ssrf", e.to_string()))?;
        let host = match url.host() {
            Some(Host::Domain(d)) => d.to_string(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(err("request", "the URL has no host".into())),
        };
        let https = url.scheme() == "https";
        let port = url.port_or_known_default().unwrap_or(443);
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let absolute: http::Uri = format!("{}://{authority}{path}", url.scheme())
            .parse()
            .map_err(|e| err("request", format!("{e}")))?;
        let path: http::Uri = path.parse().map_err(|e| err("request", format!("{e}")))?;
        let mut headers = HeaderMap::with_capacity(endpoint.spec.headers.len() + 6);
        let value = |v: &str| {
            HeaderValue::from_str(v).map_err(|e| err("request", format!("header value: {e}")))
        };
        headers.insert(header::HOST, value(&authority)?);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        for (k, v) in &endpoint.spec.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| err("request", format!("header {k}: {e}")))?;
            headers.insert(name, value(v)?);
        }
        Ok(Target {
            origin: format!("{}://{host}:{port}", url.scheme()).into(),
            server_name: if https {
                Some(pool::server_name(&host)?)
            } else {
                None
            },
            url: endpoint.spec.url.clone(),
            host,
            port,
            path,
            absolute,
            headers,
            custom: endpoint.spec.headers.clone(),
            timeout: Duration::from_millis(endpoint.spec.timeout_ms),
        })
    }
}

/// A delivery's body, shared with its job (no copy per attempt).
struct Shared(Arc<str>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Signs and sends attempts.
pub struct Deliverer {
    pool: pool::Pool,
    guard: Arc<Guard>,
    response_limit: usize,
    /// Attempts in flight on this node (`max_concurrent_attempts`). Each holds a TLS
    /// connection and its buffers: without a cap, 100k endpoints each with a job open
    /// connections by the thousand at once.
    in_flight: tokio::sync::Semaphore,
}

/// What a send got back.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    truncated: bool,
    retry_after: Option<Duration>,
}

impl Deliverer {
    pub fn new(config: &Config) -> Result<Deliverer, DelivererError> {
        let guard = Arc::new(Guard::new(
            config.allow_private_cidrs.clone(),
            config.allow_http,
        ));
        Ok(Deliverer {
            pool: pool::Pool::new(
                guard.clone(),
                config.extra_root_certs.as_deref(),
                config
                    .deliver_http2
                    .then_some(config.http2_streams_per_connection),
            )?,
            guard,
            response_limit: config.response_body_limit,
            in_flight: tokio::sync::Semaphore::new(config.max_concurrent_attempts),
        })
    }

    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// One signed POST of `job`'s delivery to `target`; `None` when `may_send` said no at
    /// the last moment (the partition's lease may have passed: nothing was sent).
    pub async fn attempt(
        &self,
        target: &Result<Target, AttemptError>,
        keys: &[SigningKey],
        job: &Job,
        number: u32,
        may_send: impl Fn() -> bool,
    ) -> Option<Outcome> {
        let _slot = self.in_flight.acquire().await.expect("never closed");
        let started_ms = Utc::now().timestamp_millis();
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                // The URL itself is refused: nothing can be sent, now or later.
                if !may_send() {
                    return None;
                }
                let mut outcome = Outcome::failed(number, &e.kind, e.message.clone());
                outcome.final_failure = e.kind == "ssrf";
                return Some(outcome);
            }
        };
        let id = job.id.to_string();
        let timestamp = started_ms.div_euclid(1000);
        let sig = signature_header(keys, &id, timestamp, job.body.as_bytes());
        let mut headers = target.headers.clone();
        let valid = "ids and base64 are valid header values";
        headers.insert(WEBHOOK_SIGNATURE, HeaderValue::from_str(&sig).expect(valid));
        headers.insert(WEBHOOK_ID, HeaderValue::try_from(id).expect(valid));
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        if !may_send() {
            return None;
        }
        let clock = Instant::now();
        let body = Bytes::from_owner(Shared(job.body.clone()));
        let sent =
            tokio::time::timeout(target.timeout, self.send(target, headers, body, &may_send)).await;
        let result = match sent {
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(answer))) => Ok(answer),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(err(
                "timeout",
                format!("no answer within {} ms", target.timeout.as_millis()),
            )),
        };
        let mut record = AttemptRecord {
            n: number,
            t: started_ms,
            d: clock.elapsed().as_millis() as u64,
            u: target.url.clone(),
            sig,
            h: target.custom.clone(),
            st: None,
            rh: Vec::new(),
            rb: String::new(),
            tr: false,
            e: None,
            x: None,
        };
        match result {
            Ok(answer) => {
                tracing::debug!(status = answer.status, "attempt answered");
                // 410 Gone, or the receiver's explicit `webhook-delivery: abort`, ends the delivery.
                let aborted = answer.headers.iter().any(|(k, v)| {
                    k == "webhook-delivery" && v.trim().eq_ignore_ascii_case("abort")
                });
                let gone = answer.status == 410 || aborted;
                if !(200..300).contains(&answer.status) {
                    record.e = Some((
                        "status".into(),
                        format!("the endpoint answered {}", answer.status),
                    ));
                }
                record.st = Some(answer.status);
                record.rh = answer.headers;
                record.rb = answer.body;
                record.tr = answer.truncated;
                Some(Outcome {
                    record,
                    retry_after: answer.retry_after,
                    final_failure: gone,
                })
            }
            Err(error) => {
                tracing::debug!(kind = %error.kind, error = %error.message, "attempt failed");
                let final_failure = error.kind == "ssrf";
                record.e = Some((error.kind, error.message));
                Some(Outcome {
                    record,
                    retry_after: None,
                    final_failure,
                })
            }
        }
    }

    /// Sends once a connection is ready; `Ok(None)` when `may_send` says no then (the last
    /// check before bytes leave: a node paused past its lease sends nothing).
    async fn send(
        &self,
        target: &Target,
        headers: HeaderMap,
        body: Bytes,
        may_send: &impl Fn() -> bool,
    ) -> Result<Option<Answer>, AttemptError> {
        let mut conn = self.pool.checkout(target).await?;
        if !may_send() {
            self.pool.checkin(conn);
            return Ok(None);
        }
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = if conn.sender.is_h2() {
            target.absolute.clone()
        } else {
            target.path.clone()
        };
        *request.headers_mut() = headers;
        let response = conn
            .sender
            .send_request(request, body)
            .await
            .map_err(|message| err("request", message))?;
        let status = response.status().as_u16();
        let closes = response
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let retry_after = matches!(status, 429 | 503)
            .then(|| {
                headers
                    .iter()
                    .find(|(k, _)| k == "retry-after")
                    .and_then(|(_, v)| parse_retry_after(v, Utc::now()))
            })
            .flatten();
        let mut body = response.into_body();
        let mut kept: Vec<u8> = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = body.chunk().await {
            let chunk = chunk.map_err(|message| err("request", message))?;
            let room = self.response_limit.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.len() > room {
                truncated = true;
                break;
            }
        }
        // A connection is reused only once its response was read to the end.
        if !truncated && !closes {
            drop(body);
            self.pool.checkin(conn);
        }
        Ok(Some(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&kept).into_owned(),
            truncated,
            retry_after,
        }))
    }
}

fn err(kind: &str, message: String) -> AttemptError {
    AttemptError {
        kind: kind.into(),
        message,
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    chain
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
