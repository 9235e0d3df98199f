//! End-to-end delivery through the HTTP API only: signing, retries, failure, order.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    Node, Receiver, Redis, RedisCluster, Reply, embedded_config, prefix, record_event, test_config,
    test_config_at, wait_until,
};

#[tokio::test]
async fn a_matching_event_is_delivered_once_signed_and_logged() {
    let redis = Redis::start();
    signed_delivery_scenario(test_config(&redis, &prefix("e2e"))).await;
}

#[tokio::test]
async fn a_matching_event_is_delivered_once_signed_and_logged_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    signed_delivery_scenario(embedded_config(dir.path())).await;
}

#[tokio::test]
async fn a_matching_event_is_delivered_once_signed_and_logged_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    signed_delivery_scenario(test_config_at(&cluster.url, &prefix("e2e"))).await;
}

async fn signed_delivery_scenario(config: switchyard::config::Config) {
    let node = Node::start(config).await;
    let api = node.workspace("Acme Health").await;
    let receiver = Receiver::ok().await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "headers": {"X-Team": "growth"}}))
        .await;
    let secret = ep["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let rule = api
        .rule(json!({"name": "Notify CRM", "events": ["data_record:created"],
            "conditions": {"all": [{"field": "dataRecord.fields.priority", "op": "eq", "value": "high"}]},
            "actions": [{"type": "webhook", "endpointId": ep["id"]}]}))
        .await;

    let (status, miss) = api.post("/v1/events", record_event(1, "low")).await;
    assert_eq!(status, 202, "{miss}");
    assert_eq!(miss["deliveries"], json!([]));
    let (status, hit) = api.post("/v1/events", record_event(2, "high")).await;
    assert_eq!(status, 202, "{hit}");
    let delivery_id = hit["deliveries"][0].as_str().unwrap().to_string();
    assert_eq!(hit["deliveries"].as_array().unwrap().len(), 1);

    wait_until(
        Duration::from_secs(10),
        "the delivery to succeed",
        || async { api.delivery_status(&delivery_id).await.as_deref() == Some("succeeded") },
    )
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "exactly one POST");
    let r = &got[0];
    assert_eq!(r.header("webhook-id"), delivery_id);
    assert_eq!(r.header("x-team"), "growth");
    assert_eq!(r.header("content-type"), "application/json");
    assert!(r.header("user-agent").starts_with("Switchyard/"));
    crate::support::verify_received(&secret, r)
        .expect("the signature verifies with the endpoint's secret");
    let body = r.json();
    assert_eq!(body["event"], "data_record:created");
    assert_eq!(body["dataRecord"]["id"], 2);
    assert_eq!(
        body["eventRule"],
        json!({"id": rule["id"], "uuid": rule["uuid"], "name": "Notify CRM"})
    );
    assert_eq!(body["workspace"]["name"], "Acme Health");

    let (_, d) = api.get(&format!("/v1/deliveries/{delivery_id}")).await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["eventId"], hit["id"]);
    assert_eq!(d["endpointId"], ep["id"]);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["request"]["url"], receiver.url);
    assert_eq!(attempts[0]["request"]["headers"]["webhook-id"], delivery_id);
    assert_eq!(
        attempts[0]["request"]["body"].as_str().unwrap().as_bytes(),
        r.body.as_slice()
    );
    assert_eq!(attempts[0]["response"]["status"], 200);
    assert_eq!(attempts[0]["response"]["body"], "{\"ok\":true}");
    assert!(attempts[0]["error"].is_null());

    // The CLI verifies the same webhook (and refuses it with a tampered body).
    let verify_cli = |body: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "verify",
                "--secret",
                &secret,
                "--id",
                r.header("webhook-id"),
            ])
            .args([
                "--timestamp",
                r.header("webhook-timestamp"),
                "--signature",
                r.header("webhook-signature"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body).unwrap();
        child.wait().unwrap().success()
    };
    assert!(verify_cli(&r.body));
    assert!(!verify_cli(b"{\"tampered\":true}"));
    node.stop().await;
}

#[tokio::test]
async fn two_failures_then_success_is_three_attempts_with_one_webhook_id() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("retry"))).await;
    let api = node.workspace("Retry").await;
    let receiver = Receiver::start(|_, i| Reply::status(if i < 2 { 500 } else { 200 })).await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 5, "initialDelayMs": 600, "multiplier": 1.0}}))
        .await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let (_, hit) = api.post("/v1/events", record_event(1, "high")).await;
    let id = hit["deliveries"][0].as_str().unwrap().to_string();
    wait_until(
        Duration::from_secs(15),
        "the delivery to succeed",
        || async { api.delivery_status(&id).await.as_deref() == Some("succeeded") },
    )
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|r| r.header("webhook-id") == id));
    let secret = ep["secret"].as_str().unwrap();
    for r in &got {
        crate::support::verify_received(secret, r).expect("every attempt is signed");
    }
    // Each attempt is signed afresh at its own time: 1.2 s apart, the timestamps differ.
    assert_ne!(
        got[0].header("webhook-timestamp"),
        got[2].header("webhook-timestamp")
    );
    assert_ne!(
        got[0].header("webhook-signature"),
        got[2].header("webhook-signature")
    );
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(500));
    let (_, d) = api.get(&format!("/v1/deliveries/{id}")).await;
    let attempts = d["attempts"].as_array().unwrap();
    let statuses: Vec<_> = attempts
        .iter()
        .map(|a| a["response"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    assert!(attempts[0]["nextAttemptAt"].is_string());
    assert_eq!(attempts[0]["error"]["kind"], "status");
    node.stop().await;
}

#[tokio::test]
async fn always_failing_stops_after_max_attempts() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("fail"))).await;
    let api = node.workspace("Fail").await;
    let receiver = Receiver::start(|_, _| Reply::status(500)).await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 3, "initialDelayMs": 20, "multiplier": 2.0}}))
        .await;
    api.rule(json!({"name": "all", "events": ["data_record:*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let (_, hit) = api.post("/v1/events", record_event(1, "high")).await;
    let id = hit["deliveries"][0].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the delivery to fail", || async {
        api.delivery_status(&id).await.as_deref() == Some("failed")
    })
    .await;
    assert_eq!(receiver.count(), 3);
    let (_, d) = api.get(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3);
    assert!(d["attempts"][2]["nextAttemptAt"].is_null());
    let (_, failed) = api
        .get(&format!(
            "/v1/deliveries?status=failed&endpointId={}",
            ep["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    node.stop().await;
}

#[tokio::test]
async fn a_strict_endpoint_receives_first_successes_in_event_order() {
    let redis = Redis::start();
    order_scenario(test_config(&redis, &prefix("order"))).await;
}

#[tokio::test]
async fn a_strict_endpoint_receives_first_successes_in_event_order_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    order_scenario(embedded_config(dir.path())).await;
}

#[tokio::test]
async fn a_strict_endpoint_receives_first_successes_in_event_order_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    order_scenario(test_config_at(&cluster.url, &prefix("order"))).await;
    let counts = cluster.key_counts();
    assert!(
        counts.iter().all(|n| *n > 0),
        "every master holds keys: {counts:?}"
    );
}

async fn order_scenario(config: switchyard::config::Config) {
    const EVENTS: u64 = 200;
    let node = Node::start(config).await;
    let api = node.workspace("Order").await;
    // Fails at random (about half) the first time it sees each delivery.
    let receiver = crate::support::failing_first_attempts(0.5, Duration::ZERO).await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 10, "initialDelayMs": 5, "multiplier": 1.0}}))
        .await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let events: Vec<_> = (0..EVENTS).map(|n| record_event(n, "high")).collect();
    let ids = api.batch_deliveries(events).await;
    assert_eq!(ids.len(), EVENTS as usize);
    let last = ids.last().unwrap().clone();
    wait_until(
        Duration::from_secs(60),
        "the last delivery to succeed",
        || async { api.delivery_status(&last).await.as_deref() == Some("succeeded") },
    )
    .await;
    let got = receiver.received();
    assert!(
        got.len() > EVENTS as usize,
        "some first attempts failed ({} requests)",
        got.len()
    );
    let successes: Vec<String> = got
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    // Strict FIFO: every request (retries included) is for the head of the queue, so the
    // event index of successive requests never goes down.
    let index: std::collections::HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let order: Vec<usize> = got.iter().map(|r| index[r.header("webhook-id")]).collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "a later delivery was sent before an earlier one finished"
    );
    assert_eq!(successes, ids);
    node.stop().await;
}
