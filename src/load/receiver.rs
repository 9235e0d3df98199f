//! A real webhook receiver for tests, benchmarks, `switchyard load` and `switchyard receiver`:
//! a hyper server behind rustls (a certificate issued by a CA made at run time, one given as
//! PEM files) or plain HTTP. The CA's PEM is written to a file that a node trusts through
//! `extra_root_certs`, so the node's TLS checks stay on.
//!
//! It records every request (arrival time, path, headers, body, or only what a load run needs),
//! checks Standard Webhooks signatures when given secrets, counts concurrent requests, and
//! answers whatever its `reply` function decides, after an optional delay. One server serves
//! both the in-process receiver of tests and the standalone `switchyard receiver` process;
//! the latter adds the control API ([`control`]) through which a load run elsewhere reads
//! what arrived.

pub mod answer;
pub mod control;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub use answer::{AnswerError, Behaviour, StatusMix, parse_error_rate, parse_latency};
pub use control::{Arrival, ArrivalsPage};
pub use tls::{Transport, ca_pem, ca_pem_path};

use crate::signing::SigningKey;

/// Why a receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("cannot listen on {addr} (--listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
}

/// What is kept of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Headers and body (tests).
    Everything,
    /// Arrival time, path, `webhook-id`, signature check and the load engine's sequence only,
    /// so a load run's millions of requests stay small.
    Arrivals,
}

/// Whether the control API is served, and behind which bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Off,
    Open,
    Token(String),
}

/// One received request.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// The same moment on the wall clock (unix ms, fractional), to compare with stored times.
    pub wall_ms: f64,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The status the receiver answered.
    pub answered: u16,
    /// The signature checked against the receiver's secrets; `None` without secrets.
    pub signature_ok: Option<bool>,
    /// The body's `member.seq` and `member.key` (the load engine's sequence and ordering key).
    pub seq: Option<u64>,
    pub key: Option<u64>,
    /// HTTP/1.1 or HTTP/2.
    pub version: http::Version,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the receiver answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Held this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

type ReplyFn = dyn Fn(&Received, usize) -> Reply + Send + Sync;
/// Called with each webhook (not control requests) as it is recorded, with all its headers
/// and its body whatever [`Keep`] says (`switchyard receiver --print`).
pub type ArrivalFn = dyn Fn(&Received, &http::HeaderMap, &[u8]) + Send + Sync;

/// How to start a receiver.
pub struct Options {
    pub listen: SocketAddr,
    pub transport: Transport,
    pub keep: Keep,
    /// The body of every answer.
    pub body: Bytes,
    /// Verify each webhook's signature with these (any one may match).
    pub secrets: Vec<SigningKey>,
    pub control: Control,
    pub on_arrival: Option<Box<ArrivalFn>>,
}

impl Options {
    /// TLS on 127.0.0.1, a port of the system's choosing, answering `{"ok":true}`.
    pub fn local(keep: Keep, transport: Transport) -> Options {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            transport,
            keep,
            body: Bytes::from_static(b"{\"ok\":true}"),
            secrets: Vec::new(),
            control: Control::Off,
            on_arrival: None,
        }
    }
}

struct Shared {
    keep: Keep,
    body: Bytes,
    secrets: Vec<SigningKey>,
    control: Control,
    on_arrival: Option<Box<ArrivalFn>>,
    connections: AtomicUsize,
    received: Mutex<Vec<Received>>,
    bad_signatures: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    reply: Box<ReplyFn>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// `https://127.0.0.1:<port>/hook`; any path is accepted.
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver that always answers 200.
    pub async fn ok() -> Receiver {
        Self::start(|_, _| Reply::status(200)).await
    }

    /// `reply(request, index)` decides each answer; `index` counts requests from 0.
    pub async fn start(
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_keeping(Keep::Everything, reply).await
    }

    /// A receiver whose certificate is self-signed, trusted by no node: every attempt to it
    /// fails its TLS handshake (tests of TLS errors).
    pub async fn untrusted() -> Receiver {
        let options = Options::local(Keep::Everything, Transport::self_signed());
        Self::start_with(options, |_, _| Reply::status(200)).await
    }

    /// [`Receiver::start`], choosing what is kept of each request.
    pub async fn start_keeping(
        keep: Keep,
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_with(Options::local(keep, Transport::issued()), reply).await
    }

    /// [`Receiver::start`], answering `body` instead of `{"ok":true}`.
    pub async fn start_answering(
        body: Vec<u8>,
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let options = Options {
            body: Bytes::from(body),
            ..Options::local(Keep::Everything, Transport::issued())
        };
        Self::start_with(options, reply).await
    }

    /// A receiver on `options.listen` (127.0.0.1 in tests), which must be free.
    pub async fn start_with(
        options: Options,
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::serve(options, reply)
            .await
            .expect("a receiver on 127.0.0.1")
    }

    /// Binds `options.listen` and serves until dropped.
    pub async fn serve(
        options: Options,
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Result<Receiver, ReceiverError> {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .and_then(|l| Ok((l.local_addr()?, l)))
            .map_err(|source| ReceiverError::Bind {
                addr: options.listen,
                source,
            });
        let (addr, listener) = listener?;
        let scheme = options.transport.scheme();
        let shared = Arc::new(Shared {
            keep: options.keep,
            body: options.body,
            secrets: options.secrets,
            control: options.control,
            on_arrival: options.on_arrival,
            connections: AtomicUsize::new(0),
            received: Mutex::new(Vec::new()),
            bad_signatures: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            reply: Box::new(reply),
        });
        let task = tokio::spawn(accept_loop(listener, options.transport, shared.clone()));
        Ok(Receiver {
            url: format!("{scheme}://{addr}/hook"),
            addr,
            scheme,
            shared,
            task,
        })
    }

    /// Stops accepting and closes its connections; its address is free once this returns.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// `scheme://address`, without a path.
    pub fn base(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Applies `f` to the requests received so far without copying them.
    pub fn with_received<R>(&self, f: impl FnOnce(&[Received]) -> R) -> R {
        f(&self.shared.received.lock().expect("lock"))
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().expect("lock").len()
    }

    /// The TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most requests that were being handled at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Webhooks whose signature matched none of the receiver's secrets.
    pub fn bad_signatures(&self) -> usize {
        self.shared.bad_signatures.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts and serves connections; they are closed with it (a dropped receiver closes its
/// connections as a stopped server would).
async fn accept_loop(listener: tokio::net::TcpListener, transport: Transport, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        // Finished connections are reaped as new ones come.
        while connections.try_join_next().is_some() {}
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let _ = tcp.set_nodelay(true);
        let (transport, shared) = (transport.clone(), shared.clone());
        connections.spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            let http = hyper::server::conn::http1::Builder::new();
            let _ = match transport {
                Transport::Tls(acceptor) => {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let mut h2 = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        );
                        h2.max_concurrent_streams(None);
                        let _ = h2.serve_connection(TokioIo::new(tls), service).await;
                        return;
                    }
                    http.serve_connection(TokioIo::new(tls), service).await
                }
                Transport::Plain => http.serve_connection(TokioIo::new(tcp), service).await,
            };
        });
    }
}

/// Where the load engine writes an event's sequence and ordering key.
#[derive(serde::Deserialize)]
struct Probe {
    member: Option<ProbeMember>,
}

#[derive(serde::Deserialize)]
struct ProbeMember {
    seq: Option<u64>,
    key: Option<u64>,
}

fn signature_ok(secrets: &[SigningKey], headers: &http::HeaderMap, body: &[u8]) -> Option<bool> {
    if secrets.is_empty() {
        return None;
    }
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let now = chrono::Utc::now().timestamp();
    Some(secrets.iter().any(|key| {
        let (id, ts, sig) = (
            h("webhook-id"),
            h("webhook-timestamp"),
            h("webhook-signature"),
        );
        crate::signing::verify(key, id, ts, sig, body, now).is_ok()
    }))
}

/// What is kept of one webhook, its signature checked and its sequence read.
fn received(
    shared: &Shared,
    (at, wall_ms): (Instant, f64),
    parts: &http::request::Parts,
    body: &Bytes,
) -> Received {
    let everything = shared.keep == Keep::Everything;
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .filter(|(k, _)| everything || k.as_str() == "webhook-id")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let signature_ok = signature_ok(&shared.secrets, &parts.headers, body);
    if signature_ok == Some(false) {
        shared.bad_signatures.fetch_add(1, Ordering::SeqCst);
    }
    let member = serde_json::from_slice::<Probe>(body)
        .ok()
        .and_then(|p| p.member);
    Received {
        at,
        wall_ms,
        path: parts.uri.path().to_string(),
        headers,
        body: if everything {
            body.to_vec()
        } else {
            Vec::new()
        },
        answered: 0,
        signature_ok,
        seq: member.as_ref().and_then(|m| m.seq),
        key: member.as_ref().and_then(|m| m.key),
        version: parts.version,
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    if shared.control != Control::Off && req.uri().path().starts_with(control::PREFIX) {
        return Ok(control::answer(&shared, &req));
    }
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let at = Instant::now();
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut got = received(&shared, (at, wall_ms), &parts, &body);
    let answer = {
        let mut all = shared.received.lock().expect("lock");
        let answer = (shared.reply)(&got, all.len());
        got.answered = answer.status;
        // Under the lock, so what is printed comes in the order of the arrivals' indexes.
        if let Some(on_arrival) = &shared.on_arrival {
            on_arrival(&got, &parts.headers, &body);
        }
        all.push(got);
        answer
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = hyper::Response::builder().status(answer.status);
    for (k, v) in &answer.headers {
        resp = resp.header(k, v);
    }
    Ok(resp
        .body(Full::new(shared.body.clone()))
        .expect("a valid response"))
}
