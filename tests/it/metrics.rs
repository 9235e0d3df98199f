//! `/metrics`: the counters match what happened.

use std::time::Duration;

use serde_json::json;

use crate::support::{Node, Receiver, Redis, Reply, prefix, record_event, test_config, wait_until};

/// The value of the series `name{...}` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let redis = Redis::start();
    let node_id = prefix("metrics-node");
    let node = Node::start(switchyard::config::Config {
        node_id: node_id.clone(),
        ..test_config(&redis, &prefix("metrics"))
    })
    .await;
    let api = node.workspace("Metrics").await;
    let ok = Receiver::ok().await;
    let failing = Receiver::start(|_, _| Reply::status(503)).await;
    let good = api.endpoint(json!({"url": ok.url})).await;
    let bad = api
        .endpoint(json!({"url": failing.url, "retry": {"maxAttempts": 2, "initialDelayMs": 10}}))
        .await;
    api.rule(json!({"name": "ok", "events": ["data_record:created"], "actions": [{"type": "webhook", "endpointId": good["id"]}]})).await;
    api.rule(json!({"name": "bad", "events": ["member:created"], "actions": [{"type": "webhook", "endpointId": bad["id"]}]})).await;
    let (s, _) = api
        .post("/v1/endpoints", json!({"url": "https://10.0.0.1/"}))
        .await;
    assert_eq!(s, 422);
    let events: Vec<_> = (0..3).map(|n| record_event(n, "high")).collect();
    api.post("/v1/events/batch", json!({"events": events}))
        .await;
    let (_, m) = api
        .post(
            "/v1/events",
            json!({"event": "member:created", "member": {"id": 1}}),
        )
        .await;
    let failed_id = m["deliveries"][0].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), "all outcomes", || async {
        ok.count() == 3 && api.delivery_status(&failed_id).await.as_deref() == Some("failed")
    })
    .await;
    let text = reqwest::get(format!("{}/metrics", node.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let n = node_id.as_str();
    assert_eq!(
        sample(&text, "switchyard_events_accepted_total", &[("node", n)]),
        4.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_attempts_total",
            &[("node", n), ("outcome", "succeeded"), ("class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_attempts_total",
            &[("node", n), ("outcome", "retrying"), ("class", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_attempts_total",
            &[("node", n), ("outcome", "failed"), ("class", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_deliveries_total",
            &[("node", n), ("outcome", "succeeded")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_deliveries_total",
            &[("node", n), ("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_delivery_latency_seconds_count",
            &[("node", n)]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_ssrf_refusals_total",
            &[("node", n), ("at", "save")]
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "switchyard_endpoint_actors", &[("node", n)]),
        2.0
    );
    assert!(
        sample(
            &text,
            "switchyard_store_roundtrip_seconds_count",
            &[("node", n)]
        ) >= 1.0
    );
    let url = format!("{}/metrics", node.base);
    wait_until(
        Duration::from_secs(5),
        "partition gauges of the owned partitions",
        || async {
            reqwest::get(&url)
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains(&format!("switchyard_partition_lag{{node=\"{n}\""))
        },
    )
    .await;
    node.stop().await;
}
