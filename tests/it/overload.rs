//! `overload = "shed"`: past the backlog bound ingest answers 429 with `Retry-After` and writes
//! nothing; below it ingest is accepted again, and nothing accepted is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::config::{Config, Overload};

use crate::support::*;

/// This node's `switchyard_backlog_jobs` on `/metrics`.
async fn backlog(node: &Node, id: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", node.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("switchyard_backlog_jobs{{node=\"{id}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn events(from: u64, n: u64) -> Vec<Value> {
    (from..from + n)
        .map(|seq| json!({"event": "member:updated", "member": {"id": 1, "seq": seq}}))
        .collect()
}

fn batch(from: u64, n: u64) -> Value {
    json!({ "events": events(from, n) })
}

#[tokio::test]
async fn shed_refuses_ingest_over_the_backlog_bound_and_loses_nothing_accepted() {
    let redis = Redis::start();
    let id = prefix("shed-node");
    let node = Node::start(Config {
        node_id: id.clone(),
        overload: Overload::Shed,
        overload_backlog_jobs: 50,
        ..test_config(&redis, &prefix("shed"))
    })
    .await;
    let api = node.workspace("Shed").await;
    // Slow (one strict endpoint, 50 ms an answer) until `fast` is set.
    let fast = Arc::new(AtomicBool::new(false));
    let answer_fast = fast.clone();
    let receiver = Receiver::start(move |_, _| Reply {
        delay: if answer_fast.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        },
        ..Reply::status(200)
    })
    .await;
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    api.rule(json!({"name": "all", "events": ["member:updated"],
        "actions": [{"type": "webhook", "endpointId": ep["id"]}]}))
        .await;

    let mut accepted = api.batch_deliveries(events(0, 200)).await;
    wait_until(
        Duration::from_secs(10),
        "the backlog to be measured over the bound",
        || async { backlog(&node, &id).await > 50.0 },
    )
    .await;

    let refused = api
        .try_post("/v1/events/batch", &batch(1000, 10), &[])
        .await
        .expect("an answer");
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "overloaded", "{}", refused.1);
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/events/batch", node.base))
        .bearer_auth(api.token())
        .json(&batch(2000, 10))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 429);
    assert_eq!(
        raw.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    // The receiver speeds up; the backlog drains; ingest is accepted again.
    fast.store(true, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(30),
        "the backlog to drain under the bound",
        || async { backlog(&node, &id).await <= 50.0 },
    )
    .await;
    accepted.extend(api.batch_deliveries(events(3000, 20)).await);

    wait_all_arrived(&receiver, &accepted, Duration::from_secs(30)).await;
    let seqs: Vec<u64> = receiver.with_received(|all| {
        all.iter()
            .map(|r| r.json()["member"]["seq"].as_u64().unwrap())
            .collect()
    });
    assert!(
        seqs.iter().all(|s| *s < 1000 || *s >= 3000),
        "nothing of a refused request was written or sent"
    );
    node.stop().await;
}
