//! A node as a real `switchyard serve` process, for tests that kill it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Api, wait_until};

/// A `switchyard serve` child process with its environment, restartable on the same port.
pub struct NodeProcess {
    child: Option<Child>,
    pub base: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    starts: u32,
    /// Start with this soft open-file limit (through the shell's `ulimit`).
    soft_nofile: Option<u64>,
}

impl NodeProcess {
    /// Starts a node with these `SWITCHYARD_*` settings (the listen address is chosen here).
    pub async fn start(env: Vec<(String, String)>, log_dir: &std::path::Path) -> NodeProcess {
        Self::start_limited(env, log_dir, None).await
    }

    /// [`NodeProcess::start`] with a lowered soft open-file limit.
    pub async fn start_limited(
        env: Vec<(String, String)>,
        log_dir: &std::path::Path,
        soft_nofile: Option<u64>,
    ) -> NodeProcess {
        let port = super::free_port();
        let mut env = env;
        env.push(("SWITCHYARD_LISTEN".into(), format!("127.0.0.1:{port}")));
        let mut node = NodeProcess {
            child: None,
            base: format!("http://127.0.0.1:{port}"),
            env,
            log: log_dir.join(format!("node-{port}.log")),
            starts: 0,
            soft_nofile,
        };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let binary = env!("CARGO_BIN_EXE_switchyard");
        let mut command = match self.soft_nofile {
            Some(n) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("ulimit -S -n {n} && exec \"$0\" serve"))
                    .arg(binary);
                c
            }
            None => {
                let mut c = Command::new(binary);
                c.arg("serve");
                c
            }
        };
        let child = command
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info,switchyard=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let api = Api::new(&self.base, "");
        let log = self.log.clone();
        wait_until(
            Duration::from_secs(20),
            &format!("the node to be ready (log: {})", log.display()),
            || async { api.try_get("/readyz").await == Some(200) },
        )
        .await;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        send_sigterm(c.id());
        c.wait().unwrap()
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn().await;
    }
}

/// Sends SIGTERM with the `kill` command (no libc binding needed in the tests).
fn send_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The settings of a test node process on a shared Redis (short leases so failovers are quick).
pub fn cluster_env(
    redis_url: &str,
    key_prefix: &str,
    node_id: &str,
    partitions: u32,
) -> Vec<(String, String)> {
    [
        ("SWITCHYARD_ADMIN_TOKEN", super::ADMIN_TOKEN.to_string()),
        ("SWITCHYARD_ALLOW_PRIVATE_CIDRS", "127.0.0.1/32".into()),
        (
            "SWITCHYARD_EXTRA_ROOT_CERTS",
            switchyard::load::receiver::ca_pem_path().into(),
        ),
        ("SWITCHYARD_PARTITIONS", partitions.to_string()),
        ("SWITCHYARD_LEASE_MS", "2000".into()),
        ("SWITCHYARD_HEARTBEAT_MS", "250".into()),
        ("SWITCHYARD_REDIS_URL", redis_url.into()),
        ("SWITCHYARD_KEY_PREFIX", key_prefix.into()),
        ("SWITCHYARD_NODE_ID", node_id.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A `switchyard receiver` child process on a port of its choosing; killed on drop. What it
/// prints is collected (a thread drains its stdout, so `--print` never blocks on a full pipe).
pub struct ReceiverProcess {
    child: Child,
    /// `scheme://127.0.0.1:port`, from the first line it prints.
    pub base: String,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ReceiverProcess {
    /// `switchyard receiver --listen <addr> ARGS`; `addr` defaults to 127.0.0.1:0.
    pub fn start(listen: Option<&str>, args: &[&str]) -> ReceiverProcess {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("receiver")
            .args(["--listen", listen.unwrap_or("127.0.0.1:0")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let sink = out.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = first_tx.send(line.clone());
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let first = first_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the receiver's first line");
        let base = first
            .rsplit(' ')
            .next()
            .filter(|b| b.starts_with("http"))
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        ReceiverProcess { child, base, out }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// `GET /_switchyard/arrivals` (plain http receivers only).
    pub async fn arrivals(&self, token: Option<&str>) -> serde_json::Value {
        let mut req = reqwest::Client::new().get(format!("{}/_switchyard/arrivals", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().json().await.unwrap()
    }

    /// The number of arrivals, through the control API with this client (any scheme).
    pub async fn total(&self, http: &reqwest::Client, token: Option<&str>) -> Option<u64> {
        let mut req = http.get(format!("{}/_switchyard/arrivals?limit=1", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let page: serde_json::Value = req.send().await.ok()?.json().await.ok()?;
        page["total"].as_u64()
    }
}

impl Drop for ReceiverProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
