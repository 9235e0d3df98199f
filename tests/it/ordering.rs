//! Ordering keys: a strict endpoint with an `orderingKey` keeps order per key value, with up
//! to `maxInFlight` values in flight at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

const KEYS: u64 = 40;
const PER_KEY: u64 = 25;
const MAX_IN_FLIGHT: usize = 10;

/// `(member.id, seq)` of every request the receiver got, in arrival order.
fn arrivals(receiver: &Receiver) -> Vec<(u64, u64)> {
    receiver.with_received(|all| {
        all.iter()
            .map(|r| {
                let body = r.json();
                (
                    body["member"]["id"].as_u64().unwrap(),
                    body["member"]["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    })
}

#[tokio::test]
async fn a_strict_endpoint_with_an_ordering_key_keeps_order_per_key_and_sends_keys_at_once() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("okeys"))).await;
    let api = node.workspace("Keys").await;
    // 20 ms per answer; the first attempt of about one delivery in ten fails.
    let receiver = failing_first_attempts(0.1, Duration::from_millis(20)).await;
    let ep = api
        .endpoint(
            json!({"url": receiver.url, "ordering": "strict", "orderingKey": "member.id",
            "maxInFlight": MAX_IN_FLIGHT,
            "retry": {"maxAttempts": 10, "initialDelayMs": 30, "multiplier": 1.0}}),
        )
        .await;
    api.rule(json!({"name": "all", "events": ["member:updated"],
        "actions": [{"type": "webhook", "endpointId": ep["id"]}]}))
        .await;
    // Round-robin over the keys, so every key's deliveries are spread over the whole queue.
    let events: Vec<_> = (0..PER_KEY)
        .flat_map(|seq| {
            (0..KEYS)
                .map(move |k| json!({"event": "member:updated", "member": {"id": k, "seq": seq}}))
        })
        .collect();
    let started = Instant::now();
    let ids = api.batch_deliveries(events).await;
    assert_eq!(ids.len(), (KEYS * PER_KEY) as usize);
    // One sequence would need 1,000 × 20 ms = 20 s; keys in parallel take a fraction.
    wait_all_arrived(&receiver, &ids, Duration::from_secs(15)).await;
    let took = started.elapsed();

    // Per key, arrivals never step back: N+1 is sent only after N's final outcome, so even
    // N's retries come before it.
    let mut last: HashMap<u64, u64> = HashMap::new();
    for (key, seq) in arrivals(&receiver) {
        let prev = last.insert(key, seq);
        assert!(
            prev.is_none_or(|p| p <= seq),
            "key {key}: seq {seq} arrived after seq {prev:?}"
        );
    }
    assert_eq!(last.len(), KEYS as usize);
    assert!(last.values().all(|&s| s == PER_KEY - 1));
    let most = receiver.max_concurrent();
    assert!(
        most <= MAX_IN_FLIGHT,
        "at most maxInFlight requests at once: {most}"
    );
    assert!(
        most > 1,
        "distinct keys were in flight together (one sequence would be 1): {most}"
    );
    let retried = receiver.count() - ids.len();
    assert!(retried > 0, "some first attempts failed and were retried");

    // The key of each delivery is in the log.
    let (_, d) = api.get(&format!("/v1/deliveries/{}", ids[3])).await;
    assert_eq!(d["orderingKey"], "3", "{d}");
    eprintln!(
        "{} deliveries over {KEYS} keys in {took:?}, {retried} retries, at most {most} at once",
        ids.len()
    );
    node.stop().await;
}

#[tokio::test]
async fn strict_without_an_ordering_key_stays_one_request_at_a_time() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("okeys1"))).await;
    let api = node.workspace("One").await;
    let receiver = Receiver::start(|_, _| Reply {
        delay: Duration::from_millis(5),
        ..Reply::status(200)
    })
    .await;
    let (status, body) = api
        .post(
            "/v1/endpoints",
            json!({"url": receiver.url, "ordering": "strict", "maxInFlight": 4}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "maxInFlight", "{body}");
    let ep = api
        .endpoint(json!({"url": receiver.url, "ordering": "strict"}))
        .await;
    api.rule(json!({"name": "all", "events": ["member:updated"],
        "actions": [{"type": "webhook", "endpointId": ep["id"]}]}))
        .await;
    let events: Vec<_> = (0..40)
        .map(|seq| json!({"event": "member:updated", "member": {"id": seq % 4, "seq": seq}}))
        .collect();
    let ids = api.batch_deliveries(events).await;
    wait_all_arrived(&receiver, &ids, Duration::from_secs(20)).await;
    assert_eq!(receiver.max_concurrent(), 1);
    let seqs: Vec<u64> = arrivals(&receiver).into_iter().map(|(_, s)| s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    node.stop().await;
}
