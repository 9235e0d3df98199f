//! One load run: set up, send, wait, measure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::receiver::{Keep, Receiver, Reply, ca_pem_path};
use super::report::{Percentiles, Report};

/// Which node to load.
pub enum NodeSpec {
    /// A running node (e.g. a cluster behind a balancer) and its admin token.
    Target { base: String, admin_token: String },
    /// `binary serve` started here as a child, with these `SWITCHYARD_*` settings added.
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
    /// How long to wait for every delivery.
    pub timeout: Duration,
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
    fn of(&self, seq: usize, endpoints: usize) -> usize {
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
                .envs(env.iter().cloned())
                .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{port}"))
                .env("SWITCHYARD_ADMIN_TOKEN", &token)
                .env("SWITCHYARD_ALLOW_PRIVATE_CIDRS", "127.0.0.1/32")
                .env("SWITCHYARD_EXTRA_ROOT_CERTS", ca_pem_path())
                .env("RUST_LOG", "warn")
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

/// Runs one load and returns its report.
pub async fn run(cfg: LoadConfig) -> Result<Report, LoadError> {
    let (lo, hi) = cfg.latency_ms;
    let error_rate = cfg.error_rate;
    let (lo, hi) = if cfg.ingest_only {
        (3_600_000, 3_600_000)
    } else {
        (lo, hi)
    };
    let receiver = Receiver::start_keeping(Keep::Arrivals, move |_, _| {
        let status = if rand::random::<f64>() < error_rate {
            500
        } else {
            200
        };
        Reply {
            delay: Duration::from_millis(if hi > lo {
                rand::random_range(lo..=hi)
            } else {
                lo
            }),
            ..Reply::status(status)
        }
    })
    .await;
    let (base, token, child, label) = start_node(&cfg.node).await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| LoadError::Api(e.to_string()))?;
    let ws = post(
        &http,
        &format!("{base}/v1/workspaces"),
        &token,
        &json!({"name": "load"}),
    )
    .await?;
    let key = ws["apiKey"].as_str().unwrap_or_default().to_string();
    for i in 0..cfg.endpoints {
        let mut spec = json!({"url": format!("{}/ep/{i}", receiver.url), "retry": {"maxAttempts": 50, "initialDelayMs": 100, "multiplier": 1.0}});
        if let Some(limit) = cfg.rate_limit {
            spec["rateLimit"] = json!({"perSecond": limit, "burst": 1});
        }
        if let Some(keys) = cfg.keys {
            spec["orderingKey"] = json!("member.key");
            spec["maxInFlight"] = json!(keys.max_in_flight);
        }

        let ep = post(&http, &format!("{base}/v1/endpoints"), &key, &spec).await?;
        let rule = json!({"name": format!("to {i}"), "events": ["member:updated"],
            "conditions": {"field": "member.id", "op": "eq", "value": i}, "actions": [{"type": "webhook", "endpointId": ep["id"]}]});
        post(&http, &format!("{base}/v1/event-rules"), &key, &rule).await?;
    }
    let warm = if cfg.warmup && !cfg.ingest_only {
        warm_up(&http, &base, &key, &cfg, &receiver).await?
    } else {
        0
    };
    let pid = child.as_ref().map(|c| c.child.id());
    let cpu_before = pid.and_then(cpu_seconds);
    let redis_before = match &cfg.redis_url {
        Some(url) => super::redis_usage::snapshot(url).await,
        None => None,
    };

    let bar = cfg.progress.then(|| {
        let bar = indicatif::ProgressBar::new(cfg.events as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:40}] {pos}/{len} delivered ({per_sec})",
            )
            .expect("template"),
        );
        bar
    });
    let started = Instant::now();
    let accepted = send_all(&http, &base, &key, &cfg, started).await;
    let accept_secs = accepted
        .last_accept
        .duration_since(started)
        .as_secs_f64()
        .max(1e-6);
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
            offered_rate: cfg.rate,
            events_accepted_per_s: cfg.events as f64 / accept_secs,
            node_cpu_s: cpu,
            node_peak_rss_mib: rss,
            ..Report::default()
        });
    }
    let expected = accepted.deliveries.len() + warm;
    let deadline = Instant::now() + cfg.timeout;
    loop {
        let unique = unique_delivered(&receiver);
        if let Some(bar) = &bar {
            bar.set_position(unique as u64);
        }
        if unique >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (cpu, rss) = node_usage(pid, cpu_before);
    let redis = redis_usage(&cfg, redis_before.as_ref(), accepted.deliveries.len()).await;
    let created = created_at_ms(&http, &base, &key, &accepted).await;
    let mut report = measure(&receiver, &accepted, created.as_ref(), started, &cfg);
    report.store = label;
    report.events_accepted_per_s = cfg.events as f64 / accept_secs;
    report.node_cpu_s = cpu;
    report.node_cpu_us_per_delivery = cpu.map(|c| c * 1e6 / report.deliveries.max(1) as f64);
    report.node_peak_rss_mib = rss;
    report.redis = redis;
    drop(child);
    if cfg.baseline {
        let requests = expected.clamp(1_000, 50_000);
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

/// Distinct deliveries answered 200.
fn unique_delivered(receiver: &Receiver) -> usize {
    receiver.with_received(|r| {
        let mut seen = std::collections::HashSet::new();
        r.iter()
            .filter(|x| x.answered == 200 && seen.insert(x.header("webhook-id").to_string()))
            .count()
    })
}

/// Sends one event per endpoint (batches of 100) and waits until each has arrived; returns
/// how many deliveries that was.
async fn warm_up(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    cfg: &LoadConfig,
    receiver: &Receiver,
) -> Result<usize, LoadError> {
    let ids: Vec<usize> = (0..cfg.endpoints).collect();
    for chunk in ids.chunks(100) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"event": "member:updated", "member": {"id": i, "warmup": true}}))
            .collect();
        post(
            http,
            &format!("{base}/v1/events/batch"),
            key,
            &json!({"events": events}),
        )
        .await?;
    }
    let deadline = Instant::now() + cfg.timeout;
    while unique_delivered(receiver) < cfg.endpoints {
        if Instant::now() > deadline {
            return Err(LoadError::Api(
                "the warm-up deliveries did not arrive".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(cfg.endpoints)
}

/// An accepted delivery: its endpoint, its event's seq, and its batch's times.
#[derive(Debug, Clone, Copy)]
struct Sent {
    ep: usize,
    seq: usize,
    /// When its batch was first sent: its events were ingested no earlier.
    first_sent: Instant,
    /// When the batch's request that was answered 202 was sent (latency counts from it).
    sent: Instant,
    /// When that 202 came back: its events were ingested no later.
    answered: Instant,
}

struct Accepted {
    /// delivery id → its event and batch
    deliveries: HashMap<String, Sent>,
    /// When the last batch's 202 came back.
    last_accept: Instant,
}

async fn send_all(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    cfg: &LoadConfig,
    started: Instant,
) -> Accepted {
    let url = Arc::new(format!("{base}/v1/events/batch"));
    let gate = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let batches = cfg.events.div_ceil(cfg.batch.max(1));
    for b in 0..batches {
        if let Some(rate) = cfg.rate {
            let due = started + Duration::from_secs_f64((b * cfg.batch) as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = gate.clone().acquire_owned().await.expect("open");
        let range = b * cfg.batch..((b + 1) * cfg.batch).min(cfg.events);
        let events: Vec<Value> = range
            .clone()
            .map(|k| {
                let mut member = json!({"id": k % cfg.endpoints, "seq": k});
                if let Some(keys) = cfg.keys {
                    member["key"] = json!(keys.of(k, cfg.endpoints));
                }
                json!({"event": "member:updated", "member": member})
            })
            .collect();
        let (http, url, key, endpoints) =
            (http.clone(), url.clone(), key.to_string(), cfg.endpoints);
        tasks.spawn(async move {
            let _permit = permit;
            let body = json!({"events": events});
            let first_sent = Instant::now();
            for _ in 0..20 {
                // Latency counts from the moment the batch is sent: a delivery can arrive before
                // its batch's 202 is back, so the 202 would under-count it.
                let sent = Instant::now();
                if let Ok(resp) = http
                    .post(url.as_str())
                    .bearer_auth(&key)
                    .header("Idempotency-Key", format!("load-{}", range.start))
                    .json(&body)
                    .send()
                    .await
                    && resp.status().as_u16() == 202
                    && let Ok(answer) = resp.json::<Value>().await
                {
                    let answered = Instant::now();
                    let mut out = Vec::new();
                    for (i, r) in answer["results"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        let k = range.start + i;
                        for d in r["deliveries"].as_array().into_iter().flatten() {
                            out.push((
                                d.as_str().unwrap_or_default().to_string(),
                                Sent {
                                    ep: k % endpoints,
                                    seq: k,
                                    first_sent,
                                    sent,
                                    answered,
                                },
                            ));
                        }
                    }
                    return (out, answered);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (Vec::new(), started)
        });
    }
    let mut deliveries = HashMap::new();
    let mut last_accept = started;
    while let Some(Ok((batch, answered))) = tasks.join_next().await {
        last_accept = last_accept.max(answered);
        deliveries.extend(batch);
    }
    Accepted {
        deliveries,
        last_accept,
    }
}

/// Deliveries of one sequence (first arrivals, in arrival order) that arrived after one that
/// was ingested later than them. Ingest order is known within a batch (its events in order)
/// and between batches when one's 202 came back before the other was first sent; batches in
/// flight together have no order between them.
fn order_violations(arrivals: &[Sent], batch: usize) -> usize {
    let mut latest_sent: Option<Instant> = None;
    let mut highest_in_batch: HashMap<usize, usize> = HashMap::new();
    let mut violations = 0;
    for a in arrivals {
        let later_batch_first = latest_sent.is_some_and(|s| s > a.answered);
        let later_in_batch = highest_in_batch
            .get(&(a.seq / batch))
            .is_some_and(|&s| s > a.seq);
        if later_batch_first || later_in_batch {
            violations += 1;
        }
        latest_sent = Some(latest_sent.map_or(a.first_sent, |s| s.max(a.first_sent)));
        let h = highest_in_batch.entry(a.seq / batch).or_insert(a.seq);
        *h = (*h).max(a.seq);
    }
    violations
}

/// The report of the deliveries' first arrivals; with `created` (see [`created_at_ms`]) also
/// accept-to-arrival.
fn measure(
    receiver: &Receiver,
    accepted: &Accepted,
    created: Option<&HashMap<String, f64>>,
    started: Instant,
    cfg: &LoadConfig,
) -> Report {
    receiver.with_received(|got| {
        let mut first: HashMap<&str, Instant> = HashMap::new();
        let mut since_accept = Vec::new();
        let mut duplicates = 0;
        let mut per_endpoint: HashMap<usize, Vec<(Instant, usize)>> = HashMap::new();
        // One sequence per endpoint, or per (endpoint, key value) with ordering keys; first
        // arrivals in arrival order.
        let mut per_sequence: HashMap<(usize, usize), Vec<Sent>> = HashMap::new();
        for r in got.iter().filter(|r| r.answered == 200) {
            let id = r.header("webhook-id");
            let Some(&sent) = accepted.deliveries.get(id) else {
                continue;
            };
            let (ep, seq) = (sent.ep, sent.seq);
            if first.contains_key(id) {
                duplicates += 1;
                continue;
            }
            first.insert(id, r.at);
            if let Some(c) = created.and_then(|m| m.get(id)) {
                since_accept.push(r.wall_ms - c);
            }
            let key = cfg.keys.map_or(0, |k| k.of(seq, cfg.endpoints));
            per_sequence.entry((ep, key)).or_default().push(sent);
            per_endpoint.entry(ep).or_default().push((r.at, seq));
        }
        let latencies: Vec<f64> = first
            .iter()
            .filter_map(|(id, at)| {
                accepted
                    .deliveries
                    .get(*id)
                    .map(|d| at.duration_since(d.sent).as_secs_f64() * 1000.0)
            })
            .collect();
        let last = first.values().max().copied().unwrap_or(started);
        // Deliveries while ingest ran (up to the last 202) and after it, each over its own time.
        let during = first
            .values()
            .filter(|at| **at <= accepted.last_accept)
            .count();
        let ingest_secs = accepted.last_accept.duration_since(started).as_secs_f64();
        let after_secs = last
            .saturating_duration_since(accepted.last_accept)
            .as_secs_f64();
        let during_ingest_per_s = (ingest_secs > 0.0).then(|| during as f64 / ingest_secs);
        // Too short a tail says nothing of the rate a backlog drains at.
        let after_ingest_per_s = (after_secs >= 0.2 && first.len() - during >= 100)
            .then(|| (first.len() - during) as f64 / after_secs);
        let order_violations = per_sequence
            .values()
            .map(|v| order_violations(v, cfg.batch.max(1)))
            .sum();
        let rate_limit_violations = cfg.rate_limit.map_or(0, |limit| {
            per_endpoint
                .values()
                .filter(|v| {
                    (0..v.len()).any(|i| {
                        v[i..]
                            .iter()
                            .take_while(|x| x.0.duration_since(v[i].0) < Duration::from_secs(1))
                            .count()
                            > limit as usize + 1
                    })
                })
                .count()
        });
        Report {
            endpoints: cfg.endpoints,
            events: cfg.events,
            offered_rate: cfg.rate,
            deliveries: first.len(),
            deliveries_per_s: first.len() as f64
                / last.duration_since(started).as_secs_f64().max(1e-6),
            during_ingest_per_s,
            after_ingest_per_s,
            latency_ms: Percentiles::of(latencies),
            accept_latency_ms: (!since_accept.is_empty()).then(|| Percentiles::of(since_accept)),
            lost: accepted.deliveries.len().saturating_sub(first.len()),
            duplicates,
            order_violations,
            ordering_keys: cfg.keys.map(|k| k.values),
            rate_limit_violations,
            ..Report::default()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(seq: usize, first_sent: Instant, answered: Instant) -> Sent {
        Sent {
            ep: 0,
            seq,
            first_sent,
            sent: first_sent,
            answered,
        }
    }

    #[test]
    fn order_is_checked_within_a_batch_and_between_batches_that_did_not_overlap() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        // Batch 0 (seqs 0-9) answered at 10 ms; batch 1 (10-19) sent at 20 ms; batch 2
        // (20-29) sent at 5 ms, with batch 0 still in flight.
        let (a, b, c) = (
            sent(3, ms(0), ms(10)),
            sent(13, ms(20), ms(30)),
            sent(23, ms(5), ms(15)),
        );
        assert_eq!(order_violations(&[a, b], 10), 0);
        assert_eq!(
            order_violations(&[b, a], 10),
            1,
            "a's batch ended before b's began"
        );
        assert_eq!(
            order_violations(&[c, a], 10),
            0,
            "overlapping batches have no order"
        );
        let a2 = sent(5, ms(0), ms(10));
        assert_eq!(order_violations(&[a2, a], 10), 1, "within a batch");
    }
}
