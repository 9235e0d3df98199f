//! The API a platform builds on: the event log, the event-type catalogue, test sends, secrets
//! kept out of reads, endpoint health in lists, and the admin's workspaces and API keys
//! (revocation seen at once by a second node).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, Node, Receiver, Redis, Reply, prefix, record_event, test_config, verify_received,
    wait_until,
};

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_event_log_lists_newest_first_filters_pages_and_shows_an_event_with_its_deliveries() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("eventlog"))).await;
    let api = node.workspace("Log").await;
    let other = node.workspace("Other").await;
    let receiver = Receiver::ok().await;
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    let ep_id = ep["id"].as_str().unwrap();
    api.rule(json!({"name": "records", "events": ["data_record:*"], "actions": [{"type": "webhook", "endpointId": ep_id}]}))
        .await;
    let mut sent = Vec::new();
    for n in 0..5 {
        let (s, a) = api.post("/v1/events", record_event(n, "high")).await;
        assert_eq!(s, 202, "{a}");
        sent.push(a["id"].as_str().unwrap().to_string());
        let (s, a) = api
            .post(
                "/v1/events",
                json!({"event": "member:updated", "member": {"id": n}}),
            )
            .await;
        assert_eq!(s, 202, "{a}");
        sent.push(a["id"].as_str().unwrap().to_string());
    }
    let (status, page) = api.get("/v1/events").await;
    assert_eq!(status, 200, "{page}");
    let newest_first: Vec<String> = sent.iter().rev().cloned().collect();
    assert_eq!(ids(&page), newest_first);
    assert_eq!(page["data"][0]["type"], "member:updated");
    assert_eq!(page["data"][0]["deliveries"], 0, "no rule matched it");
    assert_eq!(page["data"][1]["deliveries"], 1);

    let (_, records) = api.get("/v1/events?type=data_record:created").await;
    assert_eq!(records["data"].as_array().unwrap().len(), 5);
    assert!(
        records["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] == "data_record:created")
    );

    // Pages of 3 walk the whole log once, in order.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/events?limit=3&cursor={c}"),
            None => "/v1/events?limit=3".to_string(),
        };
        let (s, page) = api.get(&path).await;
        assert_eq!(s, 200, "{page}");
        walked.extend(ids(&page));
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(walked, newest_first);

    // A window: `since` the sixth event's time leaves the newest ones.
    let (_, all) = api.get("/v1/events?limit=1000").await;
    let since = all["data"][2]["createdAt"].as_str().unwrap();
    let (_, recent) = api
        .get(&format!("/v1/events?since={}", since.replace('+', "%2B")))
        .await;
    assert!(ids(&recent).contains(&sent[7]) && !ids(&recent).contains(&sent[0]));

    let (status, shown) = api.get(&format!("/v1/events/{}", sent[0])).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["type"], "data_record:created");
    assert_eq!(
        shown["payload"],
        record_event(0, "high"),
        "the event as received, without the blocks Switchyard adds"
    );
    assert_eq!(shown["deliveries"][0]["endpointId"], ep_id);
    assert!(shown["deliveries"][0]["status"].is_string());
    let (_, unmatched) = api.get(&format!("/v1/events/{}", sent[1])).await;
    assert_eq!(unmatched["payload"]["member"]["id"], 0);
    assert_eq!(unmatched["deliveries"], json!([]));

    let (status, _) = other.get(&format!("/v1/events/{}", sent[0])).await;
    assert_eq!(status, 404, "another workspace's event is not found");
    let (_, theirs) = other.get("/v1/events").await;
    assert_eq!(theirs["data"], json!([]));
    let (status, bad) = api.get("/v1/events?cursor=nope").await;
    assert_eq!(
        (status, bad["error"]["field"].as_str()),
        (400, Some("cursor"))
    );
    let (status, bad) = api.get("/v1/events?until=yesterday").await;
    assert_eq!(
        (status, bad["error"]["field"].as_str()),
        (400, Some("until"))
    );
    node.stop().await;
}

#[tokio::test]
async fn the_catalogue_has_every_type_and_a_test_send_delivers_its_example_signed_and_marked() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("testsend"))).await;
    let api = node.workspace("Test sends").await;
    let other = node.workspace("Other").await;
    let (status, types) = api.get("/v1/event-types").await;
    assert_eq!(status, 200, "{types}");
    let names: Vec<&str> = types["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in switchyard::event::EVENT_TYPES
        .iter()
        .chain(switchyard::event::SYSTEM_EVENT_TYPES)
    {
        assert!(names.contains(t), "{t} is in the catalogue");
    }
    let member = types["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "member:created")
        .unwrap();
    assert_eq!(member["family"], "member");
    assert_eq!(member["schema"]["required"], json!(["event", "member"]));
    // The example is accepted as it is by the events API.
    let (status, _) = api.post("/v1/events", member["example"].clone()).await;
    assert_eq!(status, 202);

    let receiver = Receiver::ok().await;
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    let ep_id = ep["id"].as_str().unwrap();
    let (status, sent) = api
        .post(
            &format!("/v1/endpoints/{ep_id}/test"),
            json!({"eventType": "member:created"}),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let delivery = sent["deliveryId"].as_str().unwrap();
    wait_until(Duration::from_secs(10), "the test webhook", || async {
        receiver.count() == 1
    })
    .await;
    let got = &receiver.received()[0];
    assert_eq!(got.header("webhook-id"), delivery);
    verify_received(ep["secret"].as_str().unwrap(), got).expect("signed with the secret");
    let body = got.json();
    assert_eq!(body["event"], "member:created");
    assert_eq!(body["member"], member["example"]["member"]);
    assert_eq!(body["eventRule"]["id"], 0);
    wait_until(
        Duration::from_secs(10),
        "the test delivery to succeed",
        || async { api.delivery_status(delivery).await.as_deref() == Some("succeeded") },
    )
    .await;
    let (_, shown) = api.get(&format!("/v1/deliveries/{delivery}")).await;
    assert_eq!(shown["test"], true, "{shown}");
    assert_eq!(shown["attempts"][0]["response"]["status"], 200);
    let (_, listed) = api.get("/v1/deliveries?eventType=member:created").await;
    assert_eq!(ids(&listed), vec![delivery.to_string()]);
    let (_, none) = api.get("/v1/deliveries?eventType=call:started").await;
    assert_eq!(none["data"], json!([]));
    let (_, event) = api
        .get(&format!("/v1/events/{}", sent["eventId"].as_str().unwrap()))
        .await;
    assert_eq!(event["deliveries"][0]["test"], true);

    // Without a body: the default type.
    let (status, default) = api
        .post_raw(&format!("/v1/endpoints/{ep_id}/test"), "", &[])
        .await;
    assert_eq!(status, 202, "{default}");
    assert_eq!(default["eventType"], "data_record:created");
    let (status, bad) = api
        .post(
            &format!("/v1/endpoints/{ep_id}/test"),
            json!({"eventType": "invoice:paid"}),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["field"].as_str()),
        (422, Some("eventType"))
    );
    let (status, _) = other
        .post(&format!("/v1/endpoints/{ep_id}/test"), json!({}))
        .await;
    assert_eq!(status, 404, "another workspace's endpoint");
    let (status, _) = other.get(&format!("/v1/endpoints/{ep_id}/secret")).await;
    assert_eq!(status, 404, "another workspace's secret");
    node.stop().await;
}

#[tokio::test]
async fn endpoint_lists_carry_health_and_no_secret() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("health"))).await;
    let api = node.workspace("Health").await;
    // The first attempt fails, the retry succeeds.
    let receiver = Receiver::start(|_, i| Reply::status(if i == 0 { 500 } else { 200 })).await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 3, "initialDelayMs": 10, "maxDelayMs": 10}}))
        .await;
    let ep_id = ep["id"].as_str().unwrap();
    let secret = ep["secret"].as_str().unwrap().to_string();
    api.rule(json!({"name": "r", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep_id}]}))
        .await;
    let (_, a) = api.post("/v1/events", record_event(1, "high")).await;
    let delivery = a["deliveries"][0].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the retry to succeed", || async {
        api.delivery_status(&delivery).await.as_deref() == Some("succeeded")
    })
    .await;
    // Health is saved by the endpoint's owner after the outcome it follows.
    wait_until(
        Duration::from_secs(10),
        "the success in the health",
        || async {
            let (_, listed) = api.get("/v1/endpoints").await;
            listed["data"][0]["health"]["lastSuccessAt"].is_string()
        },
    )
    .await;
    let (status, listed) = api.get("/v1/endpoints").await;
    assert_eq!(status, 200, "{listed}");
    assert!(!listed.to_string().contains(&secret), "no secret in a list");
    let health = &listed["data"][0]["health"];
    assert_eq!(health["breaker"]["state"], "closed", "{health}");
    assert!(health["lastErrorAt"].is_string(), "{health}");
    assert!(health["lastSuccessAt"].is_string(), "{health}");
    assert_eq!(health["attempts1h"], 2);
    assert_eq!(health["successRate1h"], 0.5);
    assert_eq!(health["deliveries"]["succeeded"], 1);
    let (_, one) = api.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(one["health"], *health, "the list shows what the read shows");
    assert!(!one.to_string().contains(&secret));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_at_once_by_a_second_node_and_keys_are_listed_without_secrets() {
    let redis = Redis::start();
    let key_prefix = prefix("revoke");
    let a = Node::start(test_config(&redis, &key_prefix)).await;
    let b = Node::start(test_config(&redis, &key_prefix)).await;
    let admin = a.api(ADMIN_TOKEN);
    let (_, ws) = admin.post("/v1/workspaces", json!({"name": "Keys"})).await;
    let uuid = ws["uuid"].as_str().unwrap();
    let first = ws["apiKey"].as_str().unwrap().to_string();
    let (status, second) = admin
        .post(&format!("/v1/workspaces/{uuid}/api-keys"), json!({}))
        .await;
    assert_eq!(status, 201, "{second}");
    let second_key = second["apiKey"].as_str().unwrap().to_string();
    let second_id = second["id"].as_str().unwrap().to_string();

    // Node B checks the key once and trusts it for a while after.
    assert_eq!(b.api(&second_key).get("/v1/endpoints").await.0, 200);
    assert_eq!(b.api(&second_key).get("/v1/endpoints").await.0, 200);
    let (status, keys) = admin.get(&format!("/v1/workspaces/{uuid}/api-keys")).await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys["data"].as_array().unwrap().len(), 2);
    assert!(
        !keys.to_string().contains(&first) && !keys.to_string().contains(&second_key),
        "never a key: {keys}"
    );
    let listed = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == second_id.as_str())
        .unwrap();
    assert!(second_key.starts_with(listed["prefix"].as_str().unwrap()));
    wait_until(Duration::from_secs(5), "the key's last use", || async {
        let (_, keys) = admin.get(&format!("/v1/workspaces/{uuid}/api-keys")).await;
        keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == second_id.as_str() && k["lastUsedAt"].is_string())
    })
    .await;

    let (status, _) = admin
        .delete(&format!("/v1/workspaces/{uuid}/api-keys/{second_id}"))
        .await;
    assert_eq!(status, 204);
    let (status, refused) = b.api(&second_key).get("/v1/endpoints").await;
    assert_eq!(
        status, 401,
        "node B refuses the revoked key at once: {refused}"
    );
    assert_eq!(a.api(&second_key).get("/v1/endpoints").await.0, 401);
    assert_eq!(
        b.api(&first).get("/v1/endpoints").await.0,
        200,
        "the other key works"
    );
    let (status, _) = admin
        .delete(&format!("/v1/workspaces/{uuid}/api-keys/{second_id}"))
        .await;
    assert_eq!(status, 404, "revoked once");
    let (_, other) = admin.post("/v1/workspaces", json!({"name": "Other"})).await;
    let (_, other_keys) = admin
        .get(&format!(
            "/v1/workspaces/{}/api-keys",
            other["uuid"].as_str().unwrap()
        ))
        .await;
    let other_id = other_keys["data"][0]["id"].as_str().unwrap();
    let (status, _) = admin
        .delete(&format!("/v1/workspaces/{uuid}/api-keys/{other_id}"))
        .await;
    assert_eq!(status, 404, "a key of another workspace");
    assert_eq!(
        a.api(other["apiKey"].as_str().unwrap())
            .get("/v1/endpoints")
            .await
            .0,
        200
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_workspace_removes_everything_of_it_and_stops_its_deliveries() {
    let redis = Redis::start();
    let key_prefix = prefix("wsdelete");
    let a = Node::start(test_config(&redis, &key_prefix)).await;
    let b = Node::start(test_config(&redis, &key_prefix)).await;
    let admin = a.api(ADMIN_TOKEN);
    let api = a.workspace("Doomed").await;
    let keep = a.workspace("Kept").await;
    let (_, listed) = admin.get("/v1/workspaces").await;
    let all: Vec<Value> = listed["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["name"], "Kept", "newest first");
    let uuid = all[1]["uuid"].as_str().unwrap().to_string();
    let (status, one) = admin.get(&format!("/v1/workspaces/{uuid}")).await;
    assert_eq!((status, one["name"].as_str()), (200, Some("Doomed")));

    // One delivery a second: most of the ten are still queued when the workspace goes.
    let receiver = Receiver::ok().await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "rateLimit": {"perSecond": 1, "burst": 1}}))
        .await;
    api.rule(json!({"name": "r", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]}))
        .await;
    let deliveries = api
        .batch_deliveries((0..10).map(|n| record_event(n, "high")).collect())
        .await;
    wait_until(Duration::from_secs(10), "the first arrival", || async {
        receiver.count() >= 1
    })
    .await;
    assert_eq!(b.api(api.token()).get("/v1/endpoints").await.0, 200);
    assert!(
        count_fields(&redis, &key_prefix, &uuid) > 0,
        "its counts exist"
    );
    let (status, _) = admin.delete(&format!("/v1/workspaces/{uuid}")).await;
    assert_eq!(status, 204);
    assert_eq!(
        b.api(api.token()).get("/v1/endpoints").await.0,
        401,
        "its key, on the other node too"
    );
    assert_eq!(admin.get(&format!("/v1/workspaces/{uuid}")).await.0, 404);
    assert_eq!(admin.delete(&format!("/v1/workspaces/{uuid}")).await.0, 404);
    assert_eq!(
        keep.get("/v1/endpoints").await.0,
        200,
        "the other workspace is untouched"
    );

    // Its queued deliveries end without being sent: every one reaches a final state.
    let store = switchyard::store::Store::open(&test_config(&redis, &key_prefix))
        .await
        .unwrap();
    let ids: Vec<switchyard::delivery::DeliveryId> =
        deliveries.iter().map(|d| d.parse().unwrap()).collect();
    wait_until(Duration::from_secs(15), "every delivery to end", || async {
        store.states(&ids).await.unwrap().iter().all(|s| {
            s.as_deref()
                .and_then(|s| switchyard::store::record::decode_progress(s).ok())
                .is_some_and(|p| p.status.is_final())
        })
    })
    .await;
    assert!(
        receiver.count() < deliveries.len(),
        "the queued ones were not sent ({} of {})",
        receiver.count(),
        deliveries.len()
    );
    // Nothing of it is left in its slot but what expires by itself.
    let left: Vec<String> =
        redis.cmd(redis::cmd("KEYS").arg(format!("{key_prefix}:ws:{{{uuid}}}*")));
    assert!(
        left.iter()
            .all(|k| k.contains(":idem:") || k.contains(":tick:")),
        "{left:?}"
    );
    // Nor in the partitions' counts, once its queued deliveries have settled.
    assert_eq!(count_fields(&redis, &key_prefix, &uuid), 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn on_the_embedded_store_keys_are_listed_revoked_and_a_deleted_workspace_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(crate::support::embedded_config(dir.path())).await;
    let admin = node.api(ADMIN_TOKEN);
    let api = node.workspace("Embedded").await;
    let (_, ws) = admin.get("/v1/workspaces").await;
    let uuid = ws["data"][0]["uuid"].as_str().unwrap().to_string();
    let (_, extra) = admin
        .post(&format!("/v1/workspaces/{uuid}/api-keys"), json!({}))
        .await;
    let extra_key = extra["apiKey"].as_str().unwrap();
    assert_eq!(node.api(extra_key).get("/v1/endpoints").await.0, 200);
    let (_, keys) = admin.get(&format!("/v1/workspaces/{uuid}/api-keys")).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 2);
    assert_eq!(keys["data"][0]["id"], extra["id"], "newest first");
    let (status, _) = admin
        .delete(&format!(
            "/v1/workspaces/{uuid}/api-keys/{}",
            extra["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 204);
    assert_eq!(node.api(extra_key).get("/v1/endpoints").await.0, 401);
    assert_eq!(api.get("/v1/endpoints").await.0, 200);
    api.post("/v1/events", record_event(1, "high")).await;
    assert_eq!(admin.delete(&format!("/v1/workspaces/{uuid}")).await.0, 204);
    assert_eq!(api.get("/v1/events").await.0, 401);
    let (_, ws) = admin.get("/v1/workspaces").await;
    assert_eq!(ws["data"], json!([]));
    assert_eq!(
        admin
            .get(&format!("/v1/workspaces/{uuid}/api-keys"))
            .await
            .0,
        404
    );
    node.stop().await;
}

/// The count fields of workspace `ws` in every partition's counts.
fn count_fields(redis: &Redis, key_prefix: &str, ws: &str) -> usize {
    let keys: Vec<String> = redis.cmd(redis::cmd("KEYS").arg(format!("{key_prefix}:{{p*}}:n")));
    keys.iter()
        .map(|key| {
            let fields: Vec<String> = redis.cmd(redis::cmd("HKEYS").arg(key));
            fields.iter().filter(|f| f.starts_with(ws)).count()
        })
        .sum()
}
