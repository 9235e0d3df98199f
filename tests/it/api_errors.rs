//! Bad input: each refusal is a 4xx with the error body of the contract, and nothing is written.

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Node, Receiver, Redis, prefix, record_event, test_config};

fn assert_error(status: u16, body: &Value, expected_status: u16, field: Option<&str>) {
    assert_eq!(status, expected_status, "{body}");
    let err = &body["error"];
    assert!(
        err["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{body}"
    );
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(f) = field {
        assert_eq!(err["field"], f, "{body}");
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_a_named_field_and_nothing_is_written() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("errors"))).await;
    let api = node.workspace("Errors").await;
    let receiver = Receiver::ok().await;
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    let ep_id = ep["id"].as_str().unwrap();

    // Endpoint URLs: scheme and the SSRF guard (the test node allows only 127.0.0.1/32).
    for url in [
        "http://127.0.0.1:9/hook",
        "https://127.0.0.2/hook",
        "https://10.0.0.1/hook",
        "https://192.168.1.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:10.0.0.1]/hook",
        "https://[::ffff:169.254.169.254]/hook",
        "https://[::1]/hook",
        "https://[fe80::1]/hook",
        "https://100.64.0.1/hook",
        "https://localhost.localhost/hook",
        "not a url",
    ] {
        let (status, body) = api.post("/v1/endpoints", json!({"url": url})).await;
        assert_error(status, &body, 422, Some("url"));
    }
    let (s, b) = api
        .post(
            "/v1/endpoints",
            json!({"url": receiver.url, "retry": {"maxAttempts": 0}}),
        )
        .await;
    assert_error(s, &b, 422, Some("retry.maxAttempts"));
    let (s, b) = api
        .post(
            "/v1/endpoints",
            json!({"url": receiver.url, "headers": {"webhook-signature": "x"}}),
        )
        .await;
    assert_error(s, &b, 422, Some("headers.webhook-signature"));
    let (s, b) = api
        .patch(
            &format!("/v1/endpoints/{ep_id}"),
            json!({"url": "https://10.1.1.1/"}),
        )
        .await;
    assert_error(s, &b, 422, Some("url"));

    // Bad JSON, unknown event family, missing fields.
    let (s, b) = api.post_raw("/v1/events", "{\"event\": ", &[]).await;
    assert_error(s, &b, 400, None);
    let (s, b) = api
        .post("/v1/events", json!({"event": "invoice:paid"}))
        .await;
    assert_error(s, &b, 422, Some("event"));
    let (s, b) = api
        .post("/v1/events", json!({"event": "member:created"}))
        .await;
    assert_error(s, &b, 422, Some("member"));
    let (s, b) = api
        .post(
            "/v1/events/batch",
            json!({"events": [record_event(1, "high"), {"event": "nope:x"}]}),
        )
        .await;
    assert_error(s, &b, 422, Some("events[1].event"));
    let (s, b) = api
        .post_raw("/v1/events", &"x".repeat(300 * 1024), &[])
        .await;
    assert_error(s, &b, 413, None);

    // Rules: unknown condition op, unknown pattern, unknown endpoint.
    let rule = |conditions: Value, events: Value, endpoint: &str| json!({"name": "r", "events": events, "conditions": conditions, "actions": [{"type": "webhook", "endpointId": endpoint}]});
    let (s, b) = api
        .post(
            "/v1/event-rules",
            rule(
                json!({"all": [{"field": "a", "op": "near", "value": 1}]}),
                json!(["member:*"]),
                ep_id,
            ),
        )
        .await;
    assert_error(s, &b, 422, Some("conditions.all[0].op"));
    let (s, b) = api
        .post(
            "/v1/event-rules",
            rule(json!({"all": []}), json!(["invoice:*"]), ep_id),
        )
        .await;
    assert_error(s, &b, 422, Some("events[0]"));
    let (s, b) = api
        .post(
            "/v1/event-rules",
            rule(json!({"all": []}), json!(["member:*"]), "ep_nope"),
        )
        .await;
    assert_error(s, &b, 422, Some("actions[0].endpointId"));

    // Auth: none, a wrong key, the admin token on a workspace route, a key on an admin route.
    let (s, b) = node.api("").get("/v1/endpoints").await;
    assert_error(s, &b, 401, None);
    let (s, b) = node.api("sy_wrong").get("/v1/endpoints").await;
    assert_error(s, &b, 401, None);
    let (s, b) = node.api(ADMIN_TOKEN).get("/v1/endpoints").await;
    assert_error(s, &b, 401, None);
    let (s, b) = api.post("/v1/workspaces", json!({"name": "x"})).await;
    assert_error(s, &b, 401, None);
    let (s, b) = node
        .api(ADMIN_TOKEN)
        .post("/v1/workspaces", json!({"name": ""}))
        .await;
    assert_error(s, &b, 422, Some("name"));

    // Another workspace's objects are not found.
    let other = node.workspace("Other").await;
    let (s, b) = other.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_error(s, &b, 404, None);
    let (s, b) = other
        .patch(&format!("/v1/endpoints/{ep_id}"), json!({"enabled": false}))
        .await;
    assert_error(s, &b, 404, None);
    let (s, b) = other.delete(&format!("/v1/endpoints/{ep_id}")).await;
    assert_error(s, &b, 404, None);
    let (s, b) = other
        .post(
            "/v1/event-rules",
            rule(json!({"all": []}), json!(["*"]), ep_id),
        )
        .await;
    assert_error(s, &b, 422, Some("actions[0].endpointId"));

    // Nothing was written by any refusal.
    let (_, eps) = api.get("/v1/endpoints").await;
    assert_eq!(eps["data"].as_array().unwrap().len(), 1);
    assert_eq!(eps["data"][0]["url"], receiver.url);
    let (_, rules) = api.get("/v1/event-rules").await;
    assert_eq!(rules["data"], json!([]), "{rules}");
    let (_, deliveries) = api.get("/v1/deliveries").await;
    assert_eq!(deliveries["data"], json!([]), "{deliveries}");
    let (_, other_eps) = other.get("/v1/endpoints").await;
    assert_eq!(other_eps["data"], json!([]));
    node.stop().await;
}

#[tokio::test]
async fn lists_page_with_a_cursor_and_idempotency_keys_hold() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("lists"))).await;
    let api = node.workspace("Lists").await;
    let receiver = Receiver::ok().await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(
            api.endpoint(json!({"url": receiver.url})).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    created.reverse();
    let (_, p1) = api.get("/v1/endpoints?limit=2").await;
    let cursor = p1["nextCursor"].as_str().unwrap();
    let (_, p2) = api
        .get(&format!("/v1/endpoints?limit=2&cursor={cursor}"))
        .await;
    let (_, p3) = api
        .get(&format!(
            "/v1/endpoints?limit=2&cursor={}",
            p2["nextCursor"].as_str().unwrap()
        ))
        .await;
    assert!(p3["nextCursor"].is_null());
    let seen: Vec<String> = [p1, p2, p3]
        .iter()
        .flat_map(|p| {
            p["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(seen, created, "newest first, each once");
    let (s, _) = api.get("/v1/endpoints?limit=0").await;
    assert_eq!(s, 400);

    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": created[0]}]})).await;
    let body = record_event(7, "high").to_string();
    let (s1, a1) = api
        .post_raw("/v1/events", &body, &[("Idempotency-Key", "order-7")])
        .await;
    let (s2, a2) = api
        .post_raw("/v1/events", &body, &[("Idempotency-Key", "order-7")])
        .await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a1, a2, "the same key gives the same answer");
    let (_, listed) = api
        .get(&format!(
            "/v1/deliveries?eventId={}",
            a1["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        1,
        "and no new deliveries"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_two_nodes_at_once_gives_one_set_of_deliveries() {
    let redis = Redis::start();
    let key_prefix = prefix("idem2");
    let a = Node::start(test_config(&redis, &key_prefix)).await;
    let b = Node::start(test_config(&redis, &key_prefix)).await;
    let api_a = a.workspace("Two nodes").await;
    let receiver = Receiver::ok().await;
    for _ in 0..3 {
        let ep = api_a.endpoint(json!({"url": receiver.url})).await;
        api_a.rule(json!({"name": "r", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    }
    let key = api_a.token().to_string();
    let api_b = b.api(&key);
    let body = record_event(1, "high").to_string();
    for round in 0..10 {
        let idem = format!("same-{round}");
        let headers = [("Idempotency-Key", idem.as_str())];
        let (ra, rb) = tokio::join!(
            api_a.post_raw("/v1/events", &body, &headers),
            api_b.post_raw("/v1/events", &body, &headers)
        );
        assert_eq!((ra.0, rb.0), (202, 202));
        assert_eq!(ra.1, rb.1, "both nodes give the same answer");
        assert_eq!(ra.1["deliveries"].as_array().unwrap().len(), 3);
    }
    let (_, listed) = api_b.get("/v1/deliveries?limit=1000").await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        30,
        "one set of deliveries per key"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_every_listed_route_exists() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("openapi"))).await;
    let (status, doc) = node.api("").get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let http = reqwest::Client::new();
    let mut n = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            n += 1;
            let url = format!(
                "{}{}",
                node.base,
                path.replace("{id}", "x").replace("{uuid}", "x")
            );
            let req = http
                .request(method.to_uppercase().parse().unwrap(), &url)
                .json(&json!({}));
            let body: Value = req
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null);
            // The router's fallback answers "no such route": no documented route may reach it.
            assert_ne!(
                body["error"]["message"], "no such route",
                "{method} {path} is documented but not routed"
            );
            if let Some(schema) =
                op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
            {
                let name = schema.rsplit('/').next().unwrap();
                assert!(
                    doc["components"]["schemas"][name].is_object(),
                    "{method} {path}: schema {name} missing"
                );
            }
        }
    }
    assert_eq!(
        n,
        switchyard::api::openapi::ROUTES.len(),
        "the router and the document come from one table"
    );
    node.stop().await;
}
