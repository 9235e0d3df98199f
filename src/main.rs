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
        /// Local development: loopback and http:// endpoints allowed (never in production).
        #[arg(long)]
        dev: bool,
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
    Load(switchyard::load::cli::LoadArgs),
    /// Receive webhooks (tests, load runs, local development): TLS or plain HTTP, simulated
    /// latency and statuses, signature checks, `--print`; a control API for `load --receiver`.
    Receiver(switchyard::receiver::ReceiverArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, set, dev } => match serve(config, set, dev) {
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
        Command::Load(args) => match switchyard::load::cli::load(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard load: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Receiver(args) => match switchyard::receiver::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard receiver: {e:#}");
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

fn serve(config: Option<PathBuf>, mut set: Vec<(String, String)>, dev: bool) -> anyhow::Result<()> {
    if dev {
        set.push(("dev".into(), "true".into()));
    }
    let config = Config::load_with(config.as_deref(), &set)?;
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
