//! The deliverer's connections: resolved through the SSRF guard, TLS by rustls, HTTP/1.1 by
//! hyper, kept alive per origin.
//!
//! Many endpoints often share a host (hook relays, automation platforms), each strict endpoint
//! holding one request in flight, so idle connections are pooled per origin
//! (`scheme://host:port`), not per endpoint, up to [`MAX_IDLE_PER_ORIGIN`]: a small pool would
//! close and re-handshake TLS constantly (at 1,000 endpoints on one host, handshakes cost 15 %
//! of the CPU with 32). A connection goes back to the pool only after its response was read to
//! the end and did not ask to close; one idle for [`IDLE_TIMEOUT`] is dropped when met.
//!
//! Names resolve through [`Guard::resolve`], which refuses a name with any forbidden address,
//! and the connection is made to exactly the addresses it checked, so a DNS answer that
//! changes between the check and the connect (rebinding) cannot reach a private address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

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
    pub sender: SendRequest<Full<Bytes>>,
    origin: Arc<str>,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

pub struct Pool {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle>>>,
    tls: tokio_rustls::TlsConnector,
    guard: Arc<Guard>,
}

impl Pool {
    pub fn new(
        guard: Arc<Guard>,
        extra_roots: Option<&std::path::Path>,
    ) -> Result<Pool, DelivererError> {
        Ok(Pool {
            idle: Mutex::new(HashMap::new()),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls_config(extra_roots)?)),
            guard,
        })
    }

    /// An idle connection to the target's origin that is still open, or a new one.
    pub async fn checkout(&self, target: &Target) -> Result<Conn, AttemptError> {
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
                return Ok(Conn {
                    sender: idle.sender,
                    origin: target.origin.clone(),
                });
            }
        }
        self.connect(target).await
    }

    /// Returns a connection whose response was read to the end.
    pub fn checkin(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut pool = self.idle.lock().expect("pool lock");
        let idle = pool.entry(conn.origin).or_default();
        if idle.len() < MAX_IDLE_PER_ORIGIN {
            idle.push(Idle {
                sender: conn.sender,
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
                handshake(tls).await?
            }
            None => handshake(tcp).await?,
        };
        Ok(Conn {
            sender,
            origin: target.origin.clone(),
        })
    }
}

/// The HTTP/1.1 handshake over a connected stream; the connection runs in its own task.
async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, AttemptError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| err("connect", e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "webhook connection closed");
        }
    });
    Ok(sender)
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
/// roots; HTTP/1.1 only (ALPN), so every endpoint is spoken to the same way.
fn tls_config(
    extra_roots: Option<&std::path::Path>,
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
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
