//! The `switchyard` command: parses the CLI, loads config, starts tracing, calls the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard::config::Config;
use switchyard::signing::{SigningKey, verify};

/// jemalloc rather than glibc malloc: with 100k endpoint actors started and stopped, glibc's
/// per-thread arenas kept the freed memory fragmented (RSS only grew), and the backlog bench
/// drained 1.5x faster on jemalloc (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at start: a background thread returns freed pages to the OS after
/// 1 s instead of 10 s, so RSS follows what is live (a burst of 100k actors is given back).
/// `_RJEM_MALLOC_CONF` in the environment still overrides it.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "switchyard", version, about = "A webhook dispatcher cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        /// A TOML config file (`switchyard config defaults` lists the keys); SWITCHYARD_*
        /// variables override it, and --set overrides both.
        #[arg(long)]
        config: Option<PathBuf>,
        /// `key=value` with a config key (`--set listen=0.0.0.0:8080`); repeatable.
        #[arg(long = "set", value_parser = parse_setting)]
        set: Vec<(String, String)>,
    },
    /// Check a configuration: prints the effective settings (secrets masked) or the first
    /// invalid key, and exits non-zero on an error.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Deliveries of the workspace of SWITCHYARD_API_KEY, on a running node.
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Endpoints of the workspace of SWITCHYARD_API_KEY, on a running node.
    #[command(subcommand)]
    Endpoints(EndpointsCommand),
    /// Drive a node with events and report throughput, latency, losses and the raw-client ratio.
    Load(LoadArgs),
    /// Check a received webhook's signature; the body is read from stdin. Exits 0 only if valid.
    Verify {
        /// The endpoint's signing secret (whsec_...).
        #[arg(long, env = "SWITCHYARD_WEBHOOK_SECRET")]
        secret: String,
        /// The `webhook-id` header.
        #[arg(long)]
        id: String,
        /// The `webhook-timestamp` header.
        #[arg(long)]
        timestamp: String,
        /// The `webhook-signature` header.
        #[arg(long)]
        signature: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate defaults + FILE + SWITCHYARD_* variables and print the result.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the commented defaults (a starting point for a config file).
    Defaults,
}

/// Where the node is and whose workspace.
#[derive(clap::Args)]
struct Remote {
    #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "SWITCHYARD_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// Newest first.
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One delivery with its attempts.
    Show {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
    /// One more attempt of a finished delivery.
    Retry {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

#[derive(Subcommand)]
enum EndpointsCommand {
    List {
        #[command(flatten)]
        remote: Remote,
    },
}

fn remote_call(
    remote: &Remote,
    path: String,
    post: bool,
    columns: Option<(&str, &[&str])>,
) -> anyhow::Result<()> {
    let client = switchyard::client::Client::new(&remote.url, &remote.api_key);
    let runtime = tokio::runtime::Runtime::new()?;
    let body = runtime.block_on(async {
        if post {
            client.post(&path).await
        } else {
            client.get(&path).await
        }
    })?;
    match columns {
        Some((list, cols)) if !remote.json => {
            let rows = body[list]
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![body.clone()]);
            print!("{}", switchyard::client::table(&rows, cols));
        }
        _ => println!("{}", serde_json::to_string_pretty(&body)?),
    }
    Ok(())
}

fn remote(command: Command) -> anyhow::Result<()> {
    const DELIVERY: &[&str] = &[
        "id",
        "status",
        "endpointId",
        "eventType",
        "attemptCount",
        "createdAt",
        "nextAttemptAt",
    ];
    match command {
        Command::Deliveries(DeliveriesCommand::List {
            remote,
            status,
            endpoint,
            limit,
        }) => {
            let mut path = format!("/v1/deliveries?limit={limit}");
            for (k, v) in [("status", status), ("endpointId", endpoint)] {
                if let Some(v) = v {
                    path += &format!("&{k}={v}");
                }
            }
            remote_call(&remote, path, false, Some(("data", DELIVERY)))
        }
        Command::Deliveries(DeliveriesCommand::Show { remote, id }) => remote_call(
            &remote,
            format!("/v1/deliveries/{id}"),
            false,
            Some((
                "attempts",
                &[
                    "attempt",
                    "startedAt",
                    "durationMs",
                    "response",
                    "error",
                    "nextAttemptAt",
                ],
            )),
        ),
        Command::Deliveries(DeliveriesCommand::Retry { remote, id }) => {
            remote_call(&remote, format!("/v1/deliveries/{id}/retry"), true, None)
        }
        Command::Endpoints(EndpointsCommand::List { remote }) => remote_call(
            &remote,
            "/v1/endpoints?limit=1000".into(),
            false,
            Some((
                "data",
                &[
                    "id",
                    "url",
                    "enabled",
                    "ordering",
                    "rateLimit",
                    "description",
                ],
            )),
        ),
        _ => unreachable!("only remote commands"),
    }
}

#[derive(clap::Args)]
struct LoadArgs {
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
    /// Receiver latency in ms, `N` or `MIN-MAX`.
    #[arg(long, default_value = "0")]
    latency_ms: String,
    /// Share of receiver answers that are 500 (retried).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
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
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

fn parse_latency(s: &str) -> anyhow::Result<(u64, u64)> {
    let bad = || anyhow::anyhow!("--latency-ms: expected N or MIN-MAX milliseconds, got `{s}`");
    match s.split_once('-') {
        Some((a, b)) => Ok((
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        )),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            Ok((n, n))
        }
    }
}

fn load(args: LoadArgs) -> anyhow::Result<()> {
    use switchyard::load::{LoadConfig, NodeSpec, OrderingKeys};
    anyhow::ensure!(args.endpoints > 0, "--endpoints must be at least 1");
    anyhow::ensure!(
        (0.0..1.0).contains(&args.error_rate),
        "--error-rate must be in [0, 1)"
    );
    let latency_ms = parse_latency(&args.latency_ms)?;
    anyhow::ensure!(
        args.ordering_keys != Some(0),
        "--ordering-keys must be at least 1"
    );
    anyhow::ensure!(
        (1..=1000).contains(&args.max_in_flight),
        "--max-in-flight must be 1 to 1000"
    );
    let data = tempfile::tempdir()?;
    let node = match (args.target, args.admin_token) {
        (Some(base), Some(admin_token)) => NodeSpec::Target { base, admin_token },
        _ => {
            let (env, label) = match &args.redis_url {
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
        error_rate: args.error_rate,
        rate_limit: args.rate_limit,
        keys: args.ordering_keys.map(|values| OrderingKeys {
            values,
            max_in_flight: args.max_in_flight,
        }),
        baseline: !args.no_baseline,
        warmup: !args.no_warmup,
        ingest_only: args.ingest_only,
        timeout: std::time::Duration::from_secs(args.timeout_secs),
        redis_url: args.redis_url.clone(),
        progress: true,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(switchyard::load::run(config))?;
    print!("{}", report.table());
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    anyhow::ensure!(
        report.lost == 0,
        "{} deliveries were not delivered before the timeout",
        report.lost
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, set } => match serve(config, &set) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Config(ConfigCommand::Defaults) => {
            print!("{}", switchyard::config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Check { config }) => match Config::load(config.as_deref()) {
            Ok(c) => {
                print!("{}", c.masked_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard config check: {e}");
                ExitCode::FAILURE
            }
        },
        command @ (Command::Deliveries(_) | Command::Endpoints(_)) => match remote(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Load(args) => match load(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard load: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Verify {
            secret,
            id,
            timestamp,
            signature,
        } => {
            let mut body = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut body) {
                eprintln!("switchyard verify: cannot read the body from stdin: {e}");
                return ExitCode::from(2);
            }
            let key = match SigningKey::parse(&secret) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("switchyard verify: --secret: {e}");
                    return ExitCode::from(2);
                }
            };
            let now = chrono::Utc::now().timestamp();
            match verify(&key, &id, &timestamp, &signature, &body, now) {
                Ok(()) => {
                    println!("valid");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("invalid: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("--set takes key=value, got `{s}`"))
}

fn serve(config: Option<PathBuf>, set: &[(String, String)]) -> anyhow::Result<()> {
    let config = Config::load_with(config.as_deref(), set)?;
    let _traces = switchyard::traces::init(&config)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (listen / SWITCHYARD_LISTEN)",
                    config.listen
                )
            })?;
        switchyard::node::run(config, listener, switchyard::node::shutdown_signal()).await?;
        Ok(())
    })
}
