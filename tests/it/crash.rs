//! Nothing lost: real node processes killed with SIGKILL mid-load and restarted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::process::NodeProcess;
use crate::support::{ADMIN_TOKEN, Api, Receiver, Redis, Reply, prefix, wait_until};
use switchyard::load::receiver;

const BATCH: u64 = 100;

fn base_env() -> Vec<(String, String)> {
    vec![
        ("SWITCHYARD_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        (
            "SWITCHYARD_ALLOW_PRIVATE_CIDRS".into(),
            "127.0.0.1/32".into(),
        ),
        (
            "SWITCHYARD_EXTRA_ROOT_CERTS".into(),
            receiver::ca_pem_path().into(),
        ),
        ("SWITCHYARD_PARTITIONS".into(), "8".into()),
        ("SWITCHYARD_LEASE_MS".into(), "2000".into()),
        ("SWITCHYARD_HEARTBEAT_MS".into(), "250".into()),
    ]
}

fn event(k: u64, endpoints: u64) -> Value {
    json!({"event": "member:updated", "member": {"id": k % endpoints, "seq": k}})
}

/// Posts every event in batches with an `Idempotency-Key` each, retrying a batch until it is
/// acknowledged (the node may be down). Returns delivery id → (endpoint index, event seq).
async fn post_all(api: Api, events: u64, endpoints: u64) -> HashMap<String, (u64, u64)> {
    let mut acked = HashMap::new();
    for b in 0..events / BATCH {
        let batch: Vec<Value> = (b * BATCH..(b + 1) * BATCH)
            .map(|k| event(k, endpoints))
            .collect();
        let body = json!({"events": batch});
        let key = format!("batch-{b}");
        let answer = loop {
            match api
                .try_post("/v1/events/batch", &body, &[("Idempotency-Key", &key)])
                .await
            {
                Some((202, answer)) => break answer,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        for (i, r) in answer["results"].as_array().unwrap().iter().enumerate() {
            let k = b * BATCH + i as u64;
            for d in r["deliveries"].as_array().unwrap() {
                acked.insert(d.as_str().unwrap().to_string(), (k % endpoints, k));
            }
        }
    }
    acked
}

/// The load, `kills` SIGKILLs spread over it, then the checks: every acknowledged delivery
/// arrived, and per endpoint the arrivals never step back.
async fn crash_scenario(env: Vec<(String, String)>, events: u64, endpoints: u64, kills: u64) {
    let logs = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(|_, _| Reply {
        delay: Duration::from_millis(2),
        ..Reply::status(200)
    })
    .await;
    let mut node = NodeProcess::start(env, logs.path()).await;
    let admin = Api::new(&node.base, ADMIN_TOKEN);
    let (_, ws) = admin.post("/v1/workspaces", json!({"name": "Crash"})).await;
    let api = Api::new(&node.base, ws["apiKey"].as_str().unwrap());
    for i in 0..endpoints {
        let ep = api
            .endpoint(
                json!({"url": receiver.url, "headers": {"X-Endpoint": i.to_string()},
                "retry": {"maxAttempts": 20, "initialDelayMs": 100, "multiplier": 1.0}}),
            )
            .await;
        api.rule(
            json!({"name": format!("to {i}"), "events": ["member:updated"],
            "conditions": {"field": "member.id", "op": "eq", "value": i},
            "actions": [{"type": "webhook", "endpointId": ep["id"]}]}),
        )
        .await;
    }
    let poster = tokio::spawn(post_all(api.clone(), events, endpoints));
    for n in 1..=kills {
        let target = (events * n / (kills + 1)) as usize;
        wait_until(
            Duration::from_secs(120),
            "deliveries before the kill",
            || async { receiver.count() >= target },
        )
        .await;
        node.kill9();
        node.restart().await;
    }
    let acked = poster.await.unwrap();
    assert_eq!(acked.len() as u64, events, "every event matched one rule");
    crate::support::wait_all_arrived(&receiver, acked.keys(), Duration::from_secs(180)).await;
    let got = receiver.received();
    let mut first_seen = HashSet::new();
    let mut last_seq: HashMap<u64, u64> = HashMap::new();
    let mut duplicates = 0;
    // Every arrival, duplicates included, is at or after the one before it on its endpoint:
    // N+1 is sent only once N's outcome is durable, so a kill can repeat the head but never
    // send an earlier delivery after a later one. A receiver that does not deduplicate still
    // applies them in order.
    for r in &got {
        let id = r.header("webhook-id").to_string();
        let (ep, seq) = acked[&id];
        assert_eq!(r.header("x-endpoint"), ep.to_string());
        if let Some(prev) = last_seq.insert(ep, seq) {
            assert!(
                prev <= seq,
                "endpoint {ep}: event {seq} arrived after event {prev}"
            );
        }
        if !first_seen.insert(id) {
            duplicates += 1;
        }
    }
    println!(
        "crash run: {events} events, {endpoints} endpoints, {kills} SIGKILLs: {} requests, {duplicates} duplicates",
        got.len()
    );
    assert!(
        duplicates <= (kills * endpoints) as usize * 2,
        "{duplicates} duplicates: more than the in-flight attempts at the kills"
    );
    node.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twice_during_5000_events_to_50_endpoints_loses_nothing_on_redis() {
    let redis = Redis::start();
    let mut env = base_env();
    env.push(("SWITCHYARD_REDIS_URL".into(), redis.url.clone()));
    env.push(("SWITCHYARD_KEY_PREFIX".into(), prefix("crash")));
    crash_scenario(env, 5000, 50, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_load_loses_nothing_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env();
    env.push((
        "SWITCHYARD_DATA_DIR".into(),
        dir.path().display().to_string(),
    ));
    crash_scenario(env, 2000, 20, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_attempt_finish_and_loses_nothing() {
    let redis = Redis::start();
    let logs = tempfile::tempdir().unwrap();
    let mut env = base_env();
    env.push(("SWITCHYARD_REDIS_URL".into(), redis.url.clone()));
    env.push(("SWITCHYARD_KEY_PREFIX".into(), prefix("drain")));
    let receiver = Receiver::start(|_, _| Reply {
        delay: Duration::from_millis(1500),
        ..Reply::status(200)
    })
    .await;
    let mut node = NodeProcess::start(env, logs.path()).await;
    let admin = Api::new(&node.base, ADMIN_TOKEN);
    let (_, ws) = admin.post("/v1/workspaces", json!({"name": "Drain"})).await;
    let api = Api::new(&node.base, ws["apiKey"].as_str().unwrap());
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let events: Vec<Value> = (0..3).map(|k| event(k, 1)).collect();
    let (status, answer) = api
        .post("/v1/events/batch", json!({"events": events}))
        .await;
    assert_eq!(status, 202);
    let ids: Vec<String> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["deliveries"][0].as_str().unwrap().to_string())
        .collect();
    wait_until(
        Duration::from_secs(10),
        "the first attempt to be in flight",
        || async { receiver.count() == 1 },
    )
    .await;
    let stopped = node.terminate();
    assert!(stopped.success(), "a clean exit after SIGTERM: {stopped:?}");
    assert_eq!(receiver.count(), 1, "nothing new started while draining");
    node.restart().await;
    assert_eq!(
        api.delivery_status(&ids[0]).await.as_deref(),
        Some("succeeded"),
        "the in-flight attempt was recorded before exit"
    );
    wait_until(
        Duration::from_secs(20),
        "the rest after the restart",
        || async { api.delivery_status(&ids[2]).await.as_deref() == Some("succeeded") },
    )
    .await;
    let got: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(
        got, ids,
        "each delivered once, in order: the drained one was not sent again"
    );
}
