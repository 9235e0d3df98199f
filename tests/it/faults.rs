//! Faults found under load: an owner paused past its lease, a full disk under the embedded
//! store, and receivers that throttle.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::process::{NodeProcess, cluster_env};
use crate::support::{
    ADMIN_TOKEN, Api, Node, Receiver, Redis, Reply, embedded_config, prefix, record_event,
    wait_until,
};

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// The node that owns `partition`, as `GET /v1/cluster` says.
async fn owner_of(admin: &Api, partition: usize) -> Option<String> {
    let (_, c) = admin.get("/v1/cluster").await;
    c["partitions"][partition]["owner"]
        .as_str()
        .map(String::from)
}

/// Arrivals of one strict endpoint never step back: each first arrival is a later event than
/// the one before, and the only request that may repeat is the one just before (the head,
/// sent again by a new owner after a crash or a handoff).
fn assert_never_steps_back(seqs: &[u64]) {
    let mut high: Option<u64> = None;
    for (i, s) in seqs.iter().enumerate() {
        if let Some(h) = high {
            assert!(
                *s >= h,
                "arrival {i} is event {s} after event {h} had arrived: {seqs:?}"
            );
        }
        high = Some(high.map_or(*s, |h| h.max(*s)));
    }
}

/// An owner stopped with SIGSTOP past its lease: another node takes its partition over, and
/// when the first resumes it sends nothing more for it (it checks its lease's deadline on the
/// monotonic clock before every send), so a receiver that does not deduplicate still sees the
/// strict endpoint's deliveries in order. Twice, so a job stranded by the resumed node's reads
/// would show as a delivery that never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_its_lease_sends_nothing_after_the_takeover() {
    let redis = Redis::start();
    let logs = tempfile::tempdir().unwrap();
    let key_prefix = prefix("paused");
    let receiver = Receiver::start(|_, _| Reply {
        delay: Duration::from_millis(30),
        ..Reply::status(200)
    })
    .await;
    let a = NodeProcess::start(
        cluster_env(&redis.url, &key_prefix, "node-a", 4),
        logs.path(),
    )
    .await;
    let b = NodeProcess::start(
        cluster_env(&redis.url, &key_prefix, "node-b", 4),
        logs.path(),
    )
    .await;
    let nodes: HashMap<&str, &NodeProcess> = [("node-a", &a), ("node-b", &b)].into();
    let admin = Api::new(&a.base, ADMIN_TOKEN);
    let (_, ws) = admin
        .post("/v1/workspaces", json!({"name": "Paused"}))
        .await;
    let key = ws["apiKey"].as_str().unwrap().to_string();
    let apis = [Api::new(&a.base, &key), Api::new(&b.base, &key)];
    let ep = apis[0].endpoint(json!({"url": receiver.url, "retry": {"maxAttempts": 50, "initialDelayMs": 100, "multiplier": 1.0}})).await;
    let ep_id = ep["id"].as_str().unwrap().to_string();
    apis[0].rule(json!({"name": "all", "events": ["member:updated"], "actions": [{"type": "webhook", "endpointId": ep_id}]})).await;
    let partition = switchyard::delivery::partition_of(&ep_id, 4) as usize;
    wait_until(
        Duration::from_secs(10),
        "both nodes to own partitions",
        || async {
            let (_, c) = admin.get("/v1/cluster").await;
            c["partitions"].as_array().is_some_and(|ps| {
                ps.iter().all(|p| p["owner"].is_string())
                    && ps.iter().any(|p| p["owner"] == "node-a")
                    && ps.iter().any(|p| p["owner"] == "node-b")
            })
        },
    )
    .await;

    let posted = Arc::new(AtomicUsize::new(0));
    let (p, apis2) = (posted.clone(), apis.clone());
    let poster = tokio::spawn(async move {
        let mut acked: HashMap<String, u64> = HashMap::new();
        for batch in 0..60u64 {
            let events: Vec<Value> = (batch * 10..batch * 10 + 10)
                .map(|k| json!({"event": "member:updated", "member": {"id": 1, "seq": k}}))
                .collect();
            let body = json!({"events": events});
            let idem = format!("b-{batch}");
            let mut i = batch as usize;
            let answer = loop {
                // Alternate nodes; a paused node times out and the other answers.
                match apis2[i % 2]
                    .try_post("/v1/events/batch", &body, &[("Idempotency-Key", &idem)])
                    .await
                {
                    Some((202, answer)) => break answer,
                    _ => i += 1,
                }
            };
            for (j, r) in answer["results"].as_array().unwrap().iter().enumerate() {
                acked.insert(
                    r["deliveries"][0].as_str().unwrap().to_string(),
                    batch * 10 + j as u64,
                );
            }
            p.store(acked.len(), Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        acked
    });

    for round in 0..2 {
        let before = receiver.count();
        wait_until(
            Duration::from_secs(30),
            "deliveries before the pause",
            || async { receiver.count() >= before + 40 },
        )
        .await;
        let owner = owner_of(&admin, partition).await.expect("an owner");
        let paused = nodes[owner.as_str()];
        let other = if owner == "node-a" {
            "node-b"
        } else {
            "node-a"
        };
        let other_api = Api::new(&nodes[other].base, ADMIN_TOKEN);
        signal(paused.pid(), "STOP");
        let stopped = Instant::now();
        wait_until(
            Duration::from_secs(20),
            "the other node to take the partition over",
            || async { owner_of(&other_api, partition).await.as_deref() == Some(other) },
        )
        .await;
        let took_over = receiver.count();
        wait_until(
            Duration::from_secs(20),
            "the new owner to deliver",
            || async { receiver.count() >= took_over + 10 },
        )
        .await;
        // Paused well past the lease, as in the probe (8 s with a 5 s lease; here 2 s).
        let until = stopped + Duration::from_secs(4);
        tokio::time::sleep_until(until.into()).await;
        signal(paused.pid(), "CONT");
        println!(
            "round {round}: {owner} paused {:?}, {other} took over",
            stopped.elapsed()
        );
    }
    let acked = poster.await.unwrap();
    assert_eq!(acked.len(), 600);
    crate::support::wait_all_arrived(&receiver, acked.keys(), Duration::from_secs(60)).await;
    let seqs: Vec<u64> =
        receiver.with_received(|r| r.iter().map(|x| acked[x.header("webhook-id")]).collect());
    assert_never_steps_back(&seqs);
    let repeats = seqs.len() - acked.len();
    assert!(
        repeats <= 4,
        "{repeats} repeats: more than the heads at two takeovers"
    );
    let _ = posted;
}

/// The embedded store on a small disk that fills up: ingest answers 503
/// `insufficient_storage` with `Retry-After` and `/readyz` says not ready, the cause is
/// logged once with the directory; an attempt that was sent but could not be recorded is held,
/// not sent again; when space returns the store writes again by itself and the held outcome
/// lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!(
            "SKIPPED: this machine cannot mount a tmpfs (not root?); the full-disk test needs one"
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let data = mount.join("data");
    let env = vec![
        (
            "SWITCHYARD_DATA_DIR".to_string(),
            data.display().to_string(),
        ),
        (
            "SWITCHYARD_ADMIN_TOKEN".to_string(),
            ADMIN_TOKEN.to_string(),
        ),
        (
            "SWITCHYARD_ALLOW_PRIVATE_CIDRS".to_string(),
            "127.0.0.1/32".to_string(),
        ),
        (
            "SWITCHYARD_EXTRA_ROOT_CERTS".to_string(),
            switchyard::load::receiver::ca_pem_path().to_string(),
        ),
        (
            "SWITCHYARD_MIN_FREE_DISK_BYTES".to_string(),
            (8 << 20).to_string(),
        ),
        ("SWITCHYARD_PARTITIONS".to_string(), "4".to_string()),
    ];
    let node = NodeProcess::start(env, dir.path()).await;
    let admin = Api::new(&node.base, ADMIN_TOKEN);
    let (_, ws) = admin.post("/v1/workspaces", json!({"name": "Disk"})).await;
    let api = Api::new(&node.base, ws["apiKey"].as_str().unwrap());
    let receiver = Receiver::start(|_, _| Reply {
        delay: Duration::from_millis(2000),
        ..Reply::status(200)
    })
    .await;
    let ep = api.endpoint(json!({"url": receiver.url})).await;
    api.rule(json!({"name": "all", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    let (s, accepted) = api.post("/v1/events", record_event(1, "high")).await;
    assert_eq!(s, 202, "{accepted}");
    let id = accepted["deliveries"][0].as_str().unwrap().to_string();
    wait_until(
        Duration::from_secs(10),
        "the attempt to be in flight",
        || async { receiver.count() == 1 },
    )
    .await;
    // Fill the disk to below the margin while the attempt is in flight.
    let filler = mount.join("filler");
    let free = fs4::available_space(&mount).unwrap();
    let fill = Command::new("fallocate")
        .arg("-l")
        .arg((free - (4 << 20)).to_string())
        .arg(&filler)
        .status()
        .unwrap();
    assert!(fill.success());
    let refused = api
        .try_post("/v1/events", &record_event(2, "high"), &[])
        .await
        .expect("an answer");
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "insufficient_storage");
    assert_eq!(api.try_get("/readyz").await, Some(503));
    // The attempt answers 200 meanwhile; its outcome cannot be written: it is held, and the
    // delivery is not sent again.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        receiver.count(),
        1,
        "sent once, not again while the disk is full"
    );
    assert_eq!(api.delivery_status(&id).await.as_deref(), Some("pending"));
    std::fs::remove_file(&filler).unwrap();
    wait_until(
        Duration::from_secs(20),
        "the store to write again",
        || async {
            api.try_get("/readyz").await == Some(200)
                && api.delivery_status(&id).await.as_deref() == Some("succeeded")
        },
    )
    .await;
    let (s, _) = api.post("/v1/events", record_event(3, "high")).await;
    assert_eq!(s, 202);
    assert!(
        receiver.received()[..]
            .iter()
            .filter(|r| r.header("webhook-id") == id)
            .count()
            == 1,
        "the held outcome landed without a resend"
    );
    let log = node.log();
    let logged = log
        .lines()
        .filter(|l| l.contains("disk is full") && l.contains("ERROR"))
        .count();
    assert_eq!(logged, 1, "the cause logged once:\n{log}");
    assert!(
        log.contains(&data.display().to_string()),
        "with the directory"
    );
}

/// 429 (and 503 with `Retry-After`) throttles the endpoint: the wait is honoured, and throttled
/// answers count neither toward `maxAttempts` nor toward the breaker; a delivery fails only
/// after `max_throttle_secs` of throttling.
#[tokio::test]
async fn throttling_answers_pause_the_endpoint_and_never_count_as_failures() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(switchyard::config::Config {
        breaker_threshold: 2,
        max_throttle_secs: 6,
        ..embedded_config(dir.path())
    })
    .await;
    let api = node.workspace("Throttle").await;
    let throttling = Receiver::start(|_, n| {
        if n < 4 {
            Reply {
                headers: vec![("retry-after".into(), "1".into())],
                ..Reply::status(if n % 2 == 0 { 429 } else { 503 })
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    let forever = Receiver::start(|_, _| Reply {
        headers: vec![("retry-after".into(), "1".into())],
        ..Reply::status(429)
    })
    .await;
    let ep = api
        .endpoint(json!({"url": throttling.url, "retry": {"maxAttempts": 2, "initialDelayMs": 10}}))
        .await;
    let stuck = api
        .endpoint(json!({"url": forever.url, "retry": {"maxAttempts": 2, "initialDelayMs": 10}}))
        .await;
    api.rule(json!({"name": "a", "events": ["data_record:*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})).await;
    api.rule(json!({"name": "b", "events": ["member:*"], "actions": [{"type": "webhook", "endpointId": stuck["id"]}]})).await;
    let (_, a) = api.post("/v1/events", record_event(1, "high")).await;
    let (_, b) = api
        .post(
            "/v1/events",
            json!({"event": "member:created", "member": {"id": 7}}),
        )
        .await;
    let (a, b) = (
        a["deliveries"][0].as_str().unwrap().to_string(),
        b["deliveries"][0].as_str().unwrap().to_string(),
    );
    wait_until(
        Duration::from_secs(20),
        "the throttled delivery to succeed",
        || async { api.delivery_status(&a).await.as_deref() == Some("succeeded") },
    )
    .await;
    let arrivals: Vec<Instant> = throttling.received().iter().map(|r| r.at).collect();
    assert_eq!(
        arrivals.len(),
        5,
        "four throttled answers, then the success"
    );
    for w in arrivals.windows(2) {
        assert!(
            w[1].duration_since(w[0]) >= Duration::from_millis(950),
            "Retry-After honoured: {:?}",
            w[1].duration_since(w[0])
        );
    }
    let (_, shown) = api
        .get(&format!("/v1/endpoints/{}", ep["id"].as_str().unwrap()))
        .await;
    assert_eq!(shown["health"]["breaker"]["state"], "closed", "{shown}");
    assert_eq!(shown["health"]["breaker"]["consecutiveFailures"], 0);
    let (_, d) = api.get(&format!("/v1/deliveries/{a}")).await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 5);
    // Throttled for longer than max_throttle_secs (6 s): failed then, not at maxAttempts (2).
    wait_until(
        Duration::from_secs(15),
        "the forever-throttled delivery to fail",
        || async { api.delivery_status(&b).await.as_deref() == Some("failed") },
    )
    .await;
    assert!(
        forever.count() >= 6,
        "more throttled answers than maxAttempts: {}",
        forever.count()
    );
    node.stop().await;
}
