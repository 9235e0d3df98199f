//! A cluster of real node processes on one Redis: failover, joins, rebalancing, order and rate
//! limits across owners, and rule changes seen by every node.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::process::NodeProcess;
use crate::support::{
    ADMIN_TOKEN, Api, Node, Receiver, Redis, RedisCluster, Reply, prefix, record_event,
    test_config_at, wait_until,
};

const PARTITIONS: u32 = 16;
const LEASE_MS: u64 = 2_000;
/// Values of `member.key`, the ordering key of the endpoints ordered per key.
const KEYS: u64 = 3;

fn node_env(redis_url: &str, key_prefix: &str, id: &str) -> Vec<(String, String)> {
    crate::support::process::cluster_env(redis_url, key_prefix, id, PARTITIONS)
}

/// Partition owners as `GET /v1/cluster` reports them.
async fn owners(admin: &Api) -> Vec<Option<String>> {
    let (_, c) = admin.get("/v1/cluster").await;
    c["partitions"].as_array().map_or(vec![], |ps| {
        ps.iter()
            .map(|p| p["owner"].as_str().map(String::from))
            .collect()
    })
}

fn counts(owners: &[Option<String>]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for o in owners.iter().flatten() {
        *c.entry(o.clone()).or_default() += 1;
    }
    c
}

async fn post_all(apis: Vec<Api>, events: u64, endpoints: u64) -> HashMap<String, (u64, u64)> {
    let mut acked = HashMap::new();
    for b in 0..events / 100 {
        let batch: Vec<Value> = (b * 100..(b + 1) * 100)
            .map(|k| json!({"event": "member:updated", "member": {"id": k % endpoints, "seq": k, "key": k % KEYS}}))
            .collect();
        let body = json!({"events": batch});
        let key = format!("batch-{b}");
        let mut i = b as usize;
        let answer = loop {
            // Alternate nodes; a node that is down is skipped on the next try.
            match apis[i % apis.len()]
                .try_post("/v1/events/batch", &body, &[("Idempotency-Key", &key)])
                .await
            {
                Some((202, a)) => break a,
                _ => i += 1,
            }
        };
        for (j, r) in answer["results"].as_array().unwrap().iter().enumerate() {
            let k = b * 100 + j as u64;
            for d in r["deliveries"].as_array().unwrap() {
                acked.insert(d.as_str().unwrap().to_string(), (k % endpoints, k));
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_a_kill_and_a_join_lose_nothing_and_keep_order_and_limits() {
    let redis = Redis::start();
    three_nodes_scenario(&redis.url).await;
}

/// The same on a Redis Cluster of three masters: the nodes' partitions live on all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_a_kill_and_a_join_lose_nothing_and_keep_order_and_limits_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    three_nodes_scenario(&cluster.url).await;
    let counts = cluster.key_counts();
    assert!(
        counts.iter().all(|n| *n > 0),
        "every master holds keys: {counts:?}"
    );
}

async fn three_nodes_scenario(redis_url: &str) {
    const EVENTS: u64 = 10_000;
    const ENDPOINTS: u64 = 500;
    let key_prefix = prefix("cluster");
    let logs = tempfile::tempdir().unwrap();

    let receiver = Receiver::start(|_, _| Reply {
        delay: Duration::from_millis(1),
        ..Reply::status(200)
    })
    .await;
    let mut a = NodeProcess::start(node_env(redis_url, &key_prefix, "node-a"), logs.path()).await;
    let mut b = NodeProcess::start(node_env(redis_url, &key_prefix, "node-b"), logs.path()).await;
    let admin = Api::new(&a.base, ADMIN_TOKEN);
    let (_, ws) = admin
        .post("/v1/workspaces", json!({"name": "Cluster"}))
        .await;
    let key = ws["apiKey"].as_str().unwrap().to_string();
    let api_a = Api::new(&a.base, &key);
    let mut limited = HashSet::new();
    let mut keyed = HashSet::new();
    for i in 0..ENDPOINTS {
        let mut spec = json!({"url": format!("{}/{i}", receiver.url), "retry": {"maxAttempts": 30, "initialDelayMs": 100, "multiplier": 1.0}});
        if i % 50 == 0 {
            spec["rateLimit"] = json!({"perSecond": 5, "burst": 1});
            limited.insert(i);
        }
        if i % 50 == 25 {
            spec["orderingKey"] = json!("member.key");
            spec["maxInFlight"] = json!(KEYS);
            keyed.insert(i);
        }
        let ep = api_a.endpoint(spec).await;
        api_a
            .rule(
                json!({"name": format!("to {i}"), "events": ["member:updated"],
            "conditions": {"field": "member.id", "op": "eq", "value": i},
            "actions": [{"type": "webhook", "endpointId": ep["id"]}]}),
            )
            .await;
    }
    let poster = tokio::spawn(post_all(
        vec![api_a.clone(), Api::new(&b.base, &key)],
        EVENTS,
        ENDPOINTS,
    ));

    wait_until(
        Duration::from_secs(120),
        "a third of the deliveries",
        || async { receiver.count() as u64 >= EVENTS / 3 },
    )
    .await;
    let c = NodeProcess::start(node_env(redis_url, &key_prefix, "node-c"), logs.path()).await;
    wait_until(
        Duration::from_secs(20),
        "three nodes sharing the partitions evenly",
        || async {
            let o = owners(&admin).await;
            let n = counts(&o);
            o.iter().all(Option::is_some)
                && n.len() == 3
                && n.values().max().unwrap() - n.values().min().unwrap() <= 1
        },
    )
    .await;

    wait_until(
        Duration::from_secs(120),
        "two thirds of the deliveries",
        || async { receiver.count() as u64 >= 2 * EVENTS / 3 },
    )
    .await;
    b.kill9();
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the survivors to own every partition",
        || async {
            let o = owners(&admin).await;
            !o.is_empty()
                && o.iter()
                    .all(|x| x.as_deref().is_some_and(|n| n != "node-b"))
        },
    )
    .await;
    let takeover = killed.elapsed();
    println!("takeover of node-b's partitions: {takeover:?} (lease {LEASE_MS} ms)");
    assert!(
        takeover <= Duration::from_millis(LEASE_MS) + Duration::from_secs(2),
        "takeover took {takeover:?}"
    );

    let acked = poster.await.unwrap();
    assert_eq!(acked.len() as u64, EVENTS);
    wait_until(
        Duration::from_secs(180),
        "every acknowledged delivery",
        || async {
            let got: HashSet<String> = receiver.with_received(|r| {
                r.iter()
                    .map(|x| x.header("webhook-id").to_string())
                    .collect()
            });
            acked.keys().all(|id| got.contains(id))
        },
    )
    .await;
    let got = receiver.received();
    let mut seen = HashSet::new();
    // Order per endpoint, or per key value on the endpoints ordered per key.
    let mut last: HashMap<(u64, u64), u64> = HashMap::new();
    let mut arrivals: HashMap<u64, Vec<Instant>> = HashMap::new();
    for r in &got {
        let (ep, seq) = acked[r.header("webhook-id")];
        assert_eq!(r.path, format!("/hook/{ep}"));
        arrivals.entry(ep).or_default().push(r.at);
        seen.insert(r.header("webhook-id").to_string());
        // Every arrival, duplicates included, never steps back (a kill may repeat the head).
        let sequence = if keyed.contains(&ep) {
            (ep, seq % KEYS)
        } else {
            (ep, KEYS)
        };
        if let Some(prev) = last.insert(sequence, seq) {
            assert!(
                prev <= seq,
                "{sequence:?}: event {seq} arrived after {prev}"
            );
        }
    }
    assert_eq!(
        last.keys().filter(|(ep, _)| keyed.contains(ep)).count(),
        keyed.len() * KEYS as usize,
        "every key of every keyed endpoint was delivered"
    );
    for ep in &limited {
        let times = &arrivals[ep];
        let peak = (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| t.duration_since(times[i]) < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap();
        assert!(
            peak <= 6,
            "endpoint {ep}: {peak} arrivals in one second at 5/s"
        );
    }
    println!(
        "cluster run: {} requests for {EVENTS} deliveries ({} duplicates)",
        got.len(),
        got.len() - seen.len()
    );
    a.kill9();
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_changed_on_one_node_applies_to_events_posted_on_another_at_once() {
    let redis = Redis::start();
    rule_change_scenario(&redis.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_changed_on_one_node_applies_to_events_posted_on_another_at_once_on_a_redis_cluster()
{
    let cluster = RedisCluster::start();
    rule_change_scenario(&cluster.url).await;
}

async fn rule_change_scenario(redis_url: &str) {
    let key_prefix = prefix("rules2");
    let a = Node::start(test_config_at(redis_url, &key_prefix)).await;
    let b = Node::start(test_config_at(redis_url, &key_prefix)).await;
    let api_a = a.workspace("Rules").await;
    let api_b = b.api(api_a.token());
    let receiver = Receiver::ok().await;
    let ep = api_a.endpoint(json!({"url": receiver.url})).await;
    let rule = api_a
        .rule(
            json!({"name": "high only", "events": ["data_record:created"],
            "conditions": {"field": "dataRecord.fields.priority", "op": "eq", "value": "high"},
            "actions": [{"type": "webhook", "endpointId": ep["id"]}]}),
        )
        .await;
    // Node B caches the rule and, with a delivery, the endpoint: on one Redis it then plans
    // with both as cached and the write itself checks their versions.
    let (_, warm) = api_b.post("/v1/events", record_event(0, "high")).await;
    assert_eq!(warm["deliveries"].as_array().unwrap().len(), 1, "{warm}");
    let (_, before) = api_b.post("/v1/events", record_event(1, "low")).await;
    assert_eq!(
        before["deliveries"],
        json!([]),
        "node B has the rule cached"
    );
    let (status, _) = api_a.patch(&format!("/v1/event-rules/{}", rule["id"]), json!({"conditions": {"field": "dataRecord.fields.priority", "op": "eq", "value": "low"}})).await;
    assert_eq!(status, 200);
    let changed = Instant::now();
    let (_, after) = api_b.post("/v1/events", record_event(2, "low")).await;
    assert!(changed.elapsed() < Duration::from_secs(1));
    assert_eq!(
        after["deliveries"].as_array().unwrap().len(),
        1,
        "node B applied node A's change: {after}"
    );
    let (status, _) = api_a
        .patch(
            &format!("/v1/endpoints/{}", ep["id"].as_str().unwrap()),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, disabled) = api_b.post("/v1/events", record_event(3, "low")).await;
    assert_eq!(
        disabled["deliveries"],
        json!([]),
        "node B applied node A's endpoint change: {disabled}"
    );
    a.stop().await;
    b.stop().await;
}
