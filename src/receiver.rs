//! `switchyard receiver`: the webhook receiver of tests and load runs as a process of its own,
//! so a node or a cluster started elsewhere has somewhere real to deliver, and a developer
//! sees each signed webhook arrive (`--print`).
//!
//! It is the same server as the in-process receiver of the tests ([`crate::load::receiver`]),
//! not a second one: TLS with a certificate from a CA made at start (`--ca-out` writes the
//! CA's PEM for a node's `extra_root_certs`), with a given certificate, or plain HTTP; answers
//! drawn from a latency range and a status mix; Standard Webhooks signatures checked with
//! `--secret`. What arrived is read by `switchyard load --receiver URL` through the control API
//! under `/_switchyard/` on the same listener ([`crate::load::receiver::control`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::load::receiver::{
    ArrivalFn, Behaviour, Control, Keep, Options, Received, Receiver, StatusMix, Transport, ca_pem,
    parse_error_rate, parse_latency,
};
use crate::signing::SigningKey;

/// The options of `switchyard receiver`.
#[derive(clap::Args)]
pub struct ReceiverArgs {
    /// Address to listen on, e.g. 127.0.0.1:9000 (port 0: any free port; the first line printed
    /// says which).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Plain http:// instead of TLS (a node delivers to http:// only with `serve --dev` or
    /// `allow_http`).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "ca_out"])]
    plain: bool,
    /// Offer only HTTP/1.1 over TLS (by default HTTP/2 too, and the client chooses).
    #[arg(long, conflicts_with = "plain")]
    http1: bool,
    /// PEM certificate chain to serve instead of a generated certificate (with --tls-key).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "ca_out"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Write the PEM of the CA that issued the generated certificate here; a node trusts it
    /// through SWITCHYARD_EXTRA_ROOT_CERTS (or `extra_root_certs`).
    #[arg(long, value_name = "FILE")]
    ca_out: Option<PathBuf>,
    /// Hold each answer this long, in ms: `N` or `MIN-MAX` (uniform).
    #[arg(long, value_name = "N|MIN-MAX", default_value = "0")]
    latency_ms: String,
    /// Fraction of webhooks answered 500, in [0, 1).
    #[arg(long, value_name = "R", conflicts_with = "status_mix")]
    error_rate: Option<String>,
    /// Statuses answered, with weights: e.g. 200=90,500=8,429=2.
    #[arg(long, value_name = "STATUS=WEIGHT,...")]
    status_mix: Option<String>,
    /// A signing secret (whsec_...); repeatable. Each webhook's signature is checked against
    /// them and counted bad when none matches.
    #[arg(long = "secret", value_name = "SECRET")]
    secrets: Vec<String>,
    /// Print each webhook as it arrives: id, timestamp, signature check, the JSON body.
    #[arg(long)]
    print: bool,
    /// Bearer token the control API (/_switchyard/...) requires; without it the control API
    /// is open to whoever reaches the listener.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SWITCHYARD_RECEIVER_TOKEN",
        hide_env_values = true
    )]
    control_token: Option<String>,
}

/// The answers the options ask for.
fn behaviour(args: &ReceiverArgs) -> anyhow::Result<Behaviour> {
    let statuses = match (&args.status_mix, &args.error_rate) {
        (Some(mix), _) => StatusMix::parse(mix)?,
        (None, Some(rate)) => StatusMix::error_rate(parse_error_rate(rate)?),
        (None, None) => StatusMix::error_rate(0.0),
    };
    Ok(Behaviour {
        latency_ms: parse_latency(&args.latency_ms)?,
        statuses,
    })
}

fn transport(args: &ReceiverArgs) -> anyhow::Result<Transport> {
    let transport = tls_transport(args)?;
    Ok(if args.http1 {
        transport.http1_only()
    } else {
        transport
    })
}

fn tls_transport(args: &ReceiverArgs) -> anyhow::Result<Transport> {
    if args.plain {
        return Ok(Transport::Plain);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok(Transport::from_pem_files(cert, key)?);
    }
    if let Some(out) = &args.ca_out {
        std::fs::write(out, ca_pem())
            .with_context(|| format!("--ca-out: cannot write {}", out.display()))?;
    }
    Ok(Transport::issued())
}

/// Runs `switchyard receiver` until Ctrl-C or SIGTERM.
pub fn run(args: ReceiverArgs) -> anyhow::Result<()> {
    let behaviour = behaviour(&args)?;
    let secrets = args
        .secrets
        .iter()
        .map(|s| SigningKey::parse(s).map_err(|e| anyhow::anyhow!("--secret: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let checks = !secrets.is_empty();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let options = Options {
            listen: args.listen,
            secrets,
            control: args
                .control_token
                .clone()
                .map_or(Control::Open, Control::Token),
            on_arrival: args.print.then(|| {
                Box::new(move |r: &Received, h: &http::HeaderMap, b: &[u8]| {
                    print_webhook(r, h, b, checks)
                }) as Box<ArrivalFn>
            }),
            ..Options::local(Keep::Arrivals, transport(&args)?)
        };
        let receiver = Receiver::serve(options, move |_, _| behaviour.reply()).await?;
        println!("switchyard receiver listening on {}", receiver.base());
        if args.control_token.is_none() && !receiver.addr.ip().is_loopback() {
            eprintln!(
                "switchyard receiver: warning: the control API is open to anyone who reaches {} \
                 (set --control-token)",
                receiver.addr
            );
        }
        if let Some(out) = &args.ca_out {
            println!(
                "  CA written to {} (a node trusts it with SWITCHYARD_EXTRA_ROOT_CERTS)",
                out.display()
            );
        }
        println!(
            "  webhooks at any path; arrivals at {}/_switchyard/arrivals{}",
            receiver.base(),
            if args.control_token.is_some() {
                " (Bearer --control-token)"
            } else {
                ""
            }
        );
        crate::node::shutdown_signal().await;
        eprintln!(
            "switchyard receiver: {} webhooks received, {} with a bad signature",
            receiver.count(),
            receiver.bad_signatures()
        );
        Ok::<(), anyhow::Error>(())
    })
}

/// The `--print` form of one webhook.
fn print_webhook(r: &Received, headers: &http::HeaderMap, body: &[u8], checks: bool) {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    let ts = h("webhook-timestamp");
    let when = ts
        .parse::<i64>()
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or(String::new(), |t| format!(" ({})", t.to_rfc3339()));
    let signature = match (checks, r.signature_ok) {
        (false, _) => "not checked (no --secret)",
        (true, Some(true)) => "ok",
        _ => "BAD (matches no --secret)",
    };
    let body = serde_json::from_slice::<serde_json::Value>(body)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "── webhook {} → {} answered {}\n   timestamp {ts}{when}\n   signature {signature}\n{}\n",
        h("webhook-id"),
        r.path,
        r.answered,
        body.lines()
            .map(|l| format!("   {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = out.flush();
}
