//! Operator actions on endpoints and deliveries: secret rotation, manual retry, replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::{Node, Receiver, Redis, Reply, prefix, record_event, test_config, wait_until};

#[tokio::test]
async fn during_a_rotation_both_secrets_sign_and_after_it_only_the_new_one() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("rotate"))).await;
    let api = node.workspace("Rotate").await;
    let receiver = Receiver::ok().await;
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    let ep_id = ep["id"].as_str().unwrap();
    let old = ep["secret"].as_str().unwrap().to_string();
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep_id}]})).await;

    let (status, rotated) = api
        .post(
            &format!("/v1/endpoints/{ep_id}/secret/rotate"),
            json!({"graceSeconds": 2}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let (_, shown) = api.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert!(
        !shown.to_string().contains(&old) && !shown.to_string().contains(&new),
        "a read of the endpoint carries no secret: {shown}"
    );
    let (_, listed) = api.get("/v1/endpoints").await;
    assert!(
        listed["data"][0].get("secret").is_none() && !listed.to_string().contains("whsec_"),
        "a list carries no secret: {listed}"
    );
    let (status, secrets) = api.get(&format!("/v1/endpoints/{ep_id}/secret")).await;
    assert_eq!(status, 200, "{secrets}");
    assert_eq!(secrets["secret"], new.as_str());
    assert_eq!(secrets["previousSecrets"][0]["secret"], old.as_str());
    assert!(secrets["previousSecrets"][0]["validUntil"].is_string());

    api.post("/v1/events", record_event(1, "high")).await;
    wait_until(Duration::from_secs(10), "the first delivery", || async {
        receiver.count() == 1
    })
    .await;
    let during = &receiver.received()[0];
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    assert!(
        crate::support::verify_received(&new, during).is_ok()
            && crate::support::verify_received(&old, during).is_ok(),
        "both secrets sign during the grace period"
    );

    let grace_end =
        chrono::DateTime::parse_from_rfc3339(rotated["previousSecretValidUntil"].as_str().unwrap())
            .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the grace period to end",
        || async { chrono::Utc::now() > grace_end },
    )
    .await;
    api.post("/v1/events", record_event(2, "high")).await;
    wait_until(Duration::from_secs(10), "the second delivery", || async {
        receiver.count() == 2
    })
    .await;
    let after = &receiver.received()[1];
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    assert!(
        crate::support::verify_received(&new, after).is_ok()
            && crate::support::verify_received(&old, after).is_err(),
        "only the new secret signs after the grace"
    );
    node.stop().await;
}

#[tokio::test]
async fn replay_resends_exactly_the_failed_deliveries_of_the_window_once_in_order() {
    let redis = Redis::start();
    replay_scenario(test_config(&redis, &prefix("replay"))).await;
}

#[tokio::test]
async fn replay_resends_exactly_the_failed_deliveries_of_the_window_once_in_order_on_a_redis_cluster()
 {
    let cluster = crate::support::RedisCluster::start();
    replay_scenario(crate::support::test_config_at(
        &cluster.url,
        &prefix("replay"),
    ))
    .await;
}

async fn replay_scenario(config: switchyard::config::Config) {
    // Six failures in a row would open the breaker (threshold 5) and hold the late ones back.
    let config = switchyard::config::Config {
        breaker_threshold: 100,
        ..config
    };
    let node = Node::start(config).await;
    let api = node.workspace("Replay").await;
    let up = Arc::new(AtomicBool::new(false));
    let receiver = crate::support::receivers::failing_until(up.clone()).await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 1}}))
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_string();
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep_id}]})).await;
    let send = |from: u64| {
        let api = api.clone();
        async move {
            let events: Vec<_> = (from..from + 3).map(|i| record_event(i, "high")).collect();
            let (_, b) = api
                .post("/v1/events/batch", json!({"events": events}))
                .await;
            b["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["deliveries"][0].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let all_failed = |ids: Vec<String>| {
        let api = api.clone();
        async move {
            for id in &ids {
                if api.delivery_status(id).await.as_deref() != Some("failed") {
                    return false;
                }
            }
            true
        }
    };
    let early = send(0).await;
    wait_until(
        Duration::from_secs(10),
        "the early deliveries to fail",
        || all_failed(early.clone()),
    )
    .await;
    // The window starts after the early failures (the dead letter is stamped at failure time).
    wait_until(Duration::from_secs(2), "the clock to move on", || async {
        receiver.received().last().unwrap().at.elapsed() > Duration::from_millis(5)
    })
    .await;
    let since = chrono::Utc::now().to_rfc3339();
    let late = send(3).await;
    wait_until(
        Duration::from_secs(10),
        "the late deliveries to fail",
        || all_failed(late.clone()),
    )
    .await;
    assert_eq!(receiver.count(), 6);

    up.store(true, Ordering::SeqCst);
    let (status, body) = api
        .post(
            &format!("/v1/endpoints/{ep_id}/replay"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(
        (status, body["replayed"].as_u64()),
        (202, Some(3)),
        "{body}"
    );
    let (_, again) = api
        .post(
            &format!("/v1/endpoints/{ep_id}/replay"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(
        again["replayed"], 0,
        "a second replay of the window sends nothing more"
    );
    wait_until(
        Duration::from_secs(10),
        "the replayed deliveries",
        || async { receiver.count() == 9 },
    )
    .await;
    let replayed: Vec<String> = receiver.received()[6..]
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(
        replayed, late,
        "exactly the window's failures, once each, in order"
    );
    for id in &late {
        assert_eq!(api.delivery_status(id).await.as_deref(), Some("succeeded"));
    }

    // Manual retry of one early failure: one more attempt, numbered after the first.
    let (status, _) = api
        .post(&format!("/v1/deliveries/{}/retry", early[1]), json!({}))
        .await;
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(10), "the retried delivery", || async {
        api.delivery_status(&early[1]).await.as_deref() == Some("succeeded")
    })
    .await;
    let (_, d) = api.get(&format!("/v1/deliveries/{}", early[1])).await;
    let numbers: Vec<u64> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2]);
    assert_eq!(receiver.count(), 10);
    assert_eq!(
        api.delivery_status(&early[0]).await.as_deref(),
        Some("failed"),
        "outside the window, not replayed"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_disabled_or_failing_endpoint_emits_an_event_that_a_rule_can_forward() {
    let redis = Redis::start();
    let config = switchyard::config::Config {
        breaker_threshold: 2,
        ..test_config(&redis, &prefix("opsevents"))
    };
    let node = Node::start(config).await;
    let api = node.workspace("Ops").await;
    let slack = Receiver::ok().await;
    let gone = Receiver::start(|_, _| Reply::status(410)).await;
    let down = Receiver::start(|_, _| Reply::status(500)).await;
    let alerts = api.endpoint(json!({"url": slack.url})).await;
    let ep_gone = api.endpoint(json!({"url": gone.url})).await;
    let ep_down = api
        .endpoint(json!({"url": down.url, "retry": {"maxAttempts": 5, "initialDelayMs": 10}}))
        .await;
    api.rule(json!({"name": "alerts", "events": ["switchyard:*"], "actions": [{"type": "webhook", "endpointId": alerts["id"]}]})).await;
    api.rule(json!({"name": "to gone", "events": ["member:*"], "actions": [{"type": "webhook", "endpointId": ep_gone["id"]}]})).await;
    api.rule(json!({"name": "to down", "events": ["data_record:*"], "actions": [{"type": "webhook", "endpointId": ep_down["id"]}]})).await;
    api.post(
        "/v1/events",
        json!({"event": "member:created", "member": {"id": 1}}),
    )
    .await;
    api.post("/v1/events", record_event(1, "high")).await;
    wait_until(
        Duration::from_secs(10),
        "both operational events",
        || async { slack.count() >= 2 },
    )
    .await;
    let got: Vec<serde_json::Value> = slack.received().iter().map(|r| r.json()).collect();
    let disabled = got
        .iter()
        .find(|b| b["event"] == "switchyard:endpoint_disabled")
        .expect("endpoint_disabled");
    assert_eq!(disabled["endpoint"]["id"], ep_gone["id"]);
    assert!(disabled["reason"].as_str().unwrap().contains("410"));
    let failing = got
        .iter()
        .find(|b| b["event"] == "switchyard:endpoint_failing")
        .expect("endpoint_failing");
    assert_eq!(failing["endpoint"]["id"], ep_down["id"]);
    assert_eq!(failing["breaker"]["state"], "open");
    // One shape for the breaker, in the event and in the endpoint's health.
    let (_, shown) = api
        .get(&format!(
            "/v1/endpoints/{}",
            ep_down["id"].as_str().unwrap()
        ))
        .await;
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&failing["breaker"]), keys(&shown["health"]["breaker"]));
    for field in ["since", "openUntil"] {
        let t = failing["breaker"][field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {failing}"));
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "{field} = {t}"
        );
    }
    assert!(failing["lastError"].is_string() && failing.get("sinceMs").is_none());
    assert_eq!(failing["eventRule"]["name"], "alerts");
    // Clients cannot send these events themselves.
    let (status, _) = api
        .post(
            "/v1/events",
            json!({"event": "switchyard:endpoint_disabled"}),
        )
        .await;
    assert_eq!(status, 422);
    node.stop().await;
}
