//! The `switchyard load` command: its options, checked, turned into a [`super::LoadConfig`].

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct LoadArgs {
    /// A running node's base URL (with --admin-token); without it a node is started here.
    #[arg(long, requires = "admin_token")]
    target: Option<String>,
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// The started node uses this Redis (otherwise the embedded store in a temporary directory).
    #[arg(long)]
    redis_url: Option<String>,
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Offered events per second (default: as fast as the API accepts).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// A receiver running elsewhere (`switchyard receiver`), its base URL as the node reaches
    /// it; repeatable, the endpoints are spread over them. Without it the run starts its own.
    #[arg(
        long = "receiver",
        value_name = "URL",
        requires = "target",
        conflicts_with_all = ["latency_ms", "error_rate", "ingest_only"]
    )]
    receivers: Vec<String>,
    /// The receivers' --control-token.
    #[arg(
        long,
        env = "SWITCHYARD_RECEIVER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        requires = "receivers"
    )]
    receiver_token: Option<String>,
    /// PEM roots to trust when reading the receivers' control API over https (their --ca-out).
    #[arg(long, value_name = "FILE", requires = "receivers")]
    receiver_ca: Option<PathBuf>,
    /// The built-in receiver's latency in ms, `N` or `MIN-MAX`.
    #[arg(long, default_value = "0")]
    latency_ms: String,
    /// Share of the built-in receiver's answers that are 500 (retried).
    #[arg(long, default_value = "0")]
    error_rate: String,
    /// Per-endpoint rate limit (deliveries per second).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Strict order per key: each endpoint's events cycle over N values of its `orderingKey`
    /// (`member.key`), and order is checked per key.
    #[arg(long)]
    ordering_keys: Option<usize>,
    /// With `--ordering-keys`: the endpoints' `maxInFlight` (key values in flight at once).
    #[arg(long, default_value_t = 50, requires = "ordering_keys")]
    max_in_flight: u32,
    /// Skip the raw-client baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Measure from a cold start: no warm-up event per endpoint before the run.
    #[arg(long)]
    no_warmup: bool,
    /// Measure the batch API alone: the receiver holds every request, so deliveries are
    /// stored and queued but not sent; the run ends at the last 202.
    #[arg(long)]
    ingest_only: bool,
    /// The built-in receiver offers only HTTP/1.1 (by default it offers HTTP/2 too, which a
    /// node with `deliver_http2` takes).
    #[arg(long, conflicts_with = "receivers")]
    http1: bool,
    /// The started node's log filter (`RUST_LOG` syntax). `warn` by default, so a run measures
    /// the dispatcher rather than its log lines; `info` is what `switchyard serve` runs with,
    /// and costs the attempt span of every delivery.
    #[arg(
        long,
        default_value = "warn",
        value_name = "FILTER",
        conflicts_with = "target"
    )]
    node_log: String,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page (charts over time, the summary).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Seconds to wait for every accepted delivery before counting the rest lost.
    #[arg(
        long,
        visible_alias = "timeout",
        value_name = "SECS",
        default_value_t = 300
    )]
    timeout_secs: u64,
}

/// Runs `switchyard load`: fails (non-zero exit) when anything accepted was not delivered.
pub fn load(args: LoadArgs) -> anyhow::Result<()> {
    use super::{LoadConfig, NodeSpec, OrderingKeys};
    anyhow::ensure!(args.endpoints > 0, "--endpoints must be at least 1");
    let error_rate = super::receiver::parse_error_rate(&args.error_rate)?;
    let latency_ms = super::receiver::parse_latency(&args.latency_ms)?;
    anyhow::ensure!(
        args.ordering_keys != Some(0),
        "--ordering-keys must be at least 1"
    );
    anyhow::ensure!(
        (1..=1000).contains(&args.max_in_flight),
        "--max-in-flight must be 1 to 1000"
    );
    // The node falls back to `info` on a filter it cannot parse, which would measure the wrong
    // thing silently.
    tracing_subscriber::EnvFilter::try_new(&args.node_log)
        .map_err(|e| anyhow::anyhow!("--node-log {:?} is not a log filter: {e}", args.node_log))?;
    let data = tempfile::tempdir()?;
    let node = match (args.target, args.admin_token) {
        (Some(base), Some(admin_token)) => NodeSpec::Target { base, admin_token },
        _ => {
            let (mut env, label) = match &args.redis_url {
                Some(url) => (
                    vec![
                        ("SWITCHYARD_REDIS_URL".to_string(), url.clone()),
                        (
                            "SWITCHYARD_KEY_PREFIX".to_string(),
                            format!("load{}", std::process::id()),
                        ),
                    ],
                    "redis",
                ),
                None => (
                    vec![(
                        "SWITCHYARD_DATA_DIR".to_string(),
                        data.path().display().to_string(),
                    )],
                    "embedded",
                ),
            };
            env.push(("RUST_LOG".to_string(), args.node_log.clone()));
            NodeSpec::Spawn {
                binary: std::env::current_exe()?,
                env,
                label: label.into(),
            }
        }
    };
    let config = LoadConfig {
        node,
        endpoints: args.endpoints,
        events: args.events,
        rate: args.rate,
        batch: args.batch.max(1),
        concurrency: args.concurrency.max(1),
        latency_ms,
        error_rate,
        rate_limit: args.rate_limit,
        keys: args.ordering_keys.map(|values| OrderingKeys {
            values,
            max_in_flight: args.max_in_flight,
        }),
        baseline: !args.no_baseline,
        warmup: !args.no_warmup,
        ingest_only: args.ingest_only,
        http1: args.http1,
        timeout: std::time::Duration::from_secs(args.timeout_secs),
        redis_url: args.redis_url.clone(),
        progress: true,
        receivers: args.receivers,
        receiver_token: args.receiver_token,
        receiver_ca: args.receiver_ca,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(super::run(config))?;
    print!("{}", report.table());
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("--json: cannot write {}", path.display()))?;
    }
    if let Some(path) = args.html {
        let page = super::html::html(&report, "switchyard load");
        std::fs::write(&path, page)
            .with_context(|| format!("--html: cannot write {}", path.display()))?;
    }
    anyhow::ensure!(
        report.lost == 0 && report.unaccepted == 0,
        "{} accepted deliveries were not delivered before the timeout, {} events were never accepted",
        report.lost,
        report.unaccepted
    );
    anyhow::ensure!(
        report.order_violations == 0 && report.rate_limit_violations == 0,
        "{} order and {} rate-limit violations",
        report.order_violations,
        report.rate_limit_violations
    );
    Ok(())
}
