//! Redis going away and coming back: clear 503s meanwhile, recovery on its own, nothing lost.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Node, Receiver, Redis, prefix, record_event, test_config, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_answers_503_meanwhile_and_loses_nothing() {
    let mut redis = Redis::start_aof();
    let key_prefix = prefix("outage");
    let node = Node::start(test_config(&redis, &key_prefix)).await;
    let api = node.workspace("Outage").await;
    let receiver = Receiver::ok().await;
    let ep = api.endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 50, "initialDelayMs": 100, "multiplier": 1.0}})).await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let mut acked: Vec<String> = Vec::new();
    let post = |from: u64| {
        let api = api.clone();
        async move {
            let events: Vec<_> = (from..from + 50).map(|n| record_event(n, "high")).collect();
            let (status, b) = api
                .post("/v1/events/batch", json!({"events": events}))
                .await;
            assert_eq!(status, 202, "{b}");
            b["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["deliveries"][0].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    acked.extend(post(0).await);

    redis.stop();
    let asked = Instant::now();
    let down = api
        .try_post("/v1/events", &record_event(999, "high"), &[])
        .await;
    let took = asked.elapsed();
    let (status, body) = down.expect("the API still answers");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        took < Duration::from_secs(10),
        "answered in {took:?}, not a hang"
    );
    assert_eq!(api.try_get("/readyz").await, Some(503));

    redis.restart();
    wait_until(
        Duration::from_secs(20),
        "the node to be ready again",
        || async { api.try_get("/readyz").await == Some(200) },
    )
    .await;
    acked.extend(post(50).await);
    acked.extend(post(100).await);

    crate::support::wait_all_arrived(&receiver, acked.iter(), Duration::from_secs(60)).await;
    node.stop().await;
}
