//! The web console (`GET /console`): the delivery log, endpoints, events, rules, the event
//! types, replay and a live view, for an operator with a workspace API key.
//!
//! Its three assets (`console/index.html`, `app.js`, `app.css`) are compiled into the binary
//! and served by the node itself, with a Content-Security-Policy that lets the page load and
//! call nothing but the node: it works on an air-gapped cluster, with no CDN, font or Node
//! toolchain. The page holds the API key in the tab's session storage only and calls the public
//! API with it, so it can do nothing the key cannot; every page is one bounded API call (a
//! page of a list, one object), never a scan, so it stays fast at any volume of the log.
//! These routes are not in `/openapi.json`: the fuzzer and generated clients stay on the API.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// Nothing but this node: no inline script, no other origin, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The console's routes, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
