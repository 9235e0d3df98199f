//! The `switchyard` command line: `config check`.

use std::process::Command;

fn config_check(file: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, file).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("SWITCHYARD_ADMIN_TOKEN", "a-token-that-must-not-show")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_names_the_broken_key_and_exits_non_zero() {
    for (file, key) in [
        ("partitions = 0\n", "partitions"),
        ("lease_ms = 100\nheartbeat_ms = 1000\n", "lease_ms"),
        ("listen = \"nowhere\"\n", "listen"),
        ("partitons = 8\n", "partitons"),
        ("log_format = \"xml\"\n", "log_format"),
    ] {
        let (ok, _, err) = config_check(file);
        assert!(!ok, "{file} was accepted");
        assert!(
            err.contains(key),
            "the error for {file:?} does not name {key}: {err}"
        );
    }
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_masked() {
    let (ok, out, err) =
        config_check("partitions = 16\nredis_url = \"redis://:hunter22@127.0.0.1:6379/\"\n");
    assert!(ok, "{err}");
    assert!(out.contains("partitions = 16"));
    assert!(out.contains("admin_token = \"********\""));
    assert!(
        !out.contains("a-token-that-must-not-show") && !out.contains("hunter22"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_and_endpoints_commands_talk_to_a_running_node() {
    use crate::support::{Node, Receiver, Redis, prefix, record_event, test_config, wait_until};
    use serde_json::json;
    let redis = Redis::start();
    let node = Node::start(test_config(&redis, &prefix("cli"))).await;
    let api = node.workspace("CLI").await;
    let receiver = Receiver::ok().await;
    let ep = api
        .endpoint(json!({"url": receiver.url, "description": "crm"}))
        .await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let (_, ev) = api.post("/v1/events", record_event(1, "high")).await;
    let id = ev["deliveries"][0].as_str().unwrap().to_string();
    wait_until(
        std::time::Duration::from_secs(10),
        "the delivery",
        || async { api.delivery_status(&id).await.as_deref() == Some("succeeded") },
    )
    .await;
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .env("SWITCHYARD_URL", &node.base)
            .env("SWITCHYARD_API_KEY", api.token())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, table) = run(&["deliveries", "list"]);
    assert!(
        ok && table.starts_with("id") && table.contains(&id) && table.contains("succeeded"),
        "{table}"
    );
    let (ok, json_out) = run(&["deliveries", "list", "--json", "--status", "succeeded"]);
    assert!(ok);
    let parsed: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(parsed["data"][0]["id"], id.as_str());
    let (ok, shown) = run(&["deliveries", "show", &id]);
    assert!(
        ok && shown.contains("attempt") && shown.contains("200"),
        "{shown}"
    );
    let (ok, eps) = run(&["endpoints", "list"]);
    assert!(
        ok && eps.contains(ep["id"].as_str().unwrap()) && eps.contains("crm"),
        "{eps}"
    );
    let (ok, _) = run(&["deliveries", "retry", &id]);
    assert!(ok);
    wait_until(
        std::time::Duration::from_secs(10),
        "the retried attempt",
        || async { receiver.count() == 2 },
    )
    .await;
    let (ok, _) = run(&["deliveries", "show", "msg_nope"]);
    assert!(!ok, "an unknown delivery is an error");
    node.stop().await;
}
