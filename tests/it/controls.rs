//! Per-endpoint controls: concurrency, rate limits, backoff rules.

use std::time::Duration;

use serde_json::json;

use crate::support::{Node, Receiver, Redis, Reply, prefix, record_event, test_config, wait_until};

#[tokio::test]
async fn unordered_keeps_max_in_flight_requests_open_and_never_more() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("inflight"))).await;
    let api = node.workspace("Concurrency").await;
    let receiver = Receiver::start(|_, _| Reply { delay: Duration::from_millis(200), ..Reply::status(200) }).await;
    let ep = api.endpoint(json!({"url": receiver.url, "ordering": "unordered", "maxInFlight": 8})).await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let events: Vec<_> = (0..40).map(|n| record_event(n, "high")).collect();
    let (status, _) = api.post("/v1/events/batch", json!({"events": events})).await;
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(20), "40 deliveries", || async { receiver.count() == 40 }).await;
    assert_eq!(receiver.max_concurrent(), 8, "8 in flight at once, never 9");
    node.stop().await;
}
