//! The baseline: what this machine can do with a bare HTTPS client against the same receiver.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// POSTs `requests` small JSON bodies to `url` from `concurrency` workers sharing one pooled
/// client (rustls, keep-alive, the receiver's CA trusted) and returns requests per second.
pub async fn raw_client_rate(url: &str, ca_pem: &str, requests: usize, concurrency: usize) -> f64 {
    let pem = std::fs::read(ca_pem).unwrap_or_default();
    let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default();
    let client = reqwest::Client::builder()
        .tls_certs_merge(certs)
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        // The receiver offers HTTP/2 too; the baseline stays the HTTP/1.1 client it has been,
        // so the ratio moves only with what the dispatcher costs.
        .http1_only()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let next = Arc::new(AtomicUsize::new(0));
    let body = r#"{"event":"member:updated","member":{"id":1}}"#;
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let (client, next, url) = (client.clone(), next.clone(), format!("{url}/baseline/{w}"));
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let _ = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    requests as f64 / start.elapsed().as_secs_f64()
}
