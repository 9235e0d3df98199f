//! The API's edge, probed as an attacker and as a new user would: sizes, slow clients,
//! connection floods, cursors, error bodies, SSRF encodings, custom headers; and in
//! [`operator`], what an operator meets next: idempotency, deletes, manual retries, metrics
//! and logs.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::NodeProcess;
use crate::support::{
    ADMIN_TOKEN, Api, Node, Receiver, Redis, Reply, embedded_config, prefix, record_event,
    test_config, wait_until,
};

fn assert_error(status: u16, body: &Value, expected: u16, code: &str, field: Option<&str>) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    if let Some(f) = field {
        assert_eq!(body["error"]["field"], f, "{body}");
    }
}

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// Writes `request` on a new connection and reads until the server closes it (or `wait`).
/// Returns what was read and how long until the close (`None`: still open after `wait`).
async fn exchange(base: &str, request: &[u8], wait: Duration) -> (String, Option<Duration>) {
    let mut s = TcpStream::connect(addr(base)).await.unwrap();
    s.write_all(request).await.unwrap();
    read_to_close(&mut s, wait).await
}

async fn read_to_close(s: &mut TcpStream, wait: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = wait.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).into(), Some(start.elapsed()));
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
        }
    }
}

/// The JSON body of a raw HTTP/1.1 response.
fn body_of(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not a JSON body: {response:?}"))
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

#[tokio::test]
async fn slow_and_flooding_clients_are_cut_off_and_cannot_starve_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(switchyard::config::Config {
        header_read_timeout_secs: 1,
        body_timeout_secs: 2,
        max_connections: 8,
        ..embedded_config(dir.path())
    })
    .await;
    let api = node.workspace("Edge").await;
    let key = api.token().to_string();

    // Partial headers: the connection is closed after the header timeout.
    let (_, closed) = exchange(
        &node.base,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(6),
    )
    .await;
    let closed = closed.expect("a client with partial headers is cut off");
    assert!(closed < Duration::from_secs(4), "{closed:?}");

    // Content-Length far over the limit with 7 bytes sent: 413 at once, not after the body.
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{\"a\":1}}"
    );
    let started = Instant::now();
    let (response, _) = exchange(&node.base, request.as_bytes(), Duration::from_secs(6)).await;
    assert_eq!(status_of(&response), 413, "{response}");
    assert_eq!(body_of(&response)["error"]["code"], "payload_too_large");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered before the body timeout"
    );

    // A body trickled one byte every 300 ms: 408 after the body timeout.
    let mut s = TcpStream::connect(addr(&node.base)).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut got = Vec::new();
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(8), rd.read_to_end(&mut got)).await;
    trickle.abort();
    let response = String::from_utf8_lossy(&got).to_string();
    assert_eq!(status_of(&response), 408, "{response}");
    assert_eq!(body_of(&response)["error"]["code"], "body_timeout");
    assert!(started.elapsed() < Duration::from_secs(6));

    // More idle connections than max_connections: the surplus one is refused at once with the
    // error body, and once the idle ones time out the node answers again.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(addr(&node.base)).await.unwrap());
    }
    let (response, closed) = exchange(
        &node.base,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(closed.is_some(), "the surplus connection is closed at once");
    assert_eq!(status_of(&response), 503, "{response}");
    assert_eq!(body_of(&response)["error"]["code"], "too_many_connections");
    wait_until(
        Duration::from_secs(10),
        "the idle connections to time out and /healthz to answer",
        || async { node.api("").try_get("/healthz").await == Some(200) },
    )
    .await;
    drop(idle);
    node.stop().await;
}

#[tokio::test]
async fn refusals_of_any_kind_carry_the_error_body_and_bad_cursors_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(embedded_config(dir.path())).await;
    let api = node.workspace("Errors").await;

    // 405: a known route, the wrong method.
    let (s, b) = api.delete("/v1/events").await;
    assert_error(s, &b, 405, "method_not_allowed", None);
    // 414: a URI longer than the API reads.
    let long = format!("/v1/deliveries?eventId={}", "x".repeat(10_000));
    let (s, b) = api.get(&long).await;
    assert_error(s, &b, 414, "uri_too_long", None);

    // Bad cursors: garbage, and well-formed base64 of something that is no cursor.
    for list in ["/v1/deliveries", "/v1/endpoints", "/v1/event-rules"] {
        for cursor in ["garbage", "YWJj"] {
            let (s, b) = api.get(&format!("{list}?cursor={cursor}")).await;
            assert_error(s, &b, 400, "invalid_query", Some("cursor"));
        }
    }
    // A cursor of one list is not a cursor of another.
    let receiver = Receiver::ok().await;
    for _ in 0..2 {
        api.endpoint(json!({"url": receiver.url})).await;
    }
    let (_, page) = api.get("/v1/endpoints?limit=1").await;
    let cursor = page["nextCursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (s, _) = api
        .get(&format!("/v1/endpoints?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(s, 200);
    let (s, b) = api.get(&format!("/v1/event-rules?cursor={cursor}")).await;
    assert_error(s, &b, 400, "invalid_query", Some("cursor"));
    node.stop().await;
}

#[tokio::test]
async fn each_event_of_a_batch_is_held_to_the_payload_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(embedded_config(dir.path())).await;
    let api = node.workspace("Batch").await;
    let receiver = Receiver::ok().await;
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let mut big = record_event(1, "high");
    big["dataRecord"]["fields"]["blob"] = json!("x".repeat(300 * 1024));
    let (s, b) = api
        .post(
            "/v1/events/batch",
            json!({"events": [record_event(0, "low"), big]}),
        )
        .await;
    assert_error(s, &b, 413, "payload_too_large", Some("events[1]"));
    let (_, listed) = api.get("/v1/deliveries").await;
    assert_eq!(listed["data"], json!([]), "nothing was written");
    node.stop().await;
}

/// The node as a process: the soft open-file limit is raised to the hard one, and a 12 MiB
/// batch that is refused costs memory in proportion to its size, not 100 times it.
#[tokio::test]
async fn a_node_raises_its_open_file_limit_and_a_huge_batch_costs_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let hard = soft_and_hard_nofile(std::process::id()).1;
    let env = vec![
        (
            "SWITCHYARD_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        (
            "SWITCHYARD_ADMIN_TOKEN".to_string(),
            ADMIN_TOKEN.to_string(),
        ),
    ];
    let node = NodeProcess::start_limited(env, dir.path(), Some(256)).await;
    let (soft, node_hard) = soft_and_hard_nofile(node.pid());
    assert_eq!(node_hard, hard);
    assert_eq!(
        soft, hard,
        "the soft limit (256 at start) is raised to the hard one"
    );

    let admin = Api::new(&node.base, ADMIN_TOKEN);
    let (_, ws) = admin.post("/v1/workspaces", json!({"name": "Mem"})).await;
    let api = Api::new(&node.base, ws["apiKey"].as_str().unwrap());
    let before = vm_hwm_kib(node.pid());
    let zeros = vec!["0"; 6 * 1024 * 1024].join(",");
    let body = format!(
        "{{\"events\":[{{\"event\":\"member:created\",\"member\":{{\"id\":1}},\"a\":[{zeros}]}}]}}"
    );
    assert!(body.len() > 12 * 1024 * 1024);
    let (s, b) = api.post_raw("/v1/events/batch", &body, &[]).await;
    assert_error(s, &b, 413, "payload_too_large", Some("events[0]"));
    let grew_mib = (vm_hwm_kib(node.pid()) - before) / 1024;
    assert!(
        grew_mib < 150,
        "a refused 12 MiB batch raised peak RSS by {grew_mib} MiB"
    );
}

fn soft_and_hard_nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn vm_hwm_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// IPv4 inside IPv6 in its deprecated forms, and the newer special-purpose ranges, are refused
/// at save on both stores.
#[tokio::test]
async fn the_ssrf_guard_refuses_every_special_purpose_encoding_on_both_stores() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    for config in [
        test_config(&redis, &prefix("ssrf")),
        embedded_config(dir.path()),
    ] {
        let node = Node::start(config).await;
        let api = node.workspace("Ssrf").await;
        for host in [
            "[::127.0.0.1]",
            "[::7f00:1]",
            "[::ffff:0:7f00:1]",
            "[::a00:1]",
            "[3fff::1]",
            "[5f00::1]",
            "[2001:2::1]",
            "[64:ff9b::7f00:1]",
            "192.0.0.9",
            "192.31.196.1",
        ] {
            let (s, b) = api
                .post(
                    "/v1/endpoints",
                    json!({"url": format!("https://{host}/hook")}),
                )
                .await;
            assert_error(s, &b, 422, "forbidden_destination", Some("url"));
        }
        let (_, listed) = api.get("/v1/endpoints").await;
        assert_eq!(listed["data"], json!([]), "nothing was saved");
        node.stop().await;
    }
}

#[tokio::test]
async fn custom_headers_are_bounded_and_urls_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(embedded_config(dir.path())).await;
    let api = node.workspace("Headers").await;
    let receiver = Receiver::ok().await;
    for name in [
        "Keep-Alive",
        "Proxy-Authorization",
        "TE",
        "Upgrade",
        "Expect",
        "Content-Encoding",
    ] {
        let (s, b) = api
            .post(
                "/v1/endpoints",
                json!({"url": receiver.url, "headers": {name: "x"}}),
            )
            .await;
        assert_error(
            s,
            &b,
            422,
            "invalid_field",
            Some(&format!("headers.{name}")),
        );
    }
    let (s, b) = api
        .post(
            "/v1/endpoints",
            json!({"url": receiver.url, "headers": {"X-A": "1", "x-a": "2"}}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    let many: serde_json::Map<String, Value> =
        (0..1000).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    let (s, b) = api
        .post(
            "/v1/endpoints",
            json!({"url": receiver.url, "headers": many}),
        )
        .await;
    assert_error(s, &b, 422, "invalid_field", Some("headers"));
    let (s, b) = api
        .post(
            "/v1/endpoints",
            json!({"url": receiver.url, "headers": {"X-Big": "v".repeat(200_000)}}),
        )
        .await;
    assert_error(s, &b, 422, "invalid_field", Some("headers.X-Big"));
    let (_, listed) = api.get("/v1/endpoints").await;
    assert_eq!(listed["data"], json!([]), "nothing was saved");

    // Authorization stays allowed; a URL pasted with blanks around it is stored trimmed.
    let ep = api
        .endpoint(json!({"url": format!("  {} ", receiver.url), "headers": {"Authorization": "Bearer r"}}))
        .await;
    assert_eq!(ep["url"], receiver.url.as_str());
    node.stop().await;
}

mod operator;
