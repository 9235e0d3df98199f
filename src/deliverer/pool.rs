//! The deliverer's connections: resolved through the SSRF guard, TLS by rustls, HTTP/1.1 by
//! hyper or HTTP/2 by the `h2` crate (ALPN: the receiver chooses), kept alive per origin.
//!
//! Many endpoints often share a host (hook relays, automation platforms), each strict endpoint
//! holding one request in flight, so connections are pooled per origin (`scheme://host:port`),
//! not per endpoint:
//! - An origin that speaks HTTP/2 gets few connections, each carrying up to
//!   `http2_streams_per_connection` requests at once (100 by default: RFC 9113 asks servers to
//!   allow at least that many, so none waits for a stream the server would refuse), of any of its endpoints: the requests that are
//!   ready together leave in one write and their responses come back in one read, where
//!   HTTP/1.1 costs a write, a read and a TLS record each (at 1,000 endpoints on one host, a
//!   fifth of the node's CPU per delivery). A request goes to the first connection with a free
//!   stream; a new one is made only when all are full, and of the connections left without a
//!   stream one is kept, so a burst of first contacts (each opening its own) shrinks back.
//! - An HTTP/1.1 origin keeps idle connections up to [`MAX_IDLE_PER_ORIGIN`]: a small pool
//!   would close and re-handshake TLS constantly (at 1,000 endpoints on one host, handshakes
//!   cost 15 % of the CPU with 32). A connection goes back to the pool only after its response
//!   was read to the end and did not ask to close; one idle for [`IDLE_TIMEOUT`] is dropped
//!   when met.
//!
//! HTTP/2 is offered only with `deliver_http2`: it pays when many requests to one origin are in
//! flight together and costs a little when few are (frames, HPACK and flow control are work
//! HTTP/1.1 does not do; docs/benchmarks.md: −24 % node CPU per delivery at 1,000 endpoints on
//! one origin, −18 % at 100, +7 % at 10). Requests are sent by [`super::sender`].
//!
//! Names resolve through [`Guard::resolve`], which refuses a name with any forbidden address,
//! and the connection is made to exactly the addresses it checked, so a DNS answer that
//! changes between the check and the connect (rebinding) cannot reach a private address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::sender::{Sender, Stream, Streams, since_start_ms};
use super::{AttemptError, DelivererError, Target, err};
use crate::ssrf::Guard;

/// Idle connections kept per origin.
pub const MAX_IDLE_PER_ORIGIN: usize = 1024;
/// An idle connection older than this is closed instead of reused (receivers commonly close
/// theirs after 60–120 s; one they closed would fail its next request).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP connect, over every address of the name in turn.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that can take a request.
pub struct Conn {
    pub sender: Sender,
    origin: Arc<str>,
}

/// An origin that speaks HTTP/2: its connections, and the lock of making a new one.
#[derive(Default)]
struct Origin {
    conns: Vec<Shared>,
    connecting: Arc<tokio::sync::Mutex<()>>,
    /// The last new connection that failed, and when: those who waited for it fail with it
    /// rather than each trying in turn behind the lock.
    failed: Option<(Instant, AttemptError)>,
}

/// What an origin's HTTP/2 connections have for a request.
enum Free {
    Stream(Sender),
    /// Every stream is taken (or every connection closed): a new connection is made under the
    /// lock.
    None(Arc<tokio::sync::Mutex<()>>),
    /// The origin has no HTTP/2 connection.
    NotHttp2,
}

/// An HTTP/2 connection of an origin and the streams taken on it.
struct Shared {
    sender: h2::client::SendRequest<Bytes>,
    streams: Arc<Streams>,
}

impl Shared {
    fn is_closed(&self) -> bool {
        self.streams.closed.load(Ordering::Acquire)
    }

    /// A stream on this connection, if fewer than `cap` are taken.
    fn take(&self, cap: usize) -> Option<Sender> {
        self.streams
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        Some(Sender::H2 {
            sender: self.sender.clone(),
            _stream: Stream(self.streams.clone()),
        })
    }

    fn in_use(&self) -> bool {
        self.streams.taken.load(Ordering::Acquire) > 0
    }

    /// Without a stream for [`IDLE_TIMEOUT`]: closed rather than reused, as an HTTP/1.1
    /// connection would be.
    fn stale(&self) -> bool {
        !self.in_use()
            && since_start_ms().saturating_sub(self.streams.released_ms.load(Ordering::Acquire))
                >= IDLE_TIMEOUT.as_millis() as u64
    }
}

struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

pub struct Pool {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle>>>,
    /// The HTTP/2 connections of each origin that chose it.
    shared: Mutex<HashMap<Arc<str>, Origin>>,
    /// Streams taken at once on one HTTP/2 connection; `None`: HTTP/2 is not offered, and a
    /// checkout goes straight to the HTTP/1.1 connections.
    streams: Option<usize>,
    tls: tokio_rustls::TlsConnector,
    guard: Arc<Guard>,
}

impl Pool {
    pub fn new(
        guard: Arc<Guard>,
        extra_roots: Option<&std::path::Path>,
        http2: Option<usize>,
    ) -> Result<Pool, DelivererError> {
        Ok(Pool {
            idle: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
            streams: http2,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls_config(
                extra_roots,
                http2.is_some(),
            )?)),
            guard,
        })
    }

    /// A free stream on the origin's HTTP/2 connections, an idle HTTP/1.1 connection that is
    /// still open, or a new connection.
    pub async fn checkout(&self, target: &Target) -> Result<Conn, AttemptError> {
        let conn = |sender| Conn {
            sender,
            origin: target.origin.clone(),
        };
        match self.stream(&target.origin) {
            Free::Stream(sender) => return Ok(conn(sender)),
            Free::None(connecting) => {
                // One new connection at a time per origin: those who waited for it find their
                // streams on it.
                let waited = Instant::now();
                let _one = connecting.lock().await;
                if let Free::Stream(sender) = self.stream(&target.origin) {
                    return Ok(conn(sender));
                }
                if let Some(e) = self.failed_since(&target.origin, waited) {
                    return Err(e);
                }
                let connected = self.connect(target).await;
                if let Err(e) = &connected
                    && let Some(origin) = self
                        .shared
                        .lock()
                        .expect("pool lock")
                        .get_mut(&target.origin)
                {
                    origin.failed = Some((Instant::now(), e.clone()));
                }
                return connected;
            }
            Free::NotHttp2 => {}
        }
        loop {
            let idle = {
                let mut pool = self.idle.lock().expect("pool lock");
                pool.get_mut(&target.origin).and_then(Vec::pop)
            };
            let Some(mut idle) = idle else { break };
            if idle.since.elapsed() >= IDLE_TIMEOUT || idle.sender.is_closed() {
                continue;
            }
            // Ready at once unless the connection is closing (then it errors).
            if idle.sender.ready().await.is_ok() {
                return Ok(conn(Sender::H1(idle.sender)));
            }
        }
        self.connect(target).await
    }

    /// A free stream on one of the origin's HTTP/2 connections. Closed and stale connections
    /// are dropped here, and of those without a stream in use all but one.
    fn stream(&self, origin: &Arc<str>) -> Free {
        let Some(cap) = self.streams else {
            return Free::NotHttp2;
        };
        let mut shared = self.shared.lock().expect("pool lock");
        let Some(origin) = shared.get_mut(origin) else {
            return Free::NotHttp2;
        };
        let mut unused = false;
        origin.conns.retain(|c| {
            !c.is_closed() && !c.stale() && (c.in_use() || !std::mem::replace(&mut unused, true))
        });
        match origin.conns.iter().find_map(|c| c.take(cap)) {
            Some(sender) => Free::Stream(sender),
            None => Free::None(origin.connecting.clone()),
        }
    }

    /// The error of a new connection to `origin` that failed after `since`.
    fn failed_since(&self, origin: &Arc<str>, since: Instant) -> Option<AttemptError> {
        let shared = self.shared.lock().expect("pool lock");
        match &shared.get(origin)?.failed {
            Some((at, e)) if *at >= since => Some(e.clone()),
            _ => None,
        }
    }

    /// Returns a connection whose response was read to the end.
    pub fn checkin(&self, conn: Conn) {
        // An HTTP/2 stream is given back when dropped.
        let Sender::H1(sender) = conn.sender else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let mut pool = self.idle.lock().expect("pool lock");
        let idle = pool.entry(conn.origin).or_default();
        if idle.len() < MAX_IDLE_PER_ORIGIN {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, target: &Target) -> Result<Conn, AttemptError> {
        let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
            // An IP literal was checked with the URL (`Guard::check_url`).
            Ok(ip) => vec![SocketAddr::new(ip, target.port)],
            Err(_) => self
                .guard
                .resolve(&target.host, target.port)
                .await
                .map_err(|e| err("ssrf", e.to_string()))?,
        };
        let tcp = connect_any(&addrs).await?;
        let _ = tcp.set_nodelay(true);
        let sender = match &target.server_name {
            Some(name) => {
                let tls =
                    self.tls.connect(name.clone(), tcp).await.map_err(|e| {
                        err("tls", format!("TLS handshake with {}: {e}", target.host))
                    })?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                if let Some(cap) = self.streams
                    && h2
                {
                    let conn = handshake_h2(tls).await?;
                    let sender = conn.take(cap).expect("a new connection has a free stream");
                    let mut shared = self.shared.lock().expect("pool lock");
                    let origin = shared.entry(target.origin.clone()).or_default();
                    origin.conns.push(conn);
                    sender
                } else {
                    if self.streams.is_some() {
                        // The origin no longer takes HTTP/2 (or never did).
                        self.shared
                            .lock()
                            .expect("pool lock")
                            .remove(&target.origin);
                    }
                    Sender::H1(handshake(tls).await?)
                }
            }
            None => Sender::H1(handshake(tcp).await?),
        };
        Ok(Conn {
            sender,
            origin: target.origin.clone(),
        })
    }
}

/// The HTTP/1.1 handshake over a connected stream; the connection runs in its own task.
async fn handshake<T>(io: T) -> Result<http1::SendRequest<Full<Bytes>>, AttemptError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| err("connect", e.to_string()))?;
    drive(conn, None);
    Ok(sender)
}

/// The HTTP/2 handshake; the connection runs in its own task until it closes or no handle
/// on it is left, and marks itself closed then.
async fn handshake_h2<T>(io: T) -> Result<Shared, AttemptError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = h2::client::handshake(io)
        .await
        .map_err(|e| err("connect", e.to_string()))?;
    let streams = Arc::new(Streams::default());
    drive(conn, Some(streams.clone()));
    Ok(Shared { sender, streams })
}

/// Runs a connection's I/O in its own task until it closes; an HTTP/2 connection marks its
/// streams closed then, so the pool stops handing it out.
fn drive<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>> + Send + 'static,
    closed: Option<Arc<Streams>>,
) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "webhook connection closed");
        }
        if let Some(streams) = closed {
            streams.closed.store(true, Ordering::Release);
        }
    });
}

/// Connects to the first address that answers.
async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, AttemptError> {
    let mut last = String::from("no address");
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => return Err(err("connect", format!("{addr}: connect timed out"))),
        }
    }
    Err(err("connect", last))
}

/// rustls with the platform's verifier (the system trust store) and the operator's extra
/// roots; ALPN offers HTTP/2 first when `http2`, HTTP/1.1 in any case.
fn tls_config(
    extra_roots: Option<&std::path::Path>,
    http2: bool,
) -> Result<rustls::ClientConfig, DelivererError> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = match extra_roots {
        None => rustls_platform_verifier::Verifier::new(provider.clone()),
        Some(path) => {
            let display = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| DelivererError::ReadRoots {
                path: display.clone(),
                source,
            })?;
            let certs =
                parse_pem(&pem).map_err(|why| DelivererError::BadRoots { path: display, why })?;
            rustls_platform_verifier::Verifier::new_with_extra_roots(certs, provider.clone())
        }
    }
    .map_err(|e| DelivererError::Tls(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DelivererError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

fn parse_pem(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// The name TLS checks the certificate against, for an `https` target.
pub fn server_name(host: &str) -> Result<ServerName<'static>, AttemptError> {
    ServerName::try_from(host.to_string()).map_err(|e| err("request", format!("{host}: {e}")))
}
