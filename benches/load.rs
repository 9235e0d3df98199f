//! The end-to-end load benchmark: `cargo bench --bench load`.
//!
//! Starts its own `redis-server`, then runs the load engine (`switchyard::load`) against node
//! processes: throughput with 1,000 endpoints as fast as possible on Redis (HTTP/1.1, then
//! with `deliver_http2`) and on the embedded store, each with its raw-client baseline; the batch API alone (deliveries stored, not
//! sent); then a latency sweep at fixed offered rates.
//! Writes `target/load-report.json` and the chart `docs/latency.svg`.
//! Every run first sends one event per endpoint and waits for it (warm-up, not counted).
//! Env: LOAD_EVENTS (20000), LOAD_ENDPOINTS (1000), LOAD_RATES ("250,500,1000,2000"),
//! LOAD_SWEEP_SECS (5).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard::load::{LoadConfig, NodeSpec, Report, run};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(
    env: Vec<(String, String)>,
    label: &str,
    endpoints: usize,
    events: usize,
    rate: Option<f64>,
    baseline: bool,
) -> LoadConfig {
    let redis_url = redis_url_of(&env);
    LoadConfig {
        node: NodeSpec::Spawn {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_switchyard")),
            env,
            label: label.into(),
        },
        endpoints,
        events,
        rate,
        batch: 100,
        concurrency: 4,
        latency_ms: (0, 0),
        error_rate: 0.0,
        rate_limit: None,
        keys: None,
        baseline,
        warmup: true,
        ingest_only: false,
        http1: false,
        timeout: Duration::from_secs(600),
        redis_url,
        progress: false,
        receivers: Vec::new(),
        receiver_token: None,
        receiver_ca: None,
    }
}

/// The Redis a node's settings name, to measure what a run costs it.
fn redis_url_of(env: &[(String, String)]) -> Option<String> {
    env.iter()
        .find(|(k, _)| k == "SWITCHYARD_REDIS_URL")
        .map(|(_, v)| v.clone())
}

/// Latency percentiles against offered load, as an SVG line chart.
fn chart(points: &[(f64, &Report)]) -> String {
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let accept = |r: &Report| r.accept_latency_ms.clone().unwrap_or_default();
    let max_y = points
        .iter()
        .map(|p| p.1.latency_ms.p99.max(accept(p.1).p99))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |v: f64| pad + v / max_x * (w - 2.0 * pad);
    let y = |v: f64| h - pad - v / max_y * (h - 2.0 * pad);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle">Latency vs offered load (ms): accept-to-arrival, and submit-to-arrival p99 (dashed)</text>
<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">offered events/s</text>
"#,
        w + 70.0, // room for the line labels right of the plot
        w / 2.0,
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 10.0
    );
    for (name, color, dash, pick) in [
        ("p50", "#1f77b4", "", 0),
        ("p90", "#ff7f0e", "", 1),
        ("p99", "#d62728", "", 2),
        ("submit p99", "#7f7f7f", "6,4", 3),
    ] {
        let value = |r: &Report| {
            let a = accept(r);
            [a.p50, a.p90, a.p99, r.latency_ms.p99][pick]
        };
        let path: Vec<String> = points
            .iter()
            .map(|(o, r)| format!("{:.1},{:.1}", x(*o), y(value(r))))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-dasharray=\"{dash}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        );
        if let Some((o, r)) = points.last() {
            svg += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{name}</text>\n",
                x(*o) + 4.0,
                y(value(r))
            );
        }
    }
    for (o, _) in points {
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{o}</text>\n",
            x(*o),
            h - pad + 15.0
        );
    }
    for i in 0..=4 {
        let v = max_y * i as f64 / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            pad - 5.0,
            y(v) + 4.0
        );
    }
    svg + "</svg>\n"
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: run with `cargo bench --bench load`");
        return;
    }
    let events = env_or("LOAD_EVENTS", 20_000);
    let endpoints = env_or("LOAD_ENDPOINTS", 1_000);
    let sweep_secs = env_or("LOAD_SWEEP_SECS", 5) as f64;
    let rates: Vec<f64> = std::env::var("LOAD_RATES")
        .unwrap_or_else(|_| "250,500,1000,2000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH");
    std::thread::sleep(Duration::from_millis(300));
    let redis_env = |p: &str| {
        vec![
            (
                "SWITCHYARD_REDIS_URL".to_string(),
                format!("redis://127.0.0.1:{port}/"),
            ),
            ("SWITCHYARD_KEY_PREFIX".to_string(), p.to_string()),
        ]
    };
    let data = tempfile::tempdir().unwrap();
    let embedded_env = vec![(
        "SWITCHYARD_DATA_DIR".to_string(),
        data.path().display().to_string(),
    )];

    // The same Redis run with `deliver_http2`: the endpoints all on one origin share a few
    // HTTP/2 connections.
    let mut http2_env = redis_env("tput-h2");
    http2_env.push(("SWITCHYARD_DELIVER_HTTP2".to_string(), "true".to_string()));

    let mut all = Vec::new();
    for (label, env) in [
        ("redis", redis_env("tput")),
        ("redis, deliver_http2", http2_env),
        ("embedded", embedded_env),
    ] {
        let report = run(config(env, label, endpoints, events, None, true))
            .await
            .expect("a load run");
        println!(
            "throughput, {label}, {endpoints} endpoints, {events} events:\n{}",
            report.table()
        );
        all.push(report);
    }
    // The batch API alone: the receiver holds every request, so deliveries are stored and
    // queued but not sent (each event makes one), batches of 100 with 8 in flight.
    let report = run(LoadConfig {
        ingest_only: true,
        concurrency: 8,
        ..config(
            redis_env("ingest"),
            "redis",
            endpoints,
            events * 2,
            None,
            false,
        )
    })
    .await
    .expect("an ingest run");
    println!(
        "ingest only, {endpoints} endpoints, {} events:\n{}",
        events * 2,
        report.table()
    );
    all.push(report);
    let mut sweep = Vec::new();
    for (i, rate) in rates.iter().enumerate() {
        let n = (rate * sweep_secs) as usize;
        // Latency is measured per event, so events go in small batches (10, 32 in flight) as
        // a platform publishing as they happen would send them: a 100-event batch adds its own
        // ingest and a 100-delivery burst to every one of its events' latency.
        let report = run(LoadConfig {
            batch: 10,
            concurrency: 32,
            ..config(
                redis_env(&format!("sweep{i}")),
                "redis",
                100,
                n,
                Some(*rate),
                false,
            )
        })
        .await
        .expect("a load run");
        println!(
            "latency at {rate} events/s offered, 100 endpoints:\n{}",
            report.table()
        );
        sweep.push((*rate, report));
    }
    let _ = redis.kill();
    let _ = redis.wait();
    let points: Vec<(f64, &Report)> = sweep.iter().map(|(r, rep)| (*r, rep)).collect();
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/docs/latency.svg"),
        chart(&points),
    )
    .unwrap();
    all.extend(sweep.into_iter().map(|(_, r)| r));
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/load-report.json"),
        serde_json::to_string_pretty(&all).unwrap(),
    )
    .unwrap();
}
