//! The edge as an operator meets it: a reused idempotency key, deleting an endpoint rules
//! use, a manual retry under an open breaker, the metrics from the start, the logs.

use super::*;

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(embedded_config(dir.path())).await;
    let api = node.workspace("Idem").await;
    let key = [("Idempotency-Key", "order-42")];
    let first = record_event(1, "high").to_string();
    let (s1, a1) = api.post_raw("/v1/events", &first, &key).await;
    assert_eq!(s1, 202, "{a1}");
    let (s2, a2) = api.post_raw("/v1/events", &first, &key).await;
    assert_eq!((s2, &a2), (202, &a1), "the same body: the first answer");
    let other = record_event(2, "high").to_string();
    let (s, b) = api.post_raw("/v1/events", &other, &key).await;
    assert_error(
        s,
        &b,
        409,
        "idempotency_key_reused",
        Some("Idempotency-Key"),
    );
    let batch = json!({"events": [record_event(3, "low")]}).to_string();
    let (s, b) = api.post_raw("/v1/events/batch", &batch, &key).await;
    assert_error(s, &b, 409, "idempotency_key_reused", None);
    node.stop().await;
}

#[tokio::test]
async fn an_endpoint_a_rule_uses_is_deleted_only_with_force_which_mends_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(embedded_config(dir.path())).await;
    let api = node.workspace("Delete").await;
    let receiver = Receiver::ok().await;
    let a = api.endpoint(json!({"url": receiver.url})).await;
    let b = api.endpoint(json!({"url": receiver.url})).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let both = api
        .rule(json!({"name": "both", "events": ["*"], "actions": [
        {"type": "webhook", "endpointId": a_id}, {"type": "webhook", "endpointId": b_id}]}))
        .await;
    let only_a = api
        .rule(
            json!({"name": "only a", "events": ["member:*"], "actions": [
        {"type": "webhook", "endpointId": a_id}]}),
        )
        .await;

    let (s, body) = api.delete(&format!("/v1/endpoints/{a_id}")).await;
    assert_error(s, &body, 409, "endpoint_in_use", None);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("both") && message.contains("only a"),
        "{message}"
    );
    let (s, _) = api.get(&format!("/v1/endpoints/{a_id}")).await;
    assert_eq!(s, 200, "still there");

    let (s, _) = api
        .delete(&format!("/v1/endpoints/{a_id}?force=true"))
        .await;
    assert_eq!(s, 204);
    let (_, r1) = api.get(&format!("/v1/event-rules/{}", both["id"])).await;
    assert_eq!(
        r1["actions"],
        json!([{"type": "webhook", "endpointId": b_id}])
    );
    assert_eq!(r1["enabled"], true);
    let (_, r2) = api.get(&format!("/v1/event-rules/{}", only_a["id"])).await;
    assert_eq!(r2["actions"], json!([]));
    assert_eq!(
        r2["enabled"], false,
        "a rule left without actions is disabled"
    );
    // The mended rules can still be changed; enabling one without an action is refused.
    let (s, _) = api
        .patch(
            &format!("/v1/event-rules/{}", both["id"]),
            json!({"name": "b only"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, body) = api
        .patch(
            &format!("/v1/event-rules/{}", only_a["id"]),
            json!({"enabled": true}),
        )
        .await;
    assert_error(s, &body, 422, "invalid_field", Some("actions"));
    node.stop().await;
}

/// A manual retry goes out at once while the breaker is open (it is the breaker's probe), and
/// its success closes the breaker.
#[tokio::test]
async fn a_manual_retry_is_sent_at_once_whatever_the_breaker_says() {
    let redis = Redis::start();
    let node = Node::start(switchyard::config::Config {
        breaker_threshold: 1,
        breaker_cooldown_ms: 60_000,
        breaker_max_cooldown_ms: 120_000,
        ..test_config(&redis, &prefix("manual"))
    })
    .await;
    let api = node.workspace("Manual").await;
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver = crate::support::receivers::failing_until(healthy.clone()).await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 1}}))
        .await;
    let ep_id = ep["id"].as_str().unwrap();
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep_id}]})).await;
    let (_, accepted) = api.post("/v1/events", record_event(1, "high")).await;
    let id = accepted["deliveries"][0].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the delivery to fail", || async {
        api.delivery_status(&id).await.as_deref() == Some("failed")
    })
    .await;
    let (_, shown) = api.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(shown["health"]["breaker"]["state"], "open", "{shown}");

    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let (s, _) = api
        .post(&format!("/v1/deliveries/{id}/retry"), json!({}))
        .await;
    assert_eq!(s, 202);
    let asked = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the manual retry to arrive",
        || async { receiver.count() == 2 },
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "sent at once, not after the 60 s cool-down"
    );
    wait_until(Duration::from_secs(5), "the breaker to close", || async {
        let (_, shown) = api.get(&format!("/v1/endpoints/{ep_id}")).await;
        shown["health"]["breaker"]["state"] == "closed"
    })
    .await;
    assert_eq!(api.delivery_status(&id).await.as_deref(), Some("succeeded"));
    node.stop().await;
}

/// Every documented metric is there from the start, on the embedded store too.
#[tokio::test]
async fn every_documented_metric_is_registered_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let node_id = prefix("fresh-node");
    let node = Node::start(switchyard::config::Config {
        node_id: node_id.clone(),
        ..embedded_config(dir.path())
    })
    .await;
    let url = format!("{}/metrics", node.base);
    let documented = [
        "switchyard_events_accepted_total",
        "switchyard_attempts_total",
        "switchyard_deliveries_total",
        "switchyard_attempt_duration_seconds_count",
        "switchyard_delivery_latency_seconds_count",
        "switchyard_partition_lag",
        "switchyard_partition_pending",
        "switchyard_endpoint_actors",
        "switchyard_breakers_open",
        "switchyard_rate_limit_waits_total",
        "switchyard_store_roundtrip_seconds_count",
        "switchyard_ssrf_refusals_total",
    ];
    wait_until(
        Duration::from_secs(5),
        "every documented series",
        || async {
            let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
            documented.iter().all(|name| {
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(&node_id))
            })
        },
    )
    .await;
    node.stop().await;
}

/// At the default log level a node says when attempts fail (naming the endpoint, TLS errors
/// included) and when a breaker opens; and it writes no colour codes into a file.
#[tokio::test]
async fn failed_attempts_tls_errors_and_breakers_are_logged_without_colour() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::support::process::cluster_env(&redis.url, &prefix("logs"), "log-node", 4);
    env.push(("SWITCHYARD_BREAKER_THRESHOLD".into(), "2".into()));
    let node = NodeProcess::start(env, dir.path()).await;
    let admin = Api::new(&node.base, ADMIN_TOKEN);
    let (_, ws) = admin.post("/v1/workspaces", json!({"name": "Logs"})).await;
    let api = Api::new(&node.base, ws["apiKey"].as_str().unwrap());
    let failing = Receiver::start(|_, _| Reply::status(500)).await;
    let untrusted = Receiver::untrusted().await;
    let down = api
        .endpoint(json!({"url": failing.url, "retry": {"maxAttempts": 3, "initialDelayMs": 10}}))
        .await;
    let tls = api
        .endpoint(json!({"url": untrusted.url, "retry": {"maxAttempts": 1}}))
        .await;
    for (name, ep) in [("down", &down), ("tls", &tls)] {
        api.rule(json!({"name": name, "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    }
    api.post("/v1/events", record_event(1, "high")).await;
    let (down_id, tls_id) = (down["id"].as_str().unwrap(), tls["id"].as_str().unwrap());
    let lines = |log: &str| {
        let warn = |what: &[&str]| {
            log.lines()
                .any(|l| l.contains("WARN") && what.iter().all(|w| l.contains(w)))
        };
        warn(&["attempt failed", down_id])
            && warn(&[tls_id, "kind=\"tls\""])
            && warn(&["circuit breaker opened", down_id])
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lines(&node.log()) {
        assert!(
            Instant::now() < deadline,
            "log lines missing:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !node.log().contains('\u{1b}'),
        "no ANSI colour codes in a file"
    );
}
