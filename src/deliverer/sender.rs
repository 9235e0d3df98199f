//! One request on a pooled connection: over HTTP/1.1 through hyper's connection handle, over
//! HTTP/2 through `h2` directly, and the response's body as it arrives.
//!
//! HTTP/2 skips hyper's client because of what it costs per request: hyper hands each request
//! to the connection's task and spawns a task per request to await its response, where `h2`
//! queues the request's frames from the caller's task and wakes it with the response (a sixth
//! of the node's CPU per delivery at 1,000 endpoints on one origin; docs/benchmarks.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;

use super::error_chain;

/// An HTTP/1.1 connection (one request at a time, pooled idle) or a handle on an origin's
/// shared HTTP/2 connection (many streams at once).
pub enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2 {
        sender: h2::client::SendRequest<Bytes>,
        /// Held while the request is in flight.
        _stream: Stream,
    },
}

/// A response's body as it arrives.
pub enum Body {
    H1(hyper::body::Incoming),
    H2(h2::RecvStream),
}

impl Body {
    /// The next chunk of data; `None` at the end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, String>> {
        match self {
            Body::H1(body) => loop {
                match body.frame().await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => return Some(Ok(data)),
                        // Trailers.
                        Err(_) => continue,
                    },
                    Err(e) => return Some(Err(error_chain(&e))),
                }
            },
            Body::H2(body) => match body.data().await? {
                Ok(data) => {
                    // Read, so the server may send as much again (the window opens as the
                    // caller takes data; what it leaves unread resets the stream on drop).
                    let _ = body.flow_control().release_capacity(data.len());
                    Some(Ok(data))
                }
                Err(e) => Some(Err(error_chain(&e))),
            },
        }
    }
}

/// A stream taken on a shared HTTP/2 connection, given back when dropped (the response read,
/// or abandoned at a timeout).
pub struct Stream(pub(super) Arc<Streams>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0
            .released_ms
            .store(since_start_ms(), Ordering::Release);
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The streams taken on one HTTP/2 connection, when the last one was given back, and
/// whether the connection closed.
#[derive(Default)]
pub(super) struct Streams {
    pub(super) taken: AtomicUsize,
    pub(super) released_ms: AtomicU64,
    pub(super) closed: AtomicBool,
}

/// Milliseconds since the pool's clock started (an `Instant` kept in an atomic).
pub(super) fn since_start_ms() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

impl Sender {
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2 { .. })
    }

    /// Sends `request` with `body`; the response's head, its body to read.
    ///
    /// HTTP/2 goes through the `h2` crate directly: the request's frames are queued from this
    /// task and its response wakes this task, where hyper's client passes each request to the
    /// connection's task and spawns another to await the response (two task hops, and a
    /// task, per request).
    pub async fn send_request(
        &mut self,
        request: http::Request<()>,
        body: Bytes,
    ) -> Result<http::Response<Body>, String> {
        match self {
            Sender::H1(s) => {
                let (head, ()) = request.into_parts();
                let response = s
                    .send_request(http::Request::from_parts(head, Full::new(body)))
                    .await
                    .map_err(|e| error_chain(&e))?;
                Ok(response.map(Body::H1))
            }
            Sender::H2 { sender, .. } => {
                let chain = |e: h2::Error| error_chain(&e);
                // The handle taken from the pool is this request's own: waited on in place
                // (`ready()` would take another clone, a lock of the connection's state).
                std::future::poll_fn(|cx| sender.poll_ready(cx))
                    .await
                    .map_err(chain)?;
                let mut request = request;
                let headers = request.headers_mut();
                // `:authority` (from the absolute URI) says what `Host` does on HTTP/1.1.
                headers.remove(http::header::HOST);
                headers.insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from(body.len()),
                );
                let (response, mut send) = sender
                    .send_request(request, body.is_empty())
                    .map_err(chain)?;
                if !body.is_empty() {
                    // Queued whole: the body is bounded, and h2 sends it as the peer's
                    // window allows.
                    send.send_data(body, true).map_err(chain)?;
                }
                let response = response.await.map_err(chain)?;
                Ok(response.map(Body::H2))
            }
        }
    }
}
