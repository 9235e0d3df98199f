//! Conformance of retention: by age and by the per-partition cap, a pending delivery kept.

use super::*;

/// Retention by age: finished deliveries go; a pending one stays, and so does its job.
async fn retention_case(store: Store) {
    let ids = ingest(&store, &[event(2)]).await;
    let jobs = read_all(&store, 2).await;
    commit(
        &store,
        &[outcome(&jobs[0], 200, Status::Succeeded)],
        jobs[1].entry,
        jobs[1].entry,
    )
    .await;
    crate::support::wait_until(
        Duration::from_secs(10),
        "the finished delivery to expire",
        || async {
            store.trim_partition(p(), EntryId::ZERO).await.unwrap();
            store.delivery(WS, &ids[0]).await.unwrap().is_none()
        },
    )
    .await;
    let pending = store
        .delivery(WS, &ids[1])
        .await
        .unwrap()
        .expect("a pending delivery is never trimmed");
    assert_eq!(pending.delivery.status, Status::Pending);
    let resumed = read_all(&store, 1).await;
    assert_eq!(
        resumed[0].id.to_string(),
        ids[1],
        "and its job is still there"
    );
}

conformance!(
    retention_drops_finished_deliveries_by_age,
    Retention {
        time: Duration::from_millis(800),
        max_per_partition: 1_000_000,
    },
    retention_case
);

conformance!(
    retention_drops_the_oldest_finished_deliveries_beyond_the_cap,
    Retention {
        time: Duration::from_secs(3600),
        max_per_partition: 3,
    },
    |store: Store| async move {
        let ids = ingest(&store, &[event(6)]).await;
        let jobs = read_all(&store, 6).await;
        // 0 stays pending; the others finish.
        let done: Vec<Outcome> = jobs[1..]
            .iter()
            .map(|j| outcome(j, 200, Status::Succeeded))
            .collect();
        commit(&store, &done, jobs[0].entry, jobs[5].entry).await;
        let (dropped, _) = store.trim_partition(p(), EntryId::ZERO).await.unwrap();
        assert_eq!(
            dropped, 2,
            "six held, a cap of three: the oldest finished beyond it"
        );
        let kept: Vec<bool> =
            futures::future::join_all(ids.iter().map(|id| store.delivery(WS, id)))
                .await
                .into_iter()
                .map(|d| d.unwrap().is_some())
                .collect();
        assert_eq!(
            kept,
            vec![true, false, false, true, true, true],
            "the pending one stays"
        );
    }
);
