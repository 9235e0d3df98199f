//! OTLP export (`--features otlp`): a node process sends its attempt and ingest spans to a
//! collector over OTLP/HTTP, and flushes them on a graceful shutdown.
//!
//! The collector here is a real HTTP server on 127.0.0.1 that decodes each request with the
//! OpenTelemetry protobuf definitions, as a collector would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::support::process::{NodeProcess, cluster_env};
use crate::support::{ADMIN_TOKEN, Api, Receiver, Redis, prefix, record_event, wait_until};

/// A span as received: its name and its attributes as strings.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn received(span: &Span) -> Received {
    let attributes = span
        .attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect();
    Received {
        name: span.name.clone(),
        attributes,
    }
}

/// Starts the collector; returns its base URL and what it has received so far.
async fn collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut sink = sink.lock().unwrap();
                for scope in request.resource_spans.iter().flat_map(|r| &r.scope_spans) {
                    sink.extend(scope.spans.iter().map(received));
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

// Multi-threaded: the collector must keep serving while this thread waits for the node to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_and_ingest_spans_reach_the_collector() {
    let redis = Redis::start();
    let logs = tempfile::tempdir().unwrap();
    let (collector_url, spans) = collector().await;
    let mut env = cluster_env(&redis.url, &prefix("otlp"), "otlp-node", 4);
    env.push(("SWITCHYARD_OTLP_ENDPOINT".into(), collector_url));
    let receiver = Receiver::ok().await;
    let mut node = NodeProcess::start(env, logs.path()).await;
    let admin = Api::new(&node.base, ADMIN_TOKEN);
    let (_, ws) = admin.post("/v1/workspaces", json!({"name": "Otlp"})).await;
    let workspace = ws["uuid"].as_str().unwrap().to_string();
    let api = Api::new(&node.base, ws["apiKey"].as_str().unwrap());
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let (status, answer) = api.post("/v1/events", record_event(1, "high")).await;
    assert_eq!(status, 202, "{answer}");
    let delivery = answer["deliveries"][0].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the delivery", || async {
        api.delivery_status(&delivery).await.as_deref() == Some("succeeded")
    })
    .await;
    // A graceful stop flushes the batch exporter: nothing is waited for after this.
    assert!(node.terminate().success());

    let spans = spans.lock().unwrap().clone();
    let attempt = spans
        .iter()
        .find(|s| s.name == "attempt" && s.get("delivery") == Some(delivery.as_str()))
        .unwrap_or_else(|| panic!("no attempt span for {delivery} in {spans:?}"));
    assert_eq!(attempt.get("endpoint"), ep["id"].as_str());
    assert_eq!(attempt.get("workspace"), Some(workspace.as_str()));
    assert_eq!(attempt.get("attempt"), Some("1"));
    assert_eq!(attempt.get("status"), Some("200"));
    let ingest = spans
        .iter()
        .find(|s| s.name == "ingest")
        .unwrap_or_else(|| panic!("no ingest span in {spans:?}"));
    assert_eq!(ingest.get("workspace"), Some(workspace.as_str()));
    assert_eq!(ingest.get("events"), Some("1"));
}
