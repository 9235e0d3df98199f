//! Per-endpoint controls: concurrency, rate limits, backoff rules.

use std::time::Duration;

use serde_json::json;

use crate::support::{Node, Receiver, Redis, Reply, prefix, record_event, test_config, wait_until};

#[tokio::test]
async fn unordered_keeps_max_in_flight_requests_open_and_never_more() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("inflight"))).await;
    let api = node.workspace("Concurrency").await;
    let receiver = Receiver::start(|_, _| Reply {
        delay: Duration::from_millis(200),
        ..Reply::status(200)
    })
    .await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "ordering": "unordered", "maxInFlight": 8}))
        .await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let events: Vec<_> = (0..40).map(|n| record_event(n, "high")).collect();
    let (status, _) = api
        .post("/v1/events/batch", json!({"events": events}))
        .await;
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(20), "40 deliveries", || async {
        receiver.count() == 40
    })
    .await;
    assert_eq!(receiver.max_concurrent(), 8, "8 in flight at once, never 9");
    node.stop().await;
}

/// The most arrivals in any window of `window` length.
fn max_in_window(times: &[std::time::Instant], window: Duration) -> usize {
    let mut best = 0;
    for (i, start) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < window)
            .count();
        best = best.max(n);
    }
    best
}

async fn all_rule(api: &crate::support::Api, ep: &serde_json::Value) {
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
}

async fn send(api: &crate::support::Api, from: u64, n: u64) -> Vec<String> {
    let events: Vec<_> = (from..from + n).map(|i| record_event(i, "high")).collect();
    let (status, body) = api
        .post("/v1/events/batch", json!({"events": events}))
        .await;
    assert_eq!(status, 202, "{body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["deliveries"][0].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_rate_limit_of_20_per_second_holds_and_nothing_is_dropped() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("rate"))).await;
    let api = node.workspace("Rate").await;
    let receiver = Receiver::ok().await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "rateLimit": {"perSecond": 20, "burst": 1}}))
        .await;
    all_rule(&api, &ep).await;
    send(&api, 0, 200).await;
    wait_until(Duration::from_secs(30), "200 deliveries", || async {
        receiver.count() == 200
    })
    .await;
    let times: Vec<_> = receiver.received().iter().map(|r| r.at).collect();
    let peak = max_in_window(&times, Duration::from_secs(1));
    assert!(peak <= 21, "{peak} arrivals in one second");
    let span = times.last().unwrap().duration_since(times[0]);
    assert!(
        span >= Duration::from_millis(9_000),
        "200 at 20/s take about 10 s, took {span:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn patching_the_rate_limit_of_a_busy_endpoint_applies_within_a_second() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("patchrate"))).await;
    let api = node.workspace("PatchRate").await;
    let receiver = Receiver::ok().await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "rateLimit": {"perSecond": 5, "burst": 1}}))
        .await;
    all_rule(&api, &ep).await;
    send(&api, 0, 150).await;
    wait_until(
        Duration::from_secs(10),
        "deliveries at the slow rate",
        || async { receiver.count() >= 8 },
    )
    .await;
    let (status, _) = api
        .patch(
            &format!("/v1/endpoints/{}", ep["id"].as_str().unwrap()),
            json!({"rateLimit": {"perSecond": 50, "burst": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    let patched_at = std::time::Instant::now();
    wait_until(Duration::from_secs(10), "all deliveries", || async {
        receiver.count() == 150
    })
    .await;
    let got = receiver.received();
    let before = got.iter().filter(|r| r.at < patched_at).count();
    let in_second_after = got
        .iter()
        .filter(|r| {
            r.at >= patched_at + Duration::from_secs(1)
                && r.at < patched_at + Duration::from_secs(2)
        })
        .count();
    let slow_peak = max_in_window(
        &got.iter()
            .filter(|r| r.at < patched_at)
            .map(|r| r.at)
            .collect::<Vec<_>>(),
        Duration::from_secs(1),
    );
    assert!(slow_peak <= 6, "{slow_peak} per second before the PATCH");
    assert!(
        in_second_after >= 30,
        "only {in_second_after} in the second after the PATCH ({before} before)"
    );
    node.stop().await;
}

#[tokio::test]
async fn retry_after_delays_the_next_attempt_and_410_disables() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("retryafter"))).await;
    let api = node.workspace("RetryAfter").await;
    let receiver = Receiver::start(|_, i| match i {
        0 => Reply {
            headers: vec![("Retry-After".into(), "2".into())],
            ..Reply::status(429)
        },
        _ => Reply::status(200),
    })
    .await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"initialDelayMs": 10, "multiplier": 1.0}}))
        .await;
    all_rule(&api, &ep).await;
    let ids = send(&api, 0, 1).await;
    wait_until(
        Duration::from_secs(10),
        "success after Retry-After",
        || async { api.delivery_status(&ids[0]).await.as_deref() == Some("succeeded") },
    )
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert!(
        got[1].at.duration_since(got[0].at) >= Duration::from_secs(2),
        "Retry-After: 2 was not honoured"
    );

    let api = node.workspace("Gone").await;
    let gone = Receiver::start(|_, _| Reply::status(410)).await;
    let ep2 = api.endpoint(json!({"url": gone.url})).await;
    let ep2_id = ep2["id"].as_str().unwrap();
    api.rule(json!({"name": "gone", "events": ["member:*"], "actions": [{"type": "webhook", "endpointId": ep2_id}]})).await;
    let (_, ev) = api
        .post(
            "/v1/events",
            json!({"event": "member:created", "member": {"id": 1}}),
        )
        .await;
    let id = ev["deliveries"][0].as_str().unwrap().to_string();
    wait_until(
        Duration::from_secs(10),
        "the 410 delivery to fail",
        || async { api.delivery_status(&id).await.as_deref() == Some("failed") },
    )
    .await;
    assert_eq!(gone.count(), 1, "410 stops retrying");
    let (_, shown) = api.get(&format!("/v1/endpoints/{ep2_id}")).await;
    assert_eq!(shown["enabled"], false, "410 disables the endpoint");
    assert_eq!(shown["health"]["deliveries"]["failed"], 1);
    node.stop().await;
}

#[tokio::test]
async fn webhook_delivery_abort_ends_the_delivery() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("abort"))).await;
    let api = node.workspace("Abort").await;
    let receiver = Receiver::start(|_, _| Reply {
        headers: vec![("webhook-delivery".into(), "abort".into())],
        ..Reply::status(400)
    })
    .await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"initialDelayMs": 10}}))
        .await;
    all_rule(&api, &ep).await;
    let ids = send(&api, 0, 1).await;
    wait_until(
        Duration::from_secs(10),
        "the aborted delivery to fail",
        || async { api.delivery_status(&ids[0]).await.as_deref() == Some("failed") },
    )
    .await;
    assert_eq!(receiver.count(), 1);
    node.stop().await;
}

#[tokio::test]
async fn the_breaker_opens_after_5_failures_probes_once_and_drains_in_order() {
    let redis = Redis::start();
    let mut config = test_config(&redis, &prefix("breaker"));
    config.breaker_cooldown_ms = 1500;
    let node = Node::start(config).await;
    let api = node.workspace("Breaker").await;
    let receiver = Receiver::start(|_, i| Reply::status(if i < 5 { 500 } else { 200 })).await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 20, "initialDelayMs": 10, "multiplier": 1.0}}))
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_string();
    all_rule(&api, &ep).await;
    let ids = send(&api, 0, 3).await;
    wait_until(Duration::from_secs(5), "the breaker to open", || async {
        api.get(&format!("/v1/endpoints/{ep_id}")).await.1["health"]["breaker"]["state"] == "open"
    })
    .await;
    assert_eq!(
        receiver.count(),
        5,
        "nothing is sent while the breaker is open"
    );
    wait_until(Duration::from_secs(10), "the queue to drain", || async {
        api.delivery_status(&ids[2]).await.as_deref() == Some("succeeded")
    })
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 8, "5 failures, one probe, then the other two");
    let gap = got[5].at.duration_since(got[4].at);
    assert!(
        gap >= Duration::from_millis(1500),
        "the probe came {gap:?} after the 5th failure"
    );
    let order: Vec<&str> = got[5..].iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(
        order,
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "the probe is the head, then in order"
    );
    let (_, shown) = api.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(shown["health"]["breaker"]["state"], "closed");
    assert_eq!(shown["health"]["deliveries"]["succeeded"], 3);
    assert_eq!(shown["health"]["deliveries"]["pending"], 0);
    node.stop().await;
}

#[tokio::test]
async fn an_idle_actor_stops_and_its_successor_restores_the_breaker_from_the_store() {
    let redis = Redis::start();
    let config = switchyard::config::Config {
        actor_idle_secs: 1,
        breaker_threshold: 2,
        breaker_cooldown_ms: 3_000,
        ..test_config(&redis, &prefix("idle"))
    };
    let node = Node::start(config).await;
    let api = node.workspace("Idle").await;
    let receiver = Receiver::start(|_, i| Reply::status(if i < 2 { 500 } else { 200 })).await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 1}}))
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_string();
    all_rule(&api, &ep).await;
    let failed = send(&api, 0, 2).await;
    wait_until(Duration::from_secs(10), "two failures", || async {
        api.delivery_status(&failed[1]).await.as_deref() == Some("failed")
    })
    .await;
    let (_, shown) = api.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(shown["health"]["breaker"]["state"], "open");
    let open_until = chrono::DateTime::parse_from_rfc3339(
        shown["health"]["breaker"]["openUntil"].as_str().unwrap(),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the idle actor to stop",
        || async { node.api("").get("/readyz").await.1["endpointActors"] == 0 },
    )
    .await;
    // A new actor is spawned for the next delivery; it must not send before the stored cool-down ends.
    let next = send(&api, 2, 1).await;
    wait_until(
        Duration::from_secs(10),
        "the probe after the cool-down",
        || async { api.delivery_status(&next[0]).await.as_deref() == Some("succeeded") },
    )
    .await;
    let (_, d) = api.get(&format!("/v1/deliveries/{}", next[0])).await;
    let sent =
        chrono::DateTime::parse_from_rfc3339(d["attempts"][0]["startedAt"].as_str().unwrap())
            .unwrap();
    assert!(
        sent >= open_until,
        "the re-spawned actor sent at {sent} before the breaker's cool-down ended at {open_until}"
    );
    assert_eq!(receiver.count(), 3);
    node.stop().await;
}

#[tokio::test]
async fn an_idle_rate_limited_actor_stays_until_its_bucket_has_refilled() {
    // A successor starts with a full bucket, so stopping before `burst / perSecond` seconds of
    // silence would let a burst through that the limit refuses. Here: 3 / 1 = 3 s, idle 1 s.
    let redis = Redis::start();
    let config = switchyard::config::Config {
        actor_idle_secs: 1,
        ..test_config(&redis, &prefix("idle-limit"))
    };
    let node = Node::start(config).await;
    let api = node.workspace("IdleLimit").await;
    let receiver = Receiver::ok().await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "rateLimit": {"perSecond": 1, "burst": 3}}))
        .await;
    all_rule(&api, &ep).await;
    let sent = send(&api, 0, 3).await;
    wait_until(Duration::from_secs(10), "the burst", || async {
        receiver.count() == 3
    })
    .await;
    let burst_done = std::time::Instant::now();
    assert_eq!(sent.len(), 3);
    wait_until(
        Duration::from_secs(10),
        "the idle actor to stop",
        || async { node.api("").get("/readyz").await.1["endpointActors"] == 0 },
    )
    .await;
    let lived = burst_done.elapsed();
    assert!(
        lived >= Duration::from_millis(2_500),
        "the actor stopped {lived:?} after its burst, before its bucket refilled (3 s)"
    );
    node.stop().await;
}

#[tokio::test]
async fn max_concurrent_attempts_bounds_attempts_in_flight_across_endpoints() {
    // Two endpoints, each with its own actor, and a receiver that holds every request 200 ms.
    // With one attempt allowed in flight per node, no request may start before the previous
    // one has been answered, whichever endpoint it is for.
    let redis = Redis::start();
    let config = switchyard::config::Config {
        max_concurrent_attempts: 1,
        ..test_config(&redis, &prefix("cap"))
    };
    let node = Node::start(config).await;
    let api = node.workspace("Cap").await;
    let hold = Duration::from_millis(200);
    let receiver = Receiver::start(move |_, _| Reply {
        delay: hold,
        ..Reply::status(200)
    })
    .await;
    for _ in 0..2 {
        let ep = api.endpoint(json!({"url": receiver.url})).await;
        all_rule(&api, &ep).await;
    }
    send(&api, 0, 2).await;
    wait_until(Duration::from_secs(10), "four deliveries", || async {
        receiver.count() == 4
    })
    .await;
    let mut arrivals: Vec<std::time::Instant> =
        receiver.with_received(|r| r.iter().map(|x| x.at).collect());
    arrivals.sort();
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= hold - Duration::from_millis(10)),
        "attempts overlapped: gaps between arrivals {gaps:?}"
    );
    node.stop().await;
}
