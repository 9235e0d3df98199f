//! Backlog: queue a million jobs over 10,000 endpoints, start a node process on them, and report
//! its peak RSS while it drains. The partition consumers hold at most `partition_buffer` jobs
//! each, so memory must not follow the backlog.
//!
//! `cargo bench --bench backlog` (env: BACKLOG_JOBS, BACKLOG_ENDPOINTS, BACKLOG_SECS).
//! Needs `redis-server` on the PATH; starts its own on a free port.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard::delivery::{NewDelivery, partition_of};
use switchyard::endpoint::{Endpoint, EndpointSpec};
use switchyard::load::receiver::{Keep, Receiver, Reply, ca_pem_path};
use switchyard::store::{NewEvent, RedisStore, Store};
use switchyard::workspace::Workspace;

const PARTITIONS: u32 = 64;
const PER_INGEST: usize = 2_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs benches as tests: this one is minutes long, skip it.
        println!("backlog: run with `cargo bench --bench backlog`");
        return;
    }
    let jobs = env_or("BACKLOG_JOBS", 1_000_000) as usize;
    let endpoints = env_or("BACKLOG_ENDPOINTS", 10_000) as usize;
    let secs = env_or("BACKLOG_SECS", 120);
    let dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH");
    let url = format!("redis://127.0.0.1:{redis_port}/");
    let store = loop {
        if let Ok(s) = RedisStore::connect(&url, "bench", PARTITIONS).await {
            break Store::Redis(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let receiver = Receiver::start_keeping(Keep::Arrivals, |_, _| Reply::status(200)).await;
    let ws = Workspace {
        uuid: "bench-ws".into(),
        name: "Bench".into(),
        created_at: String::new(),
    };
    store.create_workspace(&ws).await.unwrap();
    let mut ids = Vec::with_capacity(endpoints);
    for i in 0..endpoints {
        let (spec, _) =
            EndpointSpec::from_json(&serde_json::json!({"url": format!("{}/{i}", receiver.url)}))
                .unwrap();
        let ep = Endpoint {
            id: format!("ep_{i:06}"),
            spec,
            secret: switchyard::signing::generate_secret(),
            retired_secrets: vec![],
            created_at: String::new(),
            updated_at: String::new(),
            compiled: Default::default(),
        };
        store.put_endpoint(&ws.uuid, &ep).await.unwrap();
        ids.push(ep.id);
    }
    let fill = Instant::now();
    let body: std::sync::Arc<str> = r#"{"event":"member:updated","member":{"id":1}}"#.into();
    let mut n = 0;
    while n < jobs {
        let take = PER_INGEST.min(jobs - n);
        let deliveries: Vec<NewDelivery> = (n..n + take)
            .map(|k| {
                let ep = &ids[k % endpoints];
                NewDelivery {
                    partition: partition_of(ep, PARTITIONS),
                    endpoint_id: ep.clone(),
                    rule_id: 1,
                    key: String::new(),
                    body: body.clone(),
                }
            })
            .collect();
        let event = NewEvent {
            id: switchyard::delivery::new_event_id(),
            event_type: "member:updated".into(),
            body: std::sync::Arc::from(""),
            deliveries,
        };
        store.ingest(&ws.uuid, &[event], None, None).await.unwrap();
        n += take;
    }
    let fill_secs = fill.elapsed().as_secs_f64();
    println!("queued {jobs} jobs over {endpoints} endpoints in {fill_secs:.1} s");

    let listen = free_port();
    // BACKLOG_WRAP runs the node under a profiler, e.g. `BACKLOG_WRAP=heaptrack`.
    let wrap = std::env::var("BACKLOG_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut node = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_switchyard"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_switchyard")),
    };
    let mut node = node
        .arg("serve")
        .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{listen}"))
        .env("SWITCHYARD_REDIS_URL", &url)
        .env("SWITCHYARD_KEY_PREFIX", "bench")
        .env("SWITCHYARD_PARTITIONS", PARTITIONS.to_string())
        .env("SWITCHYARD_ALLOW_PRIVATE_CIDRS", "127.0.0.1/32")
        .env("SWITCHYARD_EXTRA_ROOT_CERTS", ca_pem_path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = node.id();
    let start = Instant::now();
    let mut peak = 0;
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss = rss_kib(pid, "VmRSS:");
        peak = peak.max(rss);
        let done = receiver.count();
        samples.push((start.elapsed().as_secs_f64(), done, rss));
        if done >= jobs {
            break;
        }
    }
    let hwm = rss_kib(pid, "VmHWM:");
    let delivered = receiver.count();
    let elapsed = start.elapsed().as_secs_f64();
    let _ = node.kill();
    let _ = node.wait();
    let _ = redis.kill();
    let _ = redis.wait();
    for (t, d, rss) in samples.iter().step_by((samples.len() / 10).max(1)) {
        println!(
            "  t={t:6.1}s delivered={d:8} rss={:.1} MiB",
            *rss as f64 / 1024.0
        );
    }
    println!(
        "backlog: {jobs} jobs / {endpoints} endpoints: delivered {delivered} in {elapsed:.1} s ({:.0}/s); \
         node peak RSS {:.1} MiB (VmHWM {:.1} MiB)",
        delivered as f64 / elapsed,
        peak as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
