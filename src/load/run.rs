//! One load run: set up, send, wait, measure. The receivers are the built-in one or remote
//! ones ([`super::arrivals`]); sending is [`super::send`], measuring [`super::measure`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::arrivals::{Collected, ReceiverUnreachable, Source};
use super::measure::{measure, now_ms};
use super::receiver::{Behaviour, Keep, Options, Receiver, StatusMix, Transport, ca_pem_path};
use super::report::Report;
use super::send::{Accepted, send_all};

/// Which node to load.
pub enum NodeSpec {
    /// A running node (e.g. a cluster behind a balancer) and its admin token.
    Target { base: String, admin_token: String },
    /// `binary serve` started here as a child, with these settings added (`SWITCHYARD_*`, and
    /// `RUST_LOG`, `warn` unless given).
    Spawn {
        binary: PathBuf,
        env: Vec<(String, String)>,
        label: String,
    },
}

/// What to run.
pub struct LoadConfig {
    pub node: NodeSpec,
    pub endpoints: usize,
    pub events: usize,
    /// Events per second offered; `None`: as fast as the API accepts them.
    pub rate: Option<f64>,
    /// Events per batch request.
    pub batch: usize,
    /// Batch requests in flight.
    pub concurrency: usize,
    /// The receiver holds each request for a time drawn uniformly from this range.
    pub latency_ms: (u64, u64),
    /// Share of requests the receiver answers 500 (they are retried).
    pub error_rate: f64,
    /// Per-endpoint `rateLimit.perSecond` (burst 1); `None`: unlimited.
    pub rate_limit: Option<u32>,
    /// Strict order per ordering key instead of per endpoint; `None`: one sequence each.
    pub keys: Option<OrderingKeys>,
    pub baseline: bool,
    /// Before measuring, send one event to every endpoint and wait for it: connections are
    /// open and endpoint actors started, as on a node that has been running. Its deliveries
    /// are not counted.
    pub warmup: bool,
    /// Measure the batch API alone: the receiver holds every request (an hour), so after each
    /// endpoint's first attempt its deliveries are stored and queued but not sent, and the run
    /// ends when the last batch is accepted (no warm-up, no baseline, no delivery figures).
    pub ingest_only: bool,
    /// The built-in receiver offers only HTTP/1.1 (otherwise HTTP/2 too, which the node takes
    /// when `deliver_http2` is on; the raw-client baseline speaks HTTP/1.1 either way).
    pub http1: bool,
    /// How long to wait for every delivery.
    pub timeout: Duration,
    /// Base URLs of receivers running elsewhere (`switchyard receiver`), the endpoints spread
    /// over them; empty: the built-in receiver. With them, `latency_ms`, `error_rate`,
    /// `ingest_only` and the baseline are the receivers' business, not the run's.
    pub receivers: Vec<String>,
    /// The receivers' `--control-token`.
    pub receiver_token: Option<String>,
    /// A PEM file of roots to trust for the receivers' control API (their `--ca-out`).
    pub receiver_ca: Option<PathBuf>,
    /// The Redis the node uses, to measure what the run costs it (`INFO` before and after).
    pub redis_url: Option<String>,
    pub progress: bool,
}

/// Endpoints ordered per key: each endpoint's events cycle over `values` values of
/// `member.key` (its `orderingKey`), and up to `max_in_flight` of them are in flight at once.
#[derive(Debug, Clone, Copy)]
pub struct OrderingKeys {
    pub values: usize,
    pub max_in_flight: u32,
}

impl OrderingKeys {
    /// The key value of event `seq` (the `seq`-th event overall).
    pub(super) fn of(&self, seq: usize, endpoints: usize) -> usize {
        (seq / endpoints.max(1)) % self.values.max(1)
    }
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot start the node: {0}")]
    Node(String),
    #[error("the API refused a setup call: {0}")]
    Api(String),
    #[error(transparent)]
    Receiver(#[from] ReceiverUnreachable),
}

struct NodeChild {
    child: Child,
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> Result<Value, LoadError> {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|e| LoadError::Api(e.to_string()))?;
    let status = resp.status();
    let value: Value = resp
        .json()
        .await
        .map_err(|e| LoadError::Api(e.to_string()))?;
    if status.is_success() {
        Ok(value)
    } else {
        Err(LoadError::Api(format!("{status}: {value}")))
    }
}

async fn start_node(
    node: &NodeSpec,
) -> Result<(String, String, Option<NodeChild>, String), LoadError> {
    match node {
        NodeSpec::Target { base, admin_token } => {
            Ok((base.clone(), admin_token.clone(), None, "target".into()))
        }
        NodeSpec::Spawn { binary, env, label } => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| LoadError::Node(e.to_string()))?
                .port();
            let token = format!("load-{}", crate::workspace::generate_api_key());
            let child = Command::new(binary)
                .arg("serve")
                .env("RUST_LOG", "warn")
                .envs(env.iter().cloned())
                .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{port}"))
                .env("SWITCHYARD_ADMIN_TOKEN", &token)
                .env("SWITCHYARD_ALLOW_PRIVATE_CIDRS", "127.0.0.1/32")
                .env("SWITCHYARD_EXTRA_ROOT_CERTS", ca_pem_path())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| LoadError::Node(format!("{}: {e}", binary.display())))?;
            let child = NodeChild { child };
            let base = format!("http://127.0.0.1:{port}");
            let http = reqwest::Client::new();
            for _ in 0..200 {
                if http
                    .get(format!("{base}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return Ok((base, token, Some(child), label.clone()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(LoadError::Node(
                "the node did not become ready in 10 s".into(),
            ))
        }
    }
}

/// The receivers of a run: the built-in one (answering as `cfg` says), or those of
/// `cfg.receivers`.
async fn receivers(cfg: &LoadConfig) -> Result<Source, LoadError> {
    if !cfg.receivers.is_empty() {
        let ca = cfg.receiver_ca.as_deref();
        let token = cfg.receiver_token.clone();
        return Ok(Source::remote(&cfg.receivers, token, ca).await?);
    }
    let behaviour = Behaviour {
        // Ingest alone: every request is held, so deliveries are stored and queued, not sent.
        latency_ms: if cfg.ingest_only {
            (3_600_000, 3_600_000)
        } else {
            cfg.latency_ms
        },
        statuses: StatusMix::error_rate(cfg.error_rate),
    };
    let transport = if cfg.http1 {
        Transport::issued().http1_only()
    } else {
        Transport::issued()
    };
    let options = Options::local(Keep::Arrivals, transport);
    let receiver = Receiver::start_with(options, move |_, _| behaviour.reply()).await;
    Ok(Source::local(receiver))
}

/// A workspace with `cfg.endpoints` endpoints spread over `bases` (`{base}/ep/{i}`), each with
/// the rule that sends it the events of `member.id == i`; returns the workspace's API key.
async fn set_up(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    cfg: &LoadConfig,
    bases: &[String],
) -> Result<String, LoadError> {
    let ws = post(
        http,
        &format!("{base}/v1/workspaces"),
        token,
        &json!({"name": "load"}),
    )
    .await?;
    let key = ws["apiKey"].as_str().unwrap_or_default().to_string();
    for i in 0..cfg.endpoints {
        let url = format!("{}/ep/{i}", bases[i % bases.len()]);
        let mut spec = json!({"url": url, "retry": {"maxAttempts": 50, "initialDelayMs": 100, "multiplier": 1.0}});
        if let Some(limit) = cfg.rate_limit {
            spec["rateLimit"] = json!({"perSecond": limit, "burst": 1});
        }
        if let Some(keys) = cfg.keys {
            spec["orderingKey"] = json!("member.key");
            spec["maxInFlight"] = json!(keys.max_in_flight);
        }
        let ep = post(http, &format!("{base}/v1/endpoints"), &key, &spec).await?;
        let rule = json!({"name": format!("to {i}"), "events": ["member:updated"],
            "conditions": {"field": "member.id", "op": "eq", "value": i}, "actions": [{"type": "webhook", "endpointId": ep["id"]}]});
        post(http, &format!("{base}/v1/event-rules"), &key, &rule).await?;
    }
    Ok(key)
}

fn progress_bar(cfg: &LoadConfig) -> Option<indicatif::ProgressBar> {
    cfg.progress.then(|| {
        let bar = indicatif::ProgressBar::new(cfg.events as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:40}] {pos}/{len} delivered ({per_sec})",
            )
            .expect("template"),
        );
        bar
    })
}

/// Runs one load and returns its report.
pub async fn run(cfg: LoadConfig) -> Result<Report, LoadError> {
    let mut source = receivers(&cfg).await?;
    let (base, token, child, label) = start_node(&cfg.node).await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| LoadError::Api(e.to_string()))?;
    let key = set_up(&http, &base, &token, &cfg, &source.bases()).await?;
    let mut collected = Collected::default();
    if cfg.warmup && !cfg.ingest_only {
        warm_up(&http, &base, &key, &cfg, &mut source, &mut collected).await?;
    }
    let pid = child.as_ref().map(|c| c.child.id());
    let cpu_before = pid.and_then(cpu_seconds);
    let redis_before = match &cfg.redis_url {
        Some(url) => super::redis_usage::snapshot(url).await,
        None => None,
    };
    let bar = progress_bar(&cfg);
    let (started, started_ms) = (Instant::now(), now_ms());
    let accepted = send_all(&http, &base, &key, &cfg, started, started_ms).await;
    let accept_secs = ((accepted.last_accept - started_ms) / 1000.0).max(1e-6);
    let accepted_per_s = (cfg.events - accepted.unaccepted) as f64 / accept_secs;
    if cfg.ingest_only {
        let (cpu, rss) = node_usage(pid, cpu_before);
        let redis = redis_usage(&cfg, redis_before.as_ref(), cfg.events).await;
        return Ok(Report {
            node_cpu_us_per_delivery: cpu.map(|c| c * 1e6 / cfg.events.max(1) as f64),
            redis,
            store: label,
            ingest_only: true,
            endpoints: cfg.endpoints,
            events: cfg.events,
            unaccepted: accepted.unaccepted,
            offered_rate: cfg.rate,
            events_accepted_per_s: accepted_per_s,
            node_cpu_s: cpu,
            node_peak_rss_mib: rss,
            ..Report::default()
        });
    }
    let deadline = Instant::now() + cfg.timeout;
    let unreachable = loop {
        let unreachable = source.poll(&mut collected).await.err();
        let delivered = collected.delivered(|id| accepted.deliveries.contains_key(id));
        if let Some(bar) = &bar {
            bar.set_position(delivered as u64);
        }
        if delivered >= accepted.deliveries.len() || Instant::now() > deadline {
            break unreachable;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let (Some(e), true) = (unreachable, cfg.progress) {
        eprintln!("switchyard load: at the end of the run, {e}");
    }
    let (cpu, rss) = node_usage(pid, cpu_before);
    let redis = redis_usage(&cfg, redis_before.as_ref(), accepted.deliveries.len()).await;
    let created = created_at_ms(&http, &base, &key, &accepted).await;
    let mut report = measure(
        &collected.arrivals,
        &accepted,
        created.as_ref(),
        started_ms,
        &cfg,
    );
    report.store = label;
    report.events_accepted_per_s = accepted_per_s;
    report.node_cpu_s = cpu;
    report.node_cpu_us_per_delivery = cpu.map(|c| c * 1e6 / report.deliveries.max(1) as f64);
    report.node_peak_rss_mib = rss;
    report.redis = redis;
    report.arrival_clock = match cfg.receivers.len() {
        0 => "this process's clock (built-in receiver)".into(),
        n => {
            format!("the clocks of {n} remote receiver(s); latencies include any skew to this one")
        }
    };
    drop(child);
    if let (true, Some(receiver)) = (cfg.baseline, source.local_receiver()) {
        let requests = accepted.deliveries.len().clamp(1_000, 50_000);
        let rate = super::baseline::raw_client_rate(
            &receiver.url,
            ca_pem_path(),
            requests,
            cfg.endpoints.clamp(1, 512),
        )
        .await;
        report.baseline_per_s = Some(rate);
        report.ratio = Some(report.deliveries_per_s / rate);
    }
    Ok(report)
}

/// Sends one event per endpoint (batches of 100) and waits until each has arrived. Its
/// deliveries are not counted.
async fn warm_up(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    cfg: &LoadConfig,
    source: &mut Source,
    collected: &mut Collected,
) -> Result<(), LoadError> {
    let ids: Vec<usize> = (0..cfg.endpoints).collect();
    let mut warm = std::collections::HashSet::new();
    for chunk in ids.chunks(100) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"event": "member:updated", "member": {"id": i, "warmup": true}}))
            .collect();
        let answer = post(
            http,
            &format!("{base}/v1/events/batch"),
            key,
            &json!({"events": events}),
        )
        .await?;
        let results = answer["results"].as_array().into_iter().flatten();
        let deliveries = results.flat_map(|r| r["deliveries"].as_array().into_iter().flatten());
        warm.extend(deliveries.filter_map(|d| d.as_str().map(str::to_string)));
    }
    let deadline = Instant::now() + cfg.timeout;
    loop {
        let _ = source.poll(collected).await;
        if collected.delivered(|id| warm.contains(id)) >= warm.len() {
            collected.recount();
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LoadError::Api(
                "the warm-up deliveries did not arrive".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the run cost Redis since `before`, per delivery.
async fn redis_usage(
    cfg: &LoadConfig,
    before: Option<&super::redis_usage::Snapshot>,
    deliveries: usize,
) -> Option<super::redis_usage::RedisUsage> {
    let after = super::redis_usage::snapshot(cfg.redis_url.as_deref()?).await?;
    Some(before?.usage(&after, deliveries))
}

/// The node's CPU seconds since `cpu_before` and its peak RSS in MiB, when it is our child.
fn node_usage(pid: Option<u32>, cpu_before: Option<f64>) -> (Option<f64>, Option<f64>) {
    let cpu = pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let rss = pid
        .and_then(|p| proc_field(p, "VmHWM:"))
        .map(|kib| kib as f64 / 1024.0);
    (cpu, rss)
}

/// Each measured delivery's stored `createdAt` (unix ms), read back through
/// `GET /v1/deliveries` after the run (so it costs the run nothing), for accept-to-arrival.
/// `None` when the list cannot be read.
async fn created_at_ms(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    accepted: &Accepted,
) -> Option<HashMap<String, f64>> {
    let mut created: HashMap<String, f64> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/deliveries?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http
            .get(&url)
            .bearer_auth(key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        for d in page["data"].as_array()? {
            if !accepted.deliveries.contains_key(d["id"].as_str()?) {
                continue; // the warm-up's
            }
            let at = chrono::DateTime::parse_from_rfc3339(d["createdAt"].as_str()?).ok()?;
            created.insert(d["id"].as_str()?.to_string(), at.timestamp_millis() as f64);
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    Some(created)
}
