//! Test fixtures: a real `redis-server`, real HTTPS receivers, a node on port 0, an API client.

pub mod process;
pub mod receivers;

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::config::Config;
use tokio::sync::oneshot;

pub use switchyard::load::receiver::{self, Receiver, Reply};

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A receiver that answers after `delay` and fails (503) the first attempt of each delivery
/// with probability `p`; retries of a delivery always succeed.
pub async fn failing_first_attempts(p: f64, delay: Duration) -> Receiver {
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    Receiver::start(move |r, _| {
        let first = seen
            .lock()
            .unwrap()
            .insert(r.header("webhook-id").to_string());
        let fail = first && rand::random::<f64>() < p;
        Reply {
            delay,
            ..Reply::status(if fail { 503 } else { 200 })
        }
    })
    .await
}

/// Verifies a received webhook's signature with `secret`, now.
pub fn verify_received(
    secret: &str,
    r: &switchyard::load::receiver::Received,
) -> Result<(), switchyard::signing::SignatureError> {
    let key = switchyard::signing::SigningKey::parse(secret).unwrap();
    let now = chrono::Utc::now().timestamp();
    switchyard::signing::verify(
        &key,
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        r.header("webhook-signature"),
        &r.body,
        now,
    )
}

/// Waits until every one of `ids` has reached `receiver` at least once.
pub async fn wait_all_arrived<'a>(
    receiver: &Receiver,
    ids: impl IntoIterator<Item = &'a String> + Clone,
    timeout: Duration,
) {
    wait_until(timeout, "every acknowledged delivery to arrive", || async {
        let got: std::collections::HashSet<String> = receiver.with_received(|r| {
            r.iter()
                .map(|x| x.header("webhook-id").to_string())
                .collect()
        });
        ids.clone().into_iter().all(|id| got.contains(id))
    })
    .await;
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of this test's own, on a free port, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub url: String,
    port: u16,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// A throwaway Redis (no persistence).
    pub fn start() -> Redis {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// A Redis with AOF on and fsync at every write, restartable with its data.
    pub fn start_aof() -> Redis {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    fn start_with(persistence: &[&str]) -> Redis {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let args: Vec<String> = persistence.iter().map(|s| s.to_string()).collect();
            let mut redis = Redis {
                child: None,
                url: format!("redis://127.0.0.1:{port}/"),
                port,
                args,
                _dir: dir,
            };
            redis.spawn();
            if redis.wait_ready() {
                return redis;
            }
        }
        panic!("could not start redis-server");
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(&self.args)
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/run)");
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL: with AOF `always`, every acknowledged write is on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
        assert!(self.wait_ready(), "redis-server did not come back");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let client = redis::Client::open(self.url.as_str()).unwrap();
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A command on a fresh connection.
    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let mut c = redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        cmd.query(&mut c).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three masters (no replicas) on free ports, made with
/// `redis-cli --cluster create`; every server is killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    /// The seed URLs, comma-separated (the form `redis_url` takes).
    pub url: String,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                Redis::start_with(&[
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every master must see all 16384 slots assigned before it routes commands.
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info: String = node.cmd(redis::cmd("CLUSTER").arg("INFO"));
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never became ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let url = nodes
            .iter()
            .map(|n| n.url.clone())
            .collect::<Vec<_>>()
            .join(",");
        RedisCluster { nodes, url }
    }

    /// The number of keys on each master.
    pub fn key_counts(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.cmd(&mut redis::cmd("DBSIZE")))
            .collect()
    }
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A unique key prefix per test, so tests can share a Redis.
pub fn prefix(test: &str) -> String {
    format!("t-{test}-{:08x}", rand::random::<u32>())
}

/// The configuration of a test node: loopback allowed, our test CA trusted, 4 partitions.
pub fn test_config(redis: &Redis, prefix: &str) -> Config {
    test_config_at(&redis.url, prefix)
}

/// The same, on the Redis (or Redis Cluster seeds) at `url`.
pub fn test_config_at(url: &str, prefix: &str) -> Config {
    Config {
        redis_url: Some(url.to_string()),
        key_prefix: prefix.into(),
        admin_token: Some(ADMIN_TOKEN.into()),
        partitions: 4,
        allow_private_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        extra_root_certs: Some(receiver::ca_pem_path().into()),
        lease_ms: 2_000,
        heartbeat_ms: 250,
        ..Config::default()
    }
}

/// The same, on the embedded store in `dir` (no Redis).
pub fn embedded_config(dir: &std::path::Path) -> Config {
    Config {
        redis_url: None,
        data_dir: dir.to_path_buf(),
        admin_token: Some(ADMIN_TOKEN.into()),
        partitions: 4,
        allow_private_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        extra_root_certs: Some(receiver::ca_pem_path().into()),
        ..Config::default()
    }
}

/// A node running in this process.
pub struct Node {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    pub async fn start(config: Config) -> Node {
        static TRACING: OnceLock<()> = OnceLock::new();
        TRACING.get_or_init(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            switchyard::node::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("node runs");
        });
        let node = Node {
            base,
            stop: Some(tx),
            done: Some(done),
        };
        let api = Api::new(&node.base, "");
        wait_until(
            Duration::from_secs(10),
            "the node to answer /readyz",
            || async { api.get("/readyz").await.0 == 200 },
        )
        .await;
        node
    }

    pub fn api(&self, token: &str) -> Api {
        Api::new(&self.base, token)
    }

    /// Creates a workspace through the admin API and returns a client with its key.
    pub async fn workspace(&self, name: &str) -> Api {
        let (status, body) = self
            .api(ADMIN_TOKEN)
            .post("/v1/workspaces", json!({"name": name}))
            .await;
        assert_eq!(status, 201, "{body}");
        self.api(body["apiKey"].as_str().unwrap())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap();
        }
    }
}

/// A JSON client of the API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: base.into(),
            token: token.into(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let req = if self.token.is_empty() {
            req
        } else {
            req.bearer_auth(&self.token)
        };
        let resp = req.send().await.expect("the API answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
        };
        (status, body)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The status of a GET, or `None` when nothing answers (a node that is down).
    pub async fn try_get(&self, path: &str) -> Option<u16> {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(2));
        req.send().await.ok().map(|r| r.status().as_u16())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// A POST that reports a node that is down (or a non-JSON answer) as `None` instead of panicking.
    pub async fn try_post(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Option<(u16, Value)> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(10))
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.json().await.ok()?;
        Some((status, body))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.patch(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// Creates an endpoint and returns its JSON.
    pub async fn endpoint(&self, spec: Value) -> Value {
        let (status, body) = self.post("/v1/endpoints", spec).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Creates a rule and returns its JSON.
    pub async fn rule(&self, spec: Value) -> Value {
        let (status, body) = self.post("/v1/event-rules", spec).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Posts `events` as one batch, asserts the 202, and returns each event's first delivery.
    pub async fn batch_deliveries(&self, events: Vec<Value>) -> Vec<String> {
        let (status, batch) = self
            .post("/v1/events/batch", json!({"events": events}))
            .await;
        assert_eq!(status, 202, "{batch}");
        batch["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["deliveries"][0].as_str().unwrap().to_string())
            .collect()
    }

    /// The delivery's status, or `None` while it does not exist.
    pub async fn delivery_status(&self, id: &str) -> Option<String> {
        let (status, body) = self.get(&format!("/v1/deliveries/{id}")).await;
        (status == 200).then(|| body["status"].as_str().unwrap().to_string())
    }
}

/// A `data_record:created` event numbered `n`.
pub fn record_event(n: u64, priority: &str) -> Value {
    json!({"event": "data_record:created",
        "dataType": {"uuid": "5f3c", "type": "Contact Form", "slug": "contact_form"},
        "member": {"id": 123, "name": "John Doe", "email": "john@example.com", "labels": ["vip"]},
        "dataRecord": {"id": n, "fields": {"message": "Hello!", "priority": priority}}})
}
