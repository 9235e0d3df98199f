//! A backlog written in the older Redis job layout (one stream field per part) survives the
//! upgrade to the packed layout: its jobs are read, and requeued, with every part intact.

use std::time::Duration;

use switchyard::delivery::{EntryId, Progress, Status, partition_of};
use switchyard::store::{Checkpoint, Outcome, RedisStore, Store};

use crate::support::{Redis, prefix};

const PARTITIONS: u32 = 4;
const WS: &str = "ws-upgrade";
const EP: &str = "ep_upgrade";

#[tokio::test]
async fn jobs_of_the_older_layout_are_read_and_requeued() {
    let redis = Redis::start();
    let pfx = prefix("upgrade");
    let store = Store::Redis(
        RedisStore::connect(&redis.url, &pfx, PARTITIONS)
            .await
            .unwrap(),
    );
    let p = partition_of(EP, PARTITIONS);
    let stream = format!("{pfx}:{{p{p}}}:q");
    let mut conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // A job as the previous release wrote it, with a tab in its ordering key.
    let entry: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(&[
            "w",
            WS,
            "e",
            EP,
            "r",
            "3",
            "v",
            "evt_old",
            "t",
            "member:created",
            "k",
            "acct\t1",
            "b",
            "{\"old\":true}",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut reader = store.job_reader(p).await.unwrap();
    let jobs = reader.read(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(jobs.len(), 1, "the old entry is read as a job");
    let job = &jobs[0];
    let parts = |j: &switchyard::delivery::Job| {
        (
            j.workspace.clone(),
            j.endpoint_id.clone(),
            j.rule_id,
            j.event_id.clone(),
            j.event_type.clone(),
            j.key.clone(),
            j.body.to_string(),
        )
    };
    let want = (
        WS.to_string(),
        EP.to_string(),
        3,
        "evt_old".to_string(),
        "member:created".to_string(),
        "acct\t1".to_string(),
        "{\"old\":true}".to_string(),
    );
    assert_eq!(parts(job), want);
    assert_eq!(job.entry.to_string(), entry);

    // It fails; a manual retry requeues it (the requeue script reads the old layout).
    let failed = Outcome {
        id: job.id,
        workspace: WS.into(),
        endpoint_id: EP.into(),
        from: job.progress.status,
        progress: Progress {
            status: Status::Failed,
            attempts: 1,
            failures: 1,
            next_attempt_ms: None,
            throttled_since_ms: None,
        },
        attempt: None,
    };
    let checkpoint = Checkpoint {
        done_below: EntryId::ZERO,
        read_upto: job.entry,
    };
    store.commit(p, None, &[failed], checkpoint).await.unwrap();
    assert!(
        store
            .requeue(WS, job.id, &[Status::Failed], true)
            .await
            .unwrap(),
        "the failed delivery is requeued"
    );
    let copies = reader.read(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(copies.len(), 1, "its copy is read");
    let copy = &copies[0];
    assert_eq!(parts(copy), want, "the copy carries every part");
    assert_eq!(copy.id, job.id, "the copy names its delivery");
    assert_ne!(copy.entry, job.entry);
    assert!(copy.manual);

    // The copy is written in the packed layout: one field.
    let fields: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg(copy.entry.to_string())
        .arg(copy.entry.to_string())
        .query_async::<Vec<(String, Vec<String>)>>(&mut conn)
        .await
        .unwrap();
    assert_eq!(fields.len(), 1);
    assert_eq!(
        fields[0].1.len(),
        2,
        "one field and its value: {:?}",
        fields[0].1
    );
    assert_eq!(fields[0].1[0], "j");
}
