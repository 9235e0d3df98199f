//! Routines: time-based webhooks, exactly once per tick across a cluster.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;

use crate::support::process::NodeProcess;
use crate::support::{ADMIN_TOKEN, Api, Node, Receiver, Redis, prefix, test_config, wait_until};

fn node_env(redis: &Redis, key_prefix: &str, id: &str) -> Vec<(String, String)> {
    crate::support::process::cluster_env(&redis.url, key_prefix, id, 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_every_second_on_three_nodes_fires_each_tick_once_through_a_sigkill() {
    let redis = Redis::start();
    let key_prefix = prefix("routine");
    let logs = tempfile::tempdir().unwrap();
    let receiver = Receiver::ok().await;
    let mut nodes = Vec::new();
    for id in ["r-1", "r-2", "r-3"] {
        nodes.push(NodeProcess::start(node_env(&redis, &key_prefix, id), logs.path()).await);
    }
    let admin = Api::new(&nodes[0].base, ADMIN_TOKEN);
    let (_, ws) = admin
        .post("/v1/workspaces", json!({"name": "Routines"}))
        .await;
    let api = Api::new(&nodes[1].base, ws["apiKey"].as_str().unwrap());
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    let rule = api
        .rule(json!({"name": "every second", "schedule": {"cron": "* * * * * *", "timezone": "UTC"},
            "payload": {"report": "heartbeat"}, "actions": [{"type": "webhook", "endpointId": ep["id"]}]}))
        .await;
    let (_, shown) = api.get(&format!("/v1/event-rules/{}", rule["id"])).await;
    assert_eq!(shown["nextFireTimes"].as_array().unwrap().len(), 3);

    wait_until(Duration::from_secs(30), "ten ticks", || async {
        receiver.count() >= 10
    })
    .await;
    nodes[0].kill9(); // whichever node was firing, ticks must go on without a gap or a double
    wait_until(Duration::from_secs(30), "twenty ticks", || async {
        receiver.count() >= 22
    })
    .await;

    let got = receiver.received();
    let mut ticks: HashMap<String, String> = HashMap::new(); // webhook-id -> scheduledAt
    for r in &got {
        let body = r.json();
        assert_eq!(body["event"], "routine:tick");
        assert_eq!(body["payload"]["report"], "heartbeat");
        assert_eq!(body["eventRule"]["uuid"], rule["uuid"]);
        ticks.insert(
            r.header("webhook-id").to_string(),
            body["routine"]["scheduledAt"].as_str().unwrap().to_string(),
        );
    }
    let at: BTreeSet<i64> = ticks
        .values()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp())
        .collect();
    assert_eq!(
        at.len(),
        ticks.len(),
        "one delivery per tick: no tick fired twice"
    );
    let (first, last) = (*at.first().unwrap(), *at.last().unwrap());
    let missing: Vec<i64> = (first..=last).filter(|s| !at.contains(s)).collect();
    assert!(missing.is_empty(), "ticks without a delivery: {missing:?}");
    println!(
        "routine: {} ticks from {first} to {last}, {} requests",
        at.len(),
        got.len()
    );
}

#[tokio::test]
async fn invalid_schedules_are_refused_with_422_naming_the_field() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("badcron"))).await;
    let api = node.workspace("Bad cron").await;
    let receiver = Receiver::ok().await;
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    for (schedule, field) in [
        (json!({"cron": "61 * * * *"}), "schedule.cron"),
        (json!({"cron": "every day"}), "schedule.cron"),
        (
            json!({"cron": "0 9 * * *", "timezone": "Europe/Atlantis"}),
            "schedule.timezone",
        ),
        (
            json!({"cron": "0 9 * * *", "catchUp": "all"}),
            "schedule.catchUp",
        ),
    ] {
        let (status, body) = api
            .post("/v1/event-rules", json!({"name": "r", "schedule": schedule, "actions": [{"type": "webhook", "endpointId": ep["id"]}]}))
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (_, rules) = api.get("/v1/event-rules").await;
    assert_eq!(rules["data"], json!([]));
    node.stop().await;
}
