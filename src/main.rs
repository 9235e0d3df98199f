//! The `switchyard` command: parses the CLI, loads config, starts tracing, calls the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard::config::Config;
use switchyard::signing::{SigningKey, verify};

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
        /// A TOML config file (keys as in config.rs; SWITCHYARD_* variables override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: {e:#}");
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

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,switchyard=info".into()),
        )
        .init();
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
