//! A real HTTPS receiver for tests, benchmarks and `switchyard load`: a hyper server behind
//! rustls, with a certificate issued by a CA made at run time. The CA's PEM is written to a
//! file that a node trusts through `extra_root_certs`, so the node's TLS checks stay on.
//!
//! It records every request (arrival time, path, headers, body, or only the arrival for a
//! load run), counts concurrent requests, and answers whatever its `reply` function decides,
//! after an optional delay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// What is kept of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Headers and body (tests).
    Everything,
    /// Arrival time, path and `webhook-id` only, so a load run's millions of requests stay small.
    Arrivals,
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

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem_path: String,
    _dir: tempfile::TempDir,
}

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pem_path = dir.path().join("receiver-ca.pem");
        std::fs::write(&pem_path, cert.pem()).expect("write the CA");
        Ca {
            issuer: Issuer::new(params, key),
            pem_path: pem_path.display().to_string(),
            _dir: dir,
        }
    })
}

/// The PEM file of the CA that issues every receiver's certificate in this process.
pub fn ca_pem_path() -> &'static str {
    &ca().pem_path
}

struct Shared {
    keep: Keep,
    /// The body of every answer.
    body: Bytes,
    connections: AtomicUsize,
    received: Mutex<Vec<Received>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    reply: Box<ReplyFn>,
}

/// A running HTTPS receiver on 127.0.0.1; stops when dropped.
pub struct Receiver {
    /// `https://127.0.0.1:<port>/hook`; any path is accepted.
    pub url: String,
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
        Self::start_with(Keep::Everything, self_signed_acceptor(), |_, _| {
            Reply::status(200)
        })
        .await
    }

    /// [`Receiver::start`], choosing what is kept of each request.
    pub async fn start_keeping(
        keep: Keep,
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_with(keep, acceptor(), reply).await
    }

    /// [`Receiver::start`], answering `body` instead of `{"ok":true}`.
    pub async fn start_answering(
        body: Vec<u8>,
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_full(Keep::Everything, acceptor(), Bytes::from(body), reply).await
    }

    async fn start_with(
        keep: Keep,
        acceptor: TlsAcceptor,
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let body = Bytes::from_static(b"{\"ok\":true}");
        Self::start_full(keep, acceptor, body, reply).await
    }

    async fn start_full(
        keep: Keep,
        acceptor: TlsAcceptor,
        body: Bytes,
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a receiver");
        let url = format!(
            "https://127.0.0.1:{}/hook",
            listener.local_addr().expect("address").port()
        );
        let shared = Arc::new(Shared {
            keep,
            body,
            connections: AtomicUsize::new(0),
            received: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            reply: Box::new(reply),
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepting.connections.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let (acceptor, shared) = (acceptor.clone(), accepting.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Receiver { url, shared, task }
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
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn acceptor() -> TlsAcceptor {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params");
    let cert = params.signed_by(&key, &ca().issuer).expect("certificate");
    tls_acceptor(cert, key)
}

fn self_signed_acceptor() -> TlsAcceptor {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    tls_acceptor(cert, key)
}

fn tls_acceptor(cert: rcgen::Certificate, key: KeyPair) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
        .expect("server config");
    TlsAcceptor::from(Arc::new(tls))
}

async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let at = Instant::now();
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let path = req.uri().path().to_string();
    let everything = shared.keep == Keep::Everything;
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .filter(|(k, _)| everything || k.as_str() == "webhook-id")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let mut got = Received {
        at,
        wall_ms,
        path,
        headers,
        body: if everything { body } else { Vec::new() },
        answered: 0,
    };
    let answer = {
        let mut all = shared.received.lock().expect("lock");
        let answer = (shared.reply)(&got, all.len());
        got.answered = answer.status;
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
