//! The receiver's transport: TLS with a certificate issued by a CA made at run time (so a node
//! that trusts the CA's PEM keeps its TLS checks on), TLS with a certificate given as PEM
//! files, a self-signed certificate nobody trusts (tests of TLS errors), or plain HTTP. TLS
//! offers HTTP/2 and HTTP/1.1 (the client chooses), or HTTP/1.1 alone ([`Transport::http1_only`]).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ReceiverError;

/// How a receiver talks to its clients.
#[derive(Clone)]
pub enum Transport {
    Tls(TlsAcceptor),
    /// http:// (a node accepts it only in `--dev` or with `allow_http`).
    Plain,
}

impl Transport {
    /// TLS with a certificate for `localhost` and `127.0.0.1` issued by this process's CA
    /// ([`ca_pem_path`]).
    pub fn issued() -> Transport {
        let key = KeyPair::generate().expect("key");
        let cert = local_params()
            .signed_by(&key, &ca().issuer)
            .expect("certificate");
        Transport::Tls(acceptor(vec![cert.der().clone()], der_key(&key)))
    }

    /// TLS with a self-signed certificate: no node trusts it.
    pub fn self_signed() -> Transport {
        let key = KeyPair::generate().expect("key");
        let cert = local_params().self_signed(&key).expect("certificate");
        Transport::Tls(acceptor(vec![cert.der().clone()], der_key(&key)))
    }

    /// TLS with the certificate chain and private key of these PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Transport, ReceiverError> {
        let bad = |option: &str, path: &Path, e: &dyn std::fmt::Display| {
            ReceiverError::Tls(format!("{option} {}: {e}", path.display()))
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad("--tls-cert", cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("--tls-cert", cert, &e))?;
        if chain.is_empty() {
            return Err(bad("--tls-cert", cert, &"no CERTIFICATE in the file"));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("--tls-key", key, &e))?;
        let mut tls = server_config()
            .with_single_cert(chain, key_der)
            .map_err(|e| ReceiverError::Tls(format!("--tls-cert / --tls-key: {e}")))?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Transport::Tls(TlsAcceptor::from(Arc::new(tls))))
    }

    /// The same transport offering only HTTP/1.1 (TLS offers HTTP/2 first otherwise; the
    /// client chooses by ALPN, plain HTTP is always HTTP/1.1).
    pub fn http1_only(self) -> Transport {
        match self {
            Transport::Tls(acceptor) => {
                let mut config = rustls::ServerConfig::clone(acceptor.config());
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Transport::Tls(TlsAcceptor::from(Arc::new(config)))
            }
            Transport::Plain => Transport::Plain,
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Tls(_) => "https",
            Transport::Plain => "http",
        }
    }
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
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
            pem: cert.pem(),
            pem_path: pem_path.display().to_string(),
            _dir: dir,
        }
    })
}

/// The PEM file of the CA that issues every receiver's certificate in this process.
pub fn ca_pem_path() -> &'static str {
    &ca().pem_path
}

/// The same CA as PEM text (what `switchyard receiver --ca-out` writes).
pub fn ca_pem() -> &'static str {
    &ca().pem
}

fn local_params() -> CertificateParams {
    CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params")
}

fn der_key(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(key.serialize_der()).expect("key der")
}

fn server_config() -> rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
}

fn acceptor(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> TlsAcceptor {
    let mut tls = server_config()
        .with_single_cert(chain, key)
        .expect("server config");
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(tls))
}
