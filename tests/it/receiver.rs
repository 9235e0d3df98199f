//! `switchyard receiver` as a process of its own, and `switchyard load --target --receiver`
//! driving a node started separately: everything delivered exits 0 (with an HTML report
//! carrying its charts); a node killed mid-run and never restarted exits non-zero within the
//! run's `--timeout`. Also what `--print` and `--secret` show, and that bad options are named.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::process::{NodeProcess, ReceiverProcess, cluster_env};
use crate::support::{ADMIN_TOKEN, Api, Redis, free_port, prefix, wait_until};

/// A node process on `redis` that trusts `ca` (or delivers to http:// when `None`).
async fn node(
    redis: &Redis,
    test: &str,
    ca: Option<&std::path::Path>,
    logs: &std::path::Path,
) -> NodeProcess {
    let mut env = cluster_env(&redis.url, &prefix(test), test, 8);
    env.retain(|(k, _)| k != "SWITCHYARD_EXTRA_ROOT_CERTS");
    match ca {
        Some(ca) => env.push((
            "SWITCHYARD_EXTRA_ROOT_CERTS".into(),
            ca.display().to_string(),
        )),
        None => env.push(("SWITCHYARD_ALLOW_HTTP".into(), "true".into())),
    }
    NodeProcess::start(env, logs).await
}

fn load_command(
    node: &NodeProcess,
    receiver: &ReceiverProcess,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.args(["load", "--target", &node.base, "--admin-token", ADMIN_TOKEN])
        .args([
            "--receiver",
            &receiver.base,
            "--no-baseline",
            "--batch",
            "20",
        ])
        .args(extra)
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_run_through_a_receiver_process_delivers_everything_and_writes_its_charts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let receiver = ReceiverProcess::start(
        None,
        &[
            "--ca-out",
            ca.to_str().unwrap(),
            "--control-token",
            "control-secret-1",
            "--latency-ms",
            "0-2",
        ],
    );
    assert!(receiver.base.starts_with("https://"), "{}", receiver.base);
    let redis = Redis::start();
    let node = node(&redis, "recv-load", Some(&ca), dir.path()).await;
    let (html, json_out) = (
        dir.path().join("report.html"),
        dir.path().join("report.json"),
    );
    let out = load_command(
        &node,
        &receiver,
        &["--endpoints", "4", "--events", "200", "--timeout", "30"],
    )
    .args([
        "--receiver-token",
        "control-secret-1",
        "--receiver-ca",
        ca.to_str().unwrap(),
    ])
    .args([
        "--html",
        html.to_str().unwrap(),
        "--json",
        json_out.to_str().unwrap(),
    ])
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("remote receiver"),
        "the report says whose clock: {stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert_eq!(report["deliveries"], 200, "{report}");
    assert_eq!(
        (report["lost"].as_u64(), report["unaccepted"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(
        !report["timeline"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<svg class=\"chart\" id=\"throughput\""),
        "{page}"
    );
    assert!(page.contains("<svg class=\"chart\" id=\"latency\"") && page.contains("<polyline"));
    // The control API wants its token; the arrivals the run read are there.
    let trusting = reqwest::Client::builder()
        .tls_certs_merge(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let arrivals = format!("{}/_switchyard/arrivals", receiver.base);
    let refused = trusting.get(&arrivals).send().await.unwrap().status();
    assert_eq!(refused, 401);
    assert!(receiver.total(&trusting, Some("control-secret-1")).await >= Some(204));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_run_whose_node_is_killed_and_never_restarted_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProcess::start(None, &["--plain"]);
    let redis = Redis::start();
    let mut node = node(&redis, "recv-kill", None, dir.path()).await;
    // 3,000 events offered over 10 s: the node dies well before they are all sent.
    let load = load_command(
        &node,
        &receiver,
        &[
            "--endpoints",
            "5",
            "--events",
            "3000",
            "--rate",
            "300",
            "--timeout",
            "3",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let http = reqwest::Client::new();
    wait_until(
        Duration::from_secs(30),
        "the run's first deliveries",
        || async {
            receiver
                .total(&http, None)
                .await
                .is_some_and(|n| n >= 5 + 40)
        },
    )
    .await;
    node.kill9();
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), load.wait_with_output())
        .await
        .expect("the run ends within its timeout")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a run against a dead node succeeded: {stderr}"
    );
    assert!(
        stderr.contains("never accepted") || stderr.contains("not delivered"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_prints_each_webhook_and_checks_its_signature() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let node = node(&redis, "recv-print", None, dir.path()).await;
    let api = Api::new(&node.base, ADMIN_TOKEN);
    let (_, ws) = api.post("/v1/workspaces", json!({"name": "print"})).await;
    let api = Api::new(&node.base, ws["apiKey"].as_str().unwrap());
    // The endpoint first, for its secret; the receiver then listens where it points.
    let port = free_port();
    let ep = api
        .endpoint(json!({"url": format!("http://127.0.0.1:{port}/hook")}))
        .await;
    let secret = ep["secret"].as_str().unwrap().to_string();
    let listen = format!("127.0.0.1:{port}");
    let receiver =
        ReceiverProcess::start(Some(&listen), &["--plain", "--print", "--secret", &secret]);
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let (status, ev) = api
        .post(
            "/v1/events",
            json!({"event": "member:updated", "member": {"id": 7, "name": "Ada"}}),
        )
        .await;
    assert_eq!(status, 202, "{ev}");
    let id = ev["deliveries"][0].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(20), "the webhook printed", || async {
        receiver.output().contains(&id)
    })
    .await;
    // A forged one: right headers, a signature made with another secret.
    let forged = reqwest::Client::new()
        .post(format!("{}/hook", receiver.base))
        .header("webhook-id", "msg_forged")
        .header(
            "webhook-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header(
            "webhook-signature",
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200);
    wait_until(
        Duration::from_secs(10),
        "the forged webhook printed",
        || async { receiver.output().contains("msg_forged") },
    )
    .await;
    let printed = receiver.output();
    let ours = &printed[printed.find(&id).unwrap()..printed.find("msg_forged").unwrap()];
    assert!(
        ours.contains("signature ok") && ours.contains("\"name\": \"Ada\""),
        "{printed}"
    );
    assert!(
        printed[printed.find("msg_forged").unwrap()..].contains("signature BAD"),
        "{printed}"
    );
    let page = receiver.arrivals(None).await;
    assert_eq!(page["badSignatures"], 1, "{page}");
    let arrivals = page["arrivals"].as_array().unwrap();
    assert!(
        arrivals.iter().any(|a| a["id"] == id.as_str()
            && a["signatureOk"] == true
            && a["endpoint"] == "/hook"),
        "{page}"
    );
}

#[test]
fn bad_receiver_options_are_refused_with_the_option_named() {
    for (args, option) in [
        (&["--listen", "nowhere"][..], "--listen"),
        (
            &["--listen", "127.0.0.1:0", "--status-mix", "200=abc"],
            "--status-mix",
        ),
        (
            &["--listen", "127.0.0.1:0", "--latency-ms", "50-10"],
            "--latency-ms",
        ),
        (
            &["--listen", "127.0.0.1:0", "--error-rate", "1.5"],
            "--error-rate",
        ),
        (&["--listen", "127.0.0.1:0", "--secret", "nope"], "--secret"),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                "/nonexistent.key",
            ],
            "--tls-cert",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--plain",
                "--ca-out",
                "/tmp/x.pem",
            ],
            "--ca-out",
        ),
        (
            &["--listen", "127.0.0.1:0", "--plain", "--http1"],
            "--http1",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("receiver")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains(option),
            "{args:?}: the error does not name {option}: {err}"
        );
    }
}

#[tokio::test]
async fn the_control_api_pages_arrivals_behind_its_token_and_resets() {
    use switchyard::load::receiver::{Control, Keep, Options, Receiver, Reply, Transport};
    let options = Options {
        control: Control::Token("tok-123".into()),
        ..Options::local(Keep::Arrivals, Transport::Plain)
    };
    let receiver = Receiver::serve(options, |_, i| {
        Reply::status(if i == 1 { 500 } else { 200 })
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    for i in 0..3 {
        let body = json!({"member": {"id": 1, "seq": i, "key": 7}}).to_string();
        let sent = http
            .post(format!("{}/ep/{i}", receiver.base()))
            .header("webhook-id", format!("msg_{i}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), if i == 1 { 500 } else { 200 });
    }
    let get = |path: &str, token: Option<&str>| {
        let mut req = http.get(format!("{}/_switchyard/{path}", receiver.base()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(get("arrivals", None).await.unwrap().status(), 401);
    assert_eq!(get("arrivals", Some("wrong")).await.unwrap().status(), 401);
    let page: serde_json::Value = get("arrivals?after=1&limit=1", Some("tok-123"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (page["next"].as_u64(), page["total"].as_u64()),
        (Some(2), Some(3)),
        "{page}"
    );
    let a = &page["arrivals"][0];
    assert_eq!(
        (
            a["id"].as_str(),
            a["endpoint"].as_str(),
            a["status"].as_u64()
        ),
        (Some("msg_1"), Some("/ep/1"), Some(500))
    );
    assert_eq!((a["seq"].as_u64(), a["key"].as_u64()), (Some(1), Some(7)));
    assert!(a["atMs"].as_f64().unwrap() > 1.6e12, "{a}");
    assert_eq!(receiver.count(), 3, "control requests are not webhooks");
    let reset = http
        .post(format!("{}/_switchyard/reset", receiver.base()))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(receiver.count(), 0);
    assert_eq!(get("nope", Some("tok-123")).await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_process_serves_a_given_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let receiver = ReceiverProcess::start(
        None,
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    let trusting = reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    assert_eq!(
        receiver.total(&trusting, None).await,
        Some(0),
        "{}",
        receiver.base
    );
    let sent = trusting
        .post(format!("{}/hook", receiver.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    assert_eq!(receiver.total(&trusting, None).await, Some(1));
}
