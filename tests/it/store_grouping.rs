//! On one Redis, ingest requests that arrive while a call runs are written together in the
//! next call (`store::redis::ingest`). Each must still be written, checked and answered as it
//! would be alone: its own deliveries, its own idempotency key, its own versions.

use std::sync::Arc;

use switchyard::delivery::{NewDelivery, new_event_id, partition_of};
use switchyard::store::{DeliveryFilter, Idempotency, Ingested, NewEvent, RedisStore, Store};

use crate::support::{Redis, prefix};

const PARTITIONS: u32 = 8;
const REQUESTS: usize = 48;

fn event(ws: &str, n: usize) -> NewEvent {
    let ep = format!("ep_{ws}");
    NewEvent {
        id: new_event_id(),
        event_type: "member:created".into(),
        body: Arc::from(""),
        deliveries: (0..n)
            .map(|i| NewDelivery {
                partition: partition_of(&ep, PARTITIONS),
                endpoint_id: ep.clone(),
                rule_id: i as u64 + 1,
                key: String::new(),
                body: format!("{{\"ws\":\"{ws}\",\"n\":{i}}}").into(),
            })
            .collect(),
    }
}

fn script_calls(info: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingests_share_calls_and_are_answered_as_if_alone() {
    let redis = Redis::start();
    let store = Store::Redis(
        RedisStore::connect(&redis.url, &prefix("grouping"), PARTITIONS)
            .await
            .unwrap(),
    );
    let mut admin = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stats = || {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("commandstats");
        cmd
    };
    let before: String = stats().query_async(&mut admin).await.unwrap();
    let versions = store.versions("ws-3").await.unwrap();

    // Request i writes i % 3 + 1 deliveries to workspace ws-{i % 4}. Two of them (ws-1) share one
    // idempotency key and events; request 7 (ws-3) was planned with versions that moved.
    let same = event("ws-1", 2);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let store = store.clone();
        let ws = format!("ws-{}", i % 4);
        let (events, key, expect) = match i {
            5 | 9 => (vec![same.clone()], Some("order-1"), None),
            7 => (
                vec![event(&ws, 1)],
                None,
                Some((versions.0 + 1, versions.1)),
            ),
            _ => (vec![event(&ws, i % 3 + 1)], None, None),
        };
        let ws = if key.is_some() {
            "ws-1".to_string()
        } else {
            ws
        };
        tasks.spawn(async move {
            let idem = key.map(|k| Idempotency {
                key: k.into(),
                fingerprint: "fp".into(),
                ttl_secs: 60,
            });
            let got = store
                .ingest(&ws, &events, idem.as_ref(), expect)
                .await
                .unwrap();
            (i, ws, events, got)
        });
    }
    let mut written = std::collections::BTreeMap::<String, usize>::new();
    let mut keyed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, ws, events, got) = done.unwrap();
        match (i, got) {
            (7, got) => assert_eq!(got, Ingested::Stale, "request 7 was planned stale"),
            (5 | 9, got) => keyed.push(got),
            (_, Ingested::Written(answer)) => {
                assert_eq!(answer.len(), 1);
                assert_eq!(answer[0].0, events[0].id, "its own event's id");
                assert_eq!(answer[0].1.len(), i % 3 + 1, "its own deliveries");
                *written.entry(ws).or_default() += answer[0].1.len();
            }
            (i, other) => panic!("request {i}: {other:?}"),
        }
    }
    // The key's two requests: one wrote, the other got the same answer.
    let first = keyed
        .iter()
        .find_map(|g| match g {
            Ingested::Written(a) => Some(a.clone()),
            _ => None,
        })
        .expect("one of the keyed requests wrote");
    assert!(
        keyed.contains(&Ingested::Answered(first.clone())),
        "the other was answered as the first: {keyed:?}"
    );
    *written.entry("ws-1".into()).or_default() += first[0].1.len();

    for (ws, n) in &written {
        let listed = store
            .list_deliveries(ws, &DeliveryFilter::default(), 100, None)
            .await
            .unwrap();
        assert_eq!(
            listed.data.len(),
            *n,
            "{ws}: each delivery once, in its workspace"
        );
    }
    let after: String = stats().query_async(&mut admin).await.unwrap();
    let calls = script_calls(&after) - script_calls(&before);
    assert!(
        calls < REQUESTS as u64 / 2,
        "{REQUESTS} concurrent requests took {calls} script calls"
    );
}
