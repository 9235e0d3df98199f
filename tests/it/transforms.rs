//! Payload transforms: presets and templates shape the body that is signed, sent and logged.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// An endpoint with `transform`, a rule sending `member:created` to it, and its secret.
async fn endpoint_with(api: &Api, url: &str, transform: Value) -> (String, String) {
    let ep = api
        .endpoint(json!({"url": url, "transform": transform}))
        .await;
    api.rule(
        json!({"name": format!("to {}", ep["id"]), "events": ["member:created"],
        "actions": [{"type": "webhook", "endpointId": ep["id"]}]}),
    )
    .await;
    (
        ep["id"].as_str().unwrap().to_string(),
        ep["secret"].as_str().unwrap().to_string(),
    )
}

fn member_event() -> Value {
    json!({"event": "member:created",
        "member": {"id": 42, "name": "Ada Lovelace", "email": "ada@example.com", "labels": ["vip"]}})
}

#[tokio::test]
async fn presets_and_templates_shape_the_signed_body_and_a_failing_render_sends_nothing() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("transform"))).await;
    let api = node.workspace("Acme").await;
    let receiver = Receiver::ok().await;
    let (_, slack_secret) = endpoint_with(
        &api,
        &format!("{}/slack", receiver.url),
        json!({"preset": "slack"}),
    )
    .await;
    let (_, custom_secret) = endpoint_with(
        &api,
        &format!("{}/custom", receiver.url),
        json!({"template": "{\"contact\": {\"name\": {{ member.name|tojson }}, \"vip\": {{ ('vip' in member.labels)|tojson }}}, \"source\": {{ workspace.name|tojson }}}"}),
    )
    .await;
    // Defined for members, not for this event: no `dataRecord`.
    endpoint_with(
        &api,
        &format!("{}/broken", receiver.url),
        json!({"template": "{\"record\": {{ dataRecord.id }}}"}),
    )
    .await;

    let (status, answer) = api.post("/v1/events", member_event()).await;
    assert_eq!(status, 202, "{answer}");
    let ids: Vec<String> = answer["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    wait_until(Duration::from_secs(10), "every delivery to finish", || {
        let api = api.clone();
        let ids = ids.clone();
        async move {
            for id in &ids {
                let s = api.delivery_status(id).await;
                if !matches!(s.as_deref(), Some("succeeded" | "failed")) {
                    return false;
                }
            }
            true
        }
    })
    .await;

    let got = receiver.received();
    let at = |path: &str| got.iter().find(|r| r.path.ends_with(path)).cloned();
    let slack = at("/slack").expect("the Slack endpoint got its webhook");
    let text = slack.json()["text"].as_str().unwrap().to_string();
    assert!(
        text.contains("member:created") && text.contains("Ada Lovelace"),
        "{text}"
    );
    assert_eq!(
        slack.json().as_object().unwrap().len(),
        1,
        "only `text`: {}",
        slack.json()
    );
    verify_received(&slack_secret, &slack).expect("signed over the transformed bytes");

    let custom = at("/custom").expect("the templated endpoint got its webhook");
    assert_eq!(
        custom.json(),
        json!({"contact": {"name": "Ada Lovelace", "vip": true}, "source": "Acme"})
    );
    verify_received(&custom_secret, &custom).expect("signed over the rendered bytes");

    assert!(at("/broken").is_none(), "a failed render sends nothing");
    let mut failed = None;
    for id in &ids {
        let (_, d) = api.get(&format!("/v1/deliveries/{id}")).await;
        if d["status"] == "failed" {
            failed = Some(d);
        }
    }
    let failed = failed.expect("the broken template's delivery failed");
    let attempts = failed["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "not retried: {failed}");
    assert_eq!(attempts[0]["error"]["kind"], "template", "{failed}");
    assert!(
        attempts[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("undefined"),
        "{failed}"
    );
    // The logged body of a sent delivery is the transformed one.
    let sent_id = slack.header("webhook-id").to_string();
    let (_, d) = api.get(&format!("/v1/deliveries/{sent_id}")).await;
    assert_eq!(d["payload"], slack.json(), "{d}");
    node.stop().await;
}

#[tokio::test]
async fn bad_transforms_are_422s_naming_the_field_and_preview_renders() {
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("transform422"))).await;
    let api = node.workspace("Acme").await;
    for (transform, field) in [
        (
            json!({"template": "{\n  \"a\": {{ member.name "}),
            "transform.template",
        ),
        (json!({"preset": "teams"}), "transform.preset"),
        (
            json!({"preset": "slack", "text": "{% for %}"}),
            "transform.text",
        ),
        (json!({"preset": "slack", "template": "{}"}), "transform"),
    ] {
        let (status, body) = api
            .post(
                "/v1/endpoints",
                json!({"url": "https://example.com/hook", "transform": transform}),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (_, body) = api
        .post(
            "/v1/endpoints",
            json!({"url": "https://example.com/hook", "transform": {"template": "{\n{{ x "}}),
        )
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );
    let (_, list) = api.get("/v1/endpoints").await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "nothing was written"
    );

    let (status, preview) = api
        .post(
            "/v1/transforms/preview",
            json!({"transform": {"preset": "discord", "text": "{{ member.name }} joined {{ workspace.name }}"},
                "event": member_event()}),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        preview["body"],
        json!({"content": "Ada Lovelace joined Acme"})
    );
    let (status, preview) = api
        .post(
            "/v1/transforms/preview",
            json!({"transform": {"template": "{{ call.id }}"}, "event": member_event()}),
        )
        .await;
    assert_eq!(status, 422, "{preview}");
    assert_eq!(preview["error"]["field"], "transform.template");
    let (status, preview) = api
        .post(
            "/v1/transforms/preview",
            json!({"transform": {"preset": "slack"}, "event": {"event": "nope"}}),
        )
        .await;
    assert_eq!(status, 422, "{preview}");
    assert_eq!(preview["error"]["field"], "event.event", "{preview}");
    node.stop().await;
}
