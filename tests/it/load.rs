//! The load engine itself (`switchyard load`, `cargo bench --bench load`): a small run against
//! a node process must count every delivery once and report both latencies.

use std::path::PathBuf;
use std::time::Duration;

use switchyard::load::{LoadConfig, NodeSpec, run};

use crate::support::Redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_load_run_counts_every_delivery_and_reports_accept_to_arrival() {
    let redis = Redis::start();
    let report = run(LoadConfig {
        node: NodeSpec::Spawn {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_switchyard")),
            env: vec![
                ("SWITCHYARD_REDIS_URL".into(), redis.url.clone()),
                ("SWITCHYARD_PARTITIONS".into(), "8".into()),
                // Every other node test speaks HTTP/1.1 (the default); this one multiplexes
                // its endpoints' requests over HTTP/2, order and counts checked the same.
                ("SWITCHYARD_DELIVER_HTTP2".into(), "true".into()),
            ],
            label: "redis".into(),
        },
        endpoints: 10,
        events: 300,
        rate: None,
        batch: 20,
        concurrency: 2,
        latency_ms: (0, 0),
        error_rate: 0.0,
        rate_limit: None,
        keys: None,
        baseline: false,
        warmup: true,
        ingest_only: false,
        http1: false,
        timeout: Duration::from_secs(60),
        redis_url: Some(redis.url.clone()),
        progress: false,
        receivers: Vec::new(),
        receiver_token: None,
        receiver_ca: None,
    })
    .await
    .expect("the run completes");
    assert_eq!(report.deliveries, 300);
    assert_eq!((report.lost, report.duplicates), (0, 0));
    assert_eq!(report.order_violations, 0);
    let accept = report
        .accept_latency_ms
        .as_ref()
        .expect("accept-to-arrival is measured");
    // `createdAt` is stamped after the batch was sent and kept to the millisecond, so
    // accept-to-arrival can exceed submit-to-arrival by at most that millisecond.
    assert!(accept.p50 > 0.0);
    assert!(
        accept.max <= report.latency_ms.max + 1.0,
        "accept {accept:?} against submit {:?}",
        report.latency_ms
    );
    let redis = report
        .redis
        .as_ref()
        .expect("the run's cost to Redis is measured");
    assert!(redis.commands_per_delivery > 1.0, "{redis:?}");
    assert!(redis.by_command.contains_key("xadd"), "{redis:?}");
    assert!(report.node_cpu_us_per_delivery.is_some_and(|c| c > 0.0));
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["acceptLatencyMs"]["p99"].is_number(), "{json}");
}

#[test]
fn bad_node_log_filters_are_refused_with_the_option_named() {
    for args in [
        &["--node-log", "switchyard=loud"][..],
        &[
            "--target",
            "http://127.0.0.1:1",
            "--admin-token",
            "t",
            "--node-log",
            "info",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("load")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains("--node-log"), "{args:?}: {err}");
    }
}
