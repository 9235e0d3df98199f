//! One conformance suite over the store backends: every test runs on Redis, on a three-master
//! Redis Cluster and on the embedded store, and must see the same behaviour.

use std::sync::Arc;
use std::time::Duration;

use switchyard::delivery::{
    Attempt, AttemptRequest, AttemptResponse, EntryId, Job, NewDelivery, Progress, Status,
    partition_of,
};
use switchyard::store::jobs::Retention;
use switchyard::store::record::AttemptRecord;
use switchyard::store::{
    Checkpoint, DeliveryFilter, EmbeddedStore, Idempotency, Ingested, NewEvent, Outcome,
    RedisStore, Store, StoreError,
};

use crate::support::{Redis, RedisCluster, prefix};

const PARTITIONS: u32 = 4;

/// A backend under test, with what keeps it alive.
struct Backend {
    store: Store,
    _redis: Option<Redis>,
    _cluster: Option<RedisCluster>,
    _dir: Option<tempfile::TempDir>,
}

async fn redis_backend_keeping(retention: Retention) -> Backend {
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
async fn redis_cluster_backend_keeping(retention: Retention) -> Backend {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&cluster.url, &prefix("conf"), PARTITIONS)
        .await
        .unwrap()
        .with_retention(retention);
    assert!(store.is_cluster());
    Backend {
        store: Store::Redis(store),
        _redis: None,
        _cluster: Some(cluster),
        _dir: None,
    }
}

fn embedded_backend_keeping(retention: Retention) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let settings = switchyard::store::embedded::Settings {
        retention,
        min_free_bytes: 0,
    };
    let store = EmbeddedStore::open_with(dir.path(), PARTITIONS, settings).unwrap();
    Backend {
        store: Store::Embedded(store),
        _redis: None,
        _cluster: None,
        _dir: Some(dir),
    }
}

/// Runs a conformance case on every backend, as three tests.
macro_rules! conformance {
    ($name:ident, $body:expr) => {
        conformance!($name, Retention::default(), $body);
    };
    ($name:ident, $retention:expr, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn on_redis() {
                let b = redis_backend_keeping($retention).await;
                ($body)(b.store.clone()).await;
            }
            #[tokio::test]
            async fn on_redis_cluster() {
                let b = redis_cluster_backend_keeping($retention).await;
                ($body)(b.store.clone()).await;
                let counts = b._cluster.as_ref().unwrap().key_counts();
                assert!(
                    counts.iter().filter(|n| **n > 0).count() >= 2,
                    "keys spread over the masters: {counts:?}"
                );
            }
            #[tokio::test]
            async fn on_embedded() {
                let b = embedded_backend_keeping($retention);
                ($body)(b.store.clone()).await;
            }
        }
    };
}

const WS: &str = "ws-1";
const EP: &str = "ep_conformance";

fn p() -> u32 {
    partition_of(EP, PARTITIONS)
}

/// An event with `n` deliveries to `EP` (one per rule id).
fn event(n: usize) -> NewEvent {
    NewEvent {
        id: switchyard::delivery::new_event_id(),
        event_type: "member:created".into(),
        body: Arc::from(if n == 0 { "{\"no\":\"rule\"}" } else { "" }),
        deliveries: (0..n)
            .map(|i| NewDelivery {
                partition: p(),
                endpoint_id: EP.into(),
                rule_id: i as u64 + 1,
                key: String::new(),
                body: format!("{{\"n\":{i}}}").into(),
            })
            .collect(),
    }
}

/// The delivery ids a successful ingest wrote.
async fn ingest(store: &Store, events: &[NewEvent]) -> Vec<String> {
    match store.ingest(WS, events, None, None).await.unwrap() {
        Ingested::Written(answer) => answer.into_iter().flat_map(|(_, d)| d).collect(),
        other => panic!("{other:?}"),
    }
}

fn attempt(n: u32, status: u16) -> AttemptRecord {
    AttemptRecord::of(&Attempt {
        attempt: n,
        started_at: switchyard::delivery::now_rfc3339(),
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
    })
}

async fn read_all(store: &Store, want: usize) -> Vec<Job> {
    let mut reader = store.job_reader(p()).await.unwrap();
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.extend(reader.read(want, Duration::from_millis(50)).await.unwrap());
        if jobs.len() >= want {
            break;
        }
    }
    jobs
}

/// The outcome of one attempt of `job` with status `code`, moving it to `to`.
fn outcome(job: &Job, code: u16, to: Status) -> Outcome {
    let failures = job.progress.failures + u32::from(!(200..300).contains(&code));
    Outcome {
        id: job.id,
        workspace: job.workspace.clone(),
        endpoint_id: job.endpoint_id.clone(),
        from: job.progress.status,
        progress: Progress {
            status: to,
            attempts: job.progress.attempts + 1,
            failures,
            next_attempt_ms: (to == Status::Retrying).then_some(1),
            throttled_since_ms: None,
        },
        attempt: Some(attempt(job.progress.attempts + 1, code)),
    }
}

/// Commits outcomes the way a partition's owner does, with its checkpoint.
async fn commit(store: &Store, outcomes: &[Outcome], done_below: EntryId, read_upto: EntryId) {
    let checkpoint = Checkpoint {
        done_below,
        read_upto,
    };
    store.commit(p(), None, outcomes, checkpoint).await.unwrap();
}

conformance!(
    jobs_come_in_order_and_a_new_owner_resumes_the_unfinished_ones,
    |store: Store| async move {
        let ids = ingest(&store, &[event(10)]).await;
        let jobs = read_all(&store, 10).await;
        let read: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        assert_eq!(read, ids, "every job once, in ingest order");
        assert!(jobs.iter().all(|j| j.body.starts_with("{\"n\":")));
        // The owner finishes jobs 0, 1, 2 and 5 and sees job 3 fail once.
        let done: Vec<Outcome> = [0, 1, 2, 5]
            .iter()
            .map(|i| outcome(&jobs[*i], 200, Status::Succeeded))
            .collect();
        let mut batch = done.clone();
        batch.push(outcome(&jobs[3], 500, Status::Retrying));
        commit(&store, &batch, jobs[3].entry, jobs[9].entry).await;
        // A new owner (a restart, or another node) resumes from the checkpoint: the
        // unfinished jobs in order, the retrying one with its progress, the finished not again.
        let resumed = read_all(&store, 6).await;
        let resumed_ids: Vec<String> = resumed.iter().map(|j| j.id.to_string()).collect();
        let expected: Vec<String> = [3, 4, 6, 7, 8, 9].iter().map(|i| ids[*i].clone()).collect();
        assert_eq!(resumed_ids, expected);
        assert_eq!(resumed[0].progress.status, Status::Retrying);
        assert_eq!(
            (resumed[0].progress.attempts, resumed[0].progress.failures),
            (1, 1)
        );
        assert_eq!(resumed[1].progress, Progress::NEW);
        let counts = store.counts(WS, EP).await.unwrap();
        assert_eq!(
            (counts.pending, counts.retrying, counts.succeeded),
            (5, 1, 4)
        );
    }
);

conformance!(
    an_ingest_planned_with_moved_versions_writes_nothing,
    |store: Store| async move {
        let (rules, endpoints) = store.versions(WS).await.unwrap();
        for moved in [(rules + 1, endpoints), (rules, endpoints + 1)] {
            let stale = store
                .ingest(WS, &[event(2)], None, Some(moved))
                .await
                .unwrap();
            assert_eq!(stale, Ingested::Stale, "planned with {moved:?}");
        }
        // A request too large for one call (written in several on one Redis) is checked
        // before any of it is written.
        let large = store
            .ingest(
                WS,
                &[event(300), event(300)],
                None,
                Some((rules + 1, endpoints)),
            )
            .await
            .unwrap();
        assert_eq!(large, Ingested::Stale, "a split request planned stale");
        let all = DeliveryFilter::default();
        let listed = || store.list_deliveries(WS, &all, 10, None);
        assert!(listed().await.unwrap().data.is_empty(), "nothing written");
        let written = store
            .ingest(WS, &[event(2)], None, Some((rules, endpoints)))
            .await
            .unwrap();
        assert!(matches!(written, Ingested::Written(_)), "{written:?}");
        assert_eq!(read_all(&store, 2).await.len(), 2);
        assert_eq!(listed().await.unwrap().data.len(), 2, "written once");
    }
);

conformance!(
    an_idempotency_key_writes_once_and_refuses_other_events,
    |store: Store| async move {
        let idem = |fp: &str| Idempotency {
            key: "order-42".into(),
            fingerprint: fp.into(),
            ttl_secs: 60,
        };
        let events = [event(3)];
        let first = store
            .ingest(WS, &events, Some(&idem("fp1")), None)
            .await
            .unwrap();
        let Ingested::Written(answer) = first else {
            panic!("{first:?}")
        };
        assert_eq!(answer[0].1.len(), 3);
        // The same request again (another node, later): its first answer, nothing written.
        let again = store
            .ingest(WS, &[event(3)], Some(&idem("fp1")), None)
            .await
            .unwrap();
        assert_eq!(again, Ingested::Answered(answer.clone()));
        // The key with other events: refused, nothing written.
        let other = store
            .ingest(WS, &[event(1)], Some(&idem("fp2")), None)
            .await
            .unwrap();
        assert_eq!(other, Ingested::Reused);
        assert_eq!(read_all(&store, 3).await.len(), 3);
        let listed = store
            .list_deliveries(WS, &DeliveryFilter::default(), 10, None)
            .await
            .unwrap();
        assert_eq!(listed.data.len(), 3, "each delivery once");
        assert_eq!(store.counts(WS, EP).await.unwrap().pending, 3);
        // An event that made no delivery is in the event log with its body.
        let unrouted = event(0);
        let answer = ingest(&store, std::slice::from_ref(&unrouted)).await;
        assert!(answer.is_empty());
        let found = store.find_event(WS, &unrouted.id).await.unwrap().unwrap();
        assert_eq!(found.record.b.as_deref(), Some("{\"no\":\"rule\"}"));
        assert!(found.record.deliveries().is_empty());
    }
);

conformance!(
    attempts_are_logged_and_statuses_counted,
    |store: Store| async move {
        let ids = ingest(&store, &[event(2)]).await;
        let jobs = read_all(&store, 2).await;
        commit(
            &store,
            &[outcome(&jobs[0], 500, Status::Retrying)],
            jobs[0].entry,
            jobs[1].entry,
        )
        .await;
        let mut retried = jobs[0].clone();
        retried.progress = Progress {
            status: Status::Retrying,
            attempts: 1,
            failures: 1,
            next_attempt_ms: Some(1),
            throttled_since_ms: None,
        };
        commit(
            &store,
            &[outcome(&retried, 200, Status::Succeeded)],
            jobs[1].entry,
            jobs[1].entry,
        )
        .await;
        let view = store.delivery(WS, &ids[0]).await.unwrap().unwrap();
        assert_eq!(
            (view.delivery.status, view.delivery.attempt_count),
            (Status::Succeeded, 2)
        );
        assert_eq!(&*view.delivery.body, "{\"n\":0}");
        let codes: Vec<u16> = view
            .attempts
            .iter()
            .map(|a| a.response.as_ref().unwrap().status)
            .collect();
        assert_eq!(codes, vec![500, 200]);
        assert_eq!(view.attempts[1].request.headers["webhook-id"], ids[0]);
        assert!(
            store
                .delivery("another-ws", &ids[0])
                .await
                .unwrap()
                .is_none(),
            "tenancy"
        );
        assert!(store.delivery(WS, "msg_0_1-1").await.unwrap().is_none());
        assert!(store.delivery(WS, "not an id").await.unwrap().is_none());
        let counts = store.counts(WS, EP).await.unwrap();
        assert_eq!(
            (counts.pending, counts.retrying, counts.succeeded),
            (1, 0, 1)
        );
        let succeeded = DeliveryFilter {
            status: Some(Status::Succeeded),
            ..Default::default()
        };
        let page = store
            .list_deliveries(WS, &succeeded, 10, None)
            .await
            .unwrap();
        assert_eq!(page.data.len(), 1);
        let all = store
            .list_deliveries(WS, &DeliveryFilter::default(), 1, None)
            .await
            .unwrap();
        assert_eq!(all.data[0].id, ids[1], "newest first");
        let next = store
            .list_deliveries(
                WS,
                &DeliveryFilter::default(),
                1,
                all.next_cursor.as_deref(),
            )
            .await
            .unwrap();
        assert_eq!(next.data[0].id, ids[0]);
        assert_eq!(next.next_cursor, None, "no cursor past the last delivery");
        let of_endpoint = DeliveryFilter {
            endpoint_id: Some(EP.into()),
            ..Default::default()
        };
        let page = store
            .list_deliveries(WS, &of_endpoint, 1, None)
            .await
            .unwrap();
        assert_eq!(page.data[0].id, ids[1]);
        let rest = store
            .list_deliveries(WS, &of_endpoint, 5, page.next_cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(
            rest.data.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            vec![ids[0].clone()]
        );
    }
);

/// A commit under a lease that has passed to another node is refused whole.
#[tokio::test]
async fn a_commit_with_a_stale_lease_is_refused() {
    let b = redis_backend_keeping(Retention::default()).await;
    let Store::Redis(redis) = &b.store else {
        unreachable!()
    };
    let mine = redis
        .acquire_lease(p(), "node-a", 60_000)
        .await
        .unwrap()
        .unwrap();
    ingest(&b.store, &[event(1)]).await;
    let jobs = read_all(&b.store, 1).await;
    redis.release_lease(p(), &mine).await.unwrap();
    let theirs = redis
        .acquire_lease(p(), "node-b", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(mine, theirs);
    let refused = b
        .store
        .commit(
            p(),
            Some(&mine),
            &[outcome(&jobs[0], 200, Status::Succeeded)],
            Checkpoint::default(),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::StaleLease(_))),
        "{refused:?}"
    );
    assert_eq!(
        b.store
            .delivery(WS, &jobs[0].id.to_string())
            .await
            .unwrap()
            .unwrap()
            .delivery
            .status,
        Status::Pending
    );
}

// The cases of the delivery log and of retention, over the same backends and helpers.
mod log;
mod retention;
