//! One conformance suite over the store backends: every test runs on Redis, on a three-master
//! Redis Cluster and on the embedded store, and must see the same behaviour.

use std::time::Duration;

use switchyard::delivery::{
    Attempt, AttemptRequest, AttemptResponse, Delivery, Job, NewDelivery, Status, partition_of, seq,
};
use switchyard::store::{DeliveryFilter, EmbeddedStore, NewEvent, RedisStore, Store};

use crate::support::{Redis, RedisCluster, prefix};

const PARTITIONS: u32 = 4;

/// A backend under test, with what keeps it alive.
struct Backend {
    store: Store,
    _redis: Option<Redis>,
    _cluster: Option<RedisCluster>,
    _dir: Option<tempfile::TempDir>,
}

async fn redis_backend() -> Backend {
    redis_backend_keeping(switchyard::store::DEFAULT_RETENTION).await
}

async fn redis_backend_keeping(retention: Duration) -> Backend {
    let redis = Redis::start();
    let store = RedisStore::connect(&redis.url, &prefix("conf"), PARTITIONS)
        .await
        .unwrap()
        .with_retention(retention);
    Backend {
        store: Store::Redis(store),
        _redis: Some(redis),
        _cluster: None,
        _dir: None,
    }
}

/// A Redis Cluster of three masters: the partitions' and the workspace's keys land on
/// different masters, so every command that spans slots would fail here.
async fn redis_cluster_backend() -> Backend {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&cluster.url, &prefix("conf"), PARTITIONS)
        .await
        .unwrap();
    assert!(store.is_cluster());
    Backend {
        store: Store::Redis(store),
        _redis: None,
        _cluster: Some(cluster),
        _dir: None,
    }
}

fn embedded_backend() -> Backend {
    embedded_backend_keeping(switchyard::store::DEFAULT_RETENTION)
}

fn embedded_backend_keeping(retention: Duration) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), PARTITIONS)
        .unwrap()
        .with_retention(retention);
    Backend {
        store: Store::Embedded(store),
        _redis: None,
        _cluster: None,
        _dir: Some(dir),
    }
}

/// Runs a conformance case on both backends, as two tests.
macro_rules! conformance {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn on_redis() {
                let b = redis_backend().await;
                ($body)(b.store.clone()).await;
            }
            #[tokio::test]
            async fn on_redis_cluster() {
                let b = redis_cluster_backend().await;
                ($body)(b.store.clone()).await;
                let counts = b._cluster.as_ref().unwrap().key_counts();
                assert!(
                    counts.iter().filter(|n| **n > 0).count() >= 2,
                    "keys spread over the masters: {counts:?}"
                );
            }
            #[tokio::test]
            async fn on_embedded() {
                let b = embedded_backend();
                ($body)(b.store.clone()).await;
            }
        }
    };
}

const WS: &str = "ws-1";
const EP: &str = "ep_conformance";

/// An event with `n` deliveries to `EP` (one per rule id), created now.
fn event(id: &str, n: usize, first_index: usize) -> NewEvent {
    let now = chrono::Utc::now();
    let new_deliveries: Vec<NewDelivery> = (0..n)
        .map(|i| NewDelivery {
            delivery: Delivery {
                id: format!("msg_{id}_{i}"),
                event_id: id.into(),
                event_type: "member:created".into(),
                endpoint_id: EP.into(),
                rule_id: i as u64 + 1,
                status: Status::Pending,
                created_at: now.to_rfc3339(),
                attempt_count: 0,
                next_attempt_at: None,
                body: format!("{{\"n\":{i}}}"),
                seq: seq(now.timestamp_millis(), first_index + i),
            },
            partition: partition_of(EP, PARTITIONS),
        })
        .collect();
    NewEvent {
        id: id.into(),
        event_type: "member:created".into(),
        created_at: now.to_rfc3339(),
        deliveries: new_deliveries
            .iter()
            .map(|d| d.delivery.id.clone())
            .collect(),
        new_deliveries,
    }
}

fn attempt(n: u32, status: u16) -> Attempt {
    Attempt {
        attempt: n,
        started_at: chrono::Utc::now().to_rfc3339(),
        duration_ms: 1,
        request: AttemptRequest {
            url: "https://x.io".into(),
            headers: Default::default(),
            body: None,
        },
        response: Some(AttemptResponse {
            status,
            headers: Default::default(),
            body: String::new(),
            truncated: false,
        }),
        error: None,
        next_attempt_at: None,
    }
}

async fn read_all(store: &Store, partition: u32, want: usize) -> Vec<Job> {
    let mut reader = store.job_reader(partition).await.unwrap();
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.extend(reader.read(want, Duration::from_millis(50)).await.unwrap());
        if jobs.len() >= want {
            break;
        }
    }
    jobs
}

conformance!(
    jobs_come_in_order_and_unfinished_ones_resume_in_order,
    |store: Store| async move {
        let p = partition_of(EP, PARTITIONS);
        assert_eq!(store.ingest(WS, &[event("e1", 10, 0)]).await.unwrap(), 10);
        let jobs = read_all(&store, p, 10).await;
        let ids: Vec<&str> = jobs.iter().map(|j| j.delivery_id.as_str()).collect();
        assert_eq!(
            ids,
            (0..10).map(|i| format!("msg_e1_{i}")).collect::<Vec<_>>()
        );
        for job in &jobs[..3] {
            store
                .record_attempt(job, &attempt(1, 200), Status::Pending, Status::Succeeded)
                .await
                .unwrap();
        }
        // A new reader (a restart, or another node taking the partition) gets the unfinished jobs.
        let resumed = read_all(&store, p, 7).await;
        let resumed_ids: Vec<&str> = resumed.iter().map(|j| j.delivery_id.as_str()).collect();
        assert_eq!(resumed_ids, ids[3..].to_vec());
        let mut fresh = store.job_reader(p).await.unwrap();
        let _ = fresh.read(100, Duration::from_millis(10)).await.unwrap();
        assert!(
            fresh
                .read(100, Duration::from_millis(50))
                .await
                .unwrap()
                .is_empty(),
            "nothing new"
        );
    }
);

conformance!(
    ingesting_the_same_event_twice_creates_nothing_new,
    |store: Store| async move {
        let ev = event("e2", 3, 0);
        assert_eq!(
            store.ingest(WS, std::slice::from_ref(&ev)).await.unwrap(),
            3
        );
        assert_eq!(store.ingest(WS, &[ev]).await.unwrap(), 0);
        // A retry from another request (another node, later): same ids, a later seq.
        assert_eq!(store.ingest(WS, &[event("e2", 3, 100)]).await.unwrap(), 0);
        let listed = store
            .list_deliveries(WS, &DeliveryFilter::default(), 10, None)
            .await
            .unwrap();
        assert_eq!(listed.data.len(), 3, "each delivery is listed once");
        assert_eq!(
            read_all(&store, partition_of(EP, PARTITIONS), 10)
                .await
                .len(),
            3
        );
        assert_eq!(store.counts(WS, EP).await.unwrap().pending, 3);
        use switchyard::store::Claim;
        assert_eq!(
            store.claim_idempotency(WS, "k", "fp1", 60).await.unwrap(),
            Claim::New
        );
        assert_eq!(
            store.claim_idempotency(WS, "k", "fp1", 60).await.unwrap(),
            Claim::InProgress,
            "claimed, not yet answered"
        );
        store
            .remember_answer(WS, "k", "fp1", "{\"id\":\"e2\"}", 60)
            .await
            .unwrap();
        assert_eq!(
            store.claim_idempotency(WS, "k", "fp1", 60).await.unwrap(),
            Claim::Answered("{\"id\":\"e2\"}".into())
        );
        assert_eq!(
            store.claim_idempotency(WS, "k", "fp2", 60).await.unwrap(),
            Claim::Reused,
            "another body with the same key"
        );
    }
);

conformance!(
    attempts_are_logged_and_statuses_counted,
    |store: Store| async move {
        store.ingest(WS, &[event("e3", 2, 0)]).await.unwrap();
        let jobs = read_all(&store, partition_of(EP, PARTITIONS), 2).await;
        let mut retry = attempt(1, 500);
        retry.next_attempt_at = Some("2030-01-01T00:00:00.000Z".into());
        store
            .record_attempt(&jobs[0], &retry, Status::Pending, Status::Retrying)
            .await
            .unwrap();
        store
            .record_attempt(
                &jobs[0],
                &attempt(2, 200),
                Status::Retrying,
                Status::Succeeded,
            )
            .await
            .unwrap();
        let d = store
            .delivery(WS, &jobs[0].delivery_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((d.status, d.attempt_count), (Status::Succeeded, 2));
        assert_eq!(d.body, "{\"n\":0}");
        let attempts = store.attempts(WS, &jobs[0].delivery_id).await.unwrap();
        let codes: Vec<u16> = attempts
            .iter()
            .map(|a| a.response.as_ref().unwrap().status)
            .collect();
        assert_eq!(codes, vec![500, 200]);
        let counts = store.counts(WS, EP).await.unwrap();
        assert_eq!(
            (counts.pending, counts.retrying, counts.succeeded),
            (1, 0, 1)
        );
        let page = store
            .list_deliveries(
                WS,
                &DeliveryFilter {
                    status: Some(Status::Succeeded),
                    ..Default::default()
                },
                10,
                None,
            )
            .await
            .unwrap();
        assert_eq!(page.data.len(), 1);
        let all = store
            .list_deliveries(WS, &DeliveryFilter::default(), 1, None)
            .await
            .unwrap();
        assert_eq!(all.data[0].id, "msg_e3_1", "newest first");
        let next = store
            .list_deliveries(
                WS,
                &DeliveryFilter::default(),
                1,
                all.next_cursor.as_deref(),
            )
            .await
            .unwrap();
        assert_eq!(next.data[0].id, "msg_e3_0");
        assert_eq!(next.next_cursor, None, "no cursor past the last delivery");
    }
);

conformance!(
    failed_deliveries_go_to_the_dead_letter_and_replay_once_in_order,
    |store: Store| async move {
        let p = partition_of(EP, PARTITIONS);
        store.ingest(WS, &[event("e4", 4, 0)]).await.unwrap();
        let mut reader = store.job_reader(p).await.unwrap();
        let jobs = reader.read(10, Duration::from_millis(50)).await.unwrap();
        let since = chrono::Utc::now().timestamp_millis() - 1;
        for job in jobs.iter().rev() {
            // Fail them in reverse: replay must still follow ingest order.
            store
                .record_attempt(job, &attempt(1, 500), Status::Pending, Status::Failed)
                .await
                .unwrap();
        }
        assert_eq!(store.counts(WS, EP).await.unwrap().failed, 4);
        assert_eq!(store.replay(WS, EP, since, None).await.unwrap(), 4);
        assert_eq!(
            store.replay(WS, EP, since, None).await.unwrap(),
            0,
            "requeued once"
        );
        let again = reader.read(10, Duration::from_millis(200)).await.unwrap();
        let ids: Vec<&str> = again.iter().map(|j| j.delivery_id.as_str()).collect();
        assert_eq!(ids, vec!["msg_e4_0", "msg_e4_1", "msg_e4_2", "msg_e4_3"]);
        let d = store.delivery(WS, "msg_e4_0").await.unwrap().unwrap();
        assert_eq!(d.status, Status::Pending);
        assert_eq!(
            store
                .replay(WS, EP, chrono::Utc::now().timestamp_millis() + 1000, None)
                .await
                .unwrap(),
            0
        );
    }
);

conformance!(
    a_request_with_more_deliveries_than_one_store_call_takes_is_written_whole,
    |store: Store| async move {
        // 1,200 deliveries: more than one script call creates (500) on Redis.
        let ev = event("big", 1200, 0);
        assert_eq!(
            store.ingest(WS, std::slice::from_ref(&ev)).await.unwrap(),
            1200
        );
        assert_eq!(store.ingest(WS, &[ev]).await.unwrap(), 0, "and once only");
        assert_eq!(store.counts(WS, EP).await.unwrap().pending, 1200);
        let mut listed = 0;
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .list_deliveries(WS, &DeliveryFilter::default(), 1000, cursor.as_deref())
                .await
                .unwrap();
            listed += page.data.len();
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(listed, 1200);
        let jobs = read_all(&store, partition_of(EP, PARTITIONS), 1200).await;
        let ids: Vec<&str> = jobs.iter().map(|j| j.delivery_id.as_str()).collect();
        let expected: Vec<String> = (0..1200).map(|i| format!("msg_big_{i}")).collect();
        assert_eq!(ids, expected, "every job once, in ingest order");
    }
);

/// Retention: finished deliveries (and their attempts) go after the retention; pending ones stay.
async fn retention_case(store: Store) {
    let ws = switchyard::workspace::Workspace {
        uuid: WS.into(),
        name: "w".into(),
        created_at: String::new(),
    };
    store.create_workspace(&ws).await.unwrap();
    store.ingest(WS, &[event("e5", 2, 0)]).await.unwrap();
    let jobs = read_all(&store, partition_of(EP, PARTITIONS), 2).await;
    store
        .record_attempt(
            &jobs[0],
            &attempt(1, 200),
            Status::Pending,
            Status::Succeeded,
        )
        .await
        .unwrap();
    crate::support::wait_until(
        Duration::from_secs(10),
        "the finished delivery to expire",
        || async {
            store.trim().await.unwrap();
            store.delivery(WS, "msg_e5_0").await.unwrap().is_none()
        },
    )
    .await;
    assert!(store.attempts(WS, "msg_e5_0").await.unwrap().is_empty());
    let pending = store
        .delivery(WS, "msg_e5_1")
        .await
        .unwrap()
        .expect("a pending delivery is never trimmed");
    assert_eq!(pending.status, Status::Pending);
    let resumed = read_all(&store, partition_of(EP, PARTITIONS), 1).await;
    assert_eq!(
        resumed[0].delivery_id, "msg_e5_1",
        "and its job is still there"
    );
}

#[tokio::test]
async fn retention_on_redis() {
    let b = redis_backend_keeping(Duration::from_secs(1)).await;
    retention_case(b.store.clone()).await;
}

#[tokio::test]
async fn retention_on_redis_cluster() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&cluster.url, &prefix("conf"), PARTITIONS)
        .await
        .unwrap()
        .with_retention(Duration::from_secs(1));
    retention_case(Store::Redis(store)).await;
}

#[tokio::test]
async fn retention_on_embedded() {
    let b = embedded_backend_keeping(Duration::from_millis(500));
    retention_case(b.store.clone()).await;
}

/// Acknowledged jobs leave the partition stream; pending ones (read, unfinished) stay and are
/// read again by the next reader.
async fn trim_jobs_case(redis: RedisStore) {
    let store = Store::Redis(redis.clone());
    let p = partition_of(EP, PARTITIONS);
    store.ingest(WS, &[event("e6", 10, 0)]).await.unwrap();
    let jobs = read_all(&store, p, 10).await;
    for job in &jobs[3..] {
        store
            .record_attempt(job, &attempt(1, 200), Status::Pending, Status::Succeeded)
            .await
            .unwrap();
    }
    assert_eq!(
        redis.trim_jobs(p).await.unwrap(),
        0,
        "job 0 is still pending"
    );
    let resumed = read_all(&store, p, 3).await;
    let ids: Vec<&str> = resumed.iter().map(|j| j.delivery_id.as_str()).collect();
    assert_eq!(ids, vec!["msg_e6_0", "msg_e6_1", "msg_e6_2"]);
    for job in &resumed {
        store
            .record_attempt(job, &attempt(1, 200), Status::Pending, Status::Succeeded)
            .await
            .unwrap();
    }
    assert_eq!(
        redis.trim_jobs(p).await.unwrap(),
        9,
        "all but the last delivered entry"
    );
    store.ingest(WS, &[event("e7", 1, 0)]).await.unwrap();
    let fresh = read_all(&store, p, 1).await;
    assert_eq!(fresh[0].delivery_id, "msg_e7_0", "new jobs still flow");
}

#[tokio::test]
async fn acknowledged_jobs_are_trimmed_and_pending_ones_kept_on_redis() {
    let b = redis_backend().await;
    let Store::Redis(s) = b.store.clone() else {
        unreachable!()
    };
    trim_jobs_case(s).await;
}

#[tokio::test]
async fn acknowledged_jobs_are_trimmed_and_pending_ones_kept_on_a_redis_cluster() {
    let b = redis_cluster_backend().await;
    let Store::Redis(s) = b.store.clone() else {
        unreachable!()
    };
    trim_jobs_case(s).await;
}
