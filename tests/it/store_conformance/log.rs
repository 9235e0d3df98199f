//! Conformance of the delivery log: the dead letter and replay, pages of deliveries and
//! events, an event found by id.

use super::*;

conformance!(
    failed_deliveries_go_to_the_dead_letter_and_replay_once_in_order,
    |store: Store| async move {
        let ids = ingest(&store, &[event(4)]).await;
        let jobs = read_all(&store, 4).await;
        let since = chrono::Utc::now().timestamp_millis() - 1;
        // Fail them in reverse, one commit each: replay must still follow ingest order.
        for job in jobs.iter().rev() {
            commit(
                &store,
                &[outcome(job, 500, Status::Failed)],
                jobs[0].entry,
                jobs[3].entry,
            )
            .await;
        }
        assert_eq!(store.counts(WS, EP).await.unwrap().failed, 4);
        assert_eq!(store.replay(WS, EP, since, None).await.unwrap(), 4);
        assert_eq!(
            store.replay(WS, EP, since, None).await.unwrap(),
            0,
            "requeued once"
        );
        let done = jobs[3].entry.next();
        let checkpoint = Checkpoint {
            done_below: done,
            read_upto: jobs[3].entry,
        };
        store.commit(p(), None, &[], checkpoint).await.unwrap();
        let again = read_all(&store, 4).await;
        let replayed: Vec<String> = again.iter().map(|j| j.id.to_string()).collect();
        assert_eq!(replayed, ids, "the same deliveries, in ingest order");
        assert!(
            again
                .iter()
                .all(|j| j.progress.status == Status::Pending && j.progress.attempts == 1)
        );
        assert!(again.iter().all(|j| !j.manual));
        let view = store.delivery(WS, &ids[0]).await.unwrap().unwrap();
        assert_eq!(
            (view.delivery.status, view.attempts.len()),
            (Status::Pending, 1)
        );
        assert_eq!(store.counts(WS, EP).await.unwrap().failed, 0);
        let later = chrono::Utc::now().timestamp_millis() + 1000;
        assert_eq!(store.replay(WS, EP, later, None).await.unwrap(), 0);
        // A manual retry of a finished delivery: once, marked manual.
        commit(
            &store,
            &[outcome(&again[0], 200, Status::Succeeded)],
            again[1].entry,
            again[3].entry,
        )
        .await;
        let id = again[0].id;
        assert!(
            store
                .requeue(WS, id, &[Status::Failed, Status::Succeeded], true)
                .await
                .unwrap()
        );
        assert!(
            !store
                .requeue(WS, id, &[Status::Failed, Status::Succeeded], true)
                .await
                .unwrap()
        );
        assert!(
            !store
                .requeue("another-ws", again[1].id, &[Status::Failed], true)
                .await
                .unwrap()
        );
    }
);

conformance!(
    a_request_with_many_deliveries_is_written_whole_and_listed_in_pages,
    |store: Store| async move {
        let ids = ingest(&store, &[event(600), event(600)]).await;
        assert_eq!(ids.len(), 1200);
        let mut listed = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .list_deliveries(WS, &DeliveryFilter::default(), 1000, cursor.as_deref())
                .await
                .unwrap();
            listed.extend(page.data.into_iter().map(|d| d.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        listed.reverse();
        assert_eq!(listed, ids, "every delivery once, newest first");
        let jobs = read_all(&store, 1200).await;
        let read: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        assert_eq!(read, ids, "every job once, in ingest order");
    }
);

conformance!(
    requests_of_many_events_are_listed_in_small_pages_and_found_by_id,
    |store: Store| async move {
        // Two requests, events with 0, 1 and 2 deliveries: pages of 3 cut through events
        // and through requests.
        let first: Vec<NewEvent> = [2, 0, 1, 2, 1].into_iter().map(event).collect();
        let second: Vec<NewEvent> = [1, 2, 0, 1].into_iter().map(event).collect();
        let mut ids = ingest(&store, &first).await;
        ids.extend(ingest(&store, &second).await);
        assert_eq!(ids.len(), 10);
        let mut listed = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..20 {
            let page = store
                .list_deliveries(WS, &DeliveryFilter::default(), 3, cursor.as_deref())
                .await
                .unwrap();
            assert!(page.data.len() <= 3);
            listed.extend(page.data.into_iter().map(|d| d.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        listed.reverse();
        assert_eq!(
            listed, ids,
            "every delivery once, newest first, across pages"
        );
        for e in first.iter().chain(&second) {
            let filter = DeliveryFilter {
                event_id: Some(e.id.clone()),
                ..Default::default()
            };
            let page = store.list_deliveries(WS, &filter, 10, None).await.unwrap();
            assert_eq!(
                page.data.len(),
                e.deliveries.len(),
                "the deliveries of {}",
                e.id
            );
            assert!(page.data.iter().all(|d| d.event_id == e.id));
        }
        let events = store.events_before(WS, None, None, 100).await.unwrap();
        let logged: Vec<&str> = events.iter().map(|e| e.record.v.as_str()).collect();
        let mut sent: Vec<&str> = first.iter().chain(&second).map(|e| e.id.as_str()).collect();
        sent.reverse();
        assert_eq!(logged, sent, "the event log, newest first");
        let older = store
            .events_before(WS, Some(events[3].entry), None, 2)
            .await
            .unwrap();
        assert_eq!(
            older
                .iter()
                .map(|e| e.record.v.as_str())
                .collect::<Vec<_>>(),
            sent[4..6].to_vec(),
            "before a position inside a request"
        );
        let quiet = &second[2];
        let found = store.find_event(WS, &quiet.id).await.unwrap().unwrap();
        assert_eq!(found.record.b.as_deref(), Some("{\"no\":\"rule\"}"));
    }
);
