//! The API's HTTP server: hyper's HTTP/1.1 connections with the limits an open port needs.
//!
//! `axum::serve` sets no timer, so hyper's header timeout never ran and a client could hold a
//! connection with half its headers forever; it also accepts without bound, so idle sockets
//! could use up the process's file descriptors and starve `/healthz`. This accept loop:
//!
//! - gives each connection `header_read_timeout`: a request's headers must arrive within it,
//!   and (hyper ≥ 1.6 re-arms it when a connection goes idle) a keep-alive connection must
//!   start its next request within it, so it is also the idle timeout;
//! - holds at most `max_connections` connections; one more is answered a small JSON 503 with
//!   `connection: close` and closed at once (the accept loop never waits, so it is never
//!   starved; beyond a few dozen such answers in flight a surplus socket is just closed);
//! - on shutdown stops accepting, lets in-flight requests finish and closes idle connections.
//!
//! Bodies are bounded by `api::read_body` (size and `body_timeout_secs`), and URI and header
//! sizes by [`limit_request_head`], so those refusals carry the JSON error body. hyper itself
//! answers a URI over 64 KiB or a head over its buffer (1 MiB here) with a bare 414 / 431
//! before any of our code runs: those are the only refusals without the error body.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::ApiError;

/// The limits of the API's connections (from the config's keys of the same names).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Longest request URI the API reads (path and query); longer is a 414.
pub const MAX_URI: usize = 8 * 1024;
/// Most request headers, and their total bytes; more is a 431.
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper's own read buffer: large enough that our limits above answer first, with a body.
const HYPER_BUFFER: usize = 1024 * 1024;
/// Refusals of surplus connections in flight at once; past this a surplus socket is closed.
const MAX_REFUSALS: usize = 64;
const BUSY: &str = r#"{"error":{"code":"too_many_connections","message":"the node holds its maximum of open connections; retry shortly"}}"#;

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(HYPER_BUFFER)
        .max_headers(MAX_HEADERS * 2)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(app);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin; stay stoppable.
                tracing::error!(error = %e, "cannot accept a connection; retrying in 200 ms");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the limit with a JSON 503 and closes it (after reading a little of
/// what the client sent, so the close is not a reset that loses the answer).
async fn refuse(mut stream: TcpStream) {
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Middleware: a URI or a head larger than the API reads is refused with the error body.
pub async fn limit_request_head(req: Request, next: Next) -> Response {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI is longer than {MAX_URI} bytes"),
        )
        .into_response();
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes in all"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Raises this process's soft open-file limit to its hard limit (the common soft default of
/// 1,024 is below what `max_connections` plus the delivery connections need). Returns the new
/// soft limit.
pub fn raise_open_file_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
