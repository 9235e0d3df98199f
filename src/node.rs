//! A running node: the store, the dispatch actors, the partition consumers and the API, started
//! in that order and stopped in the reverse one.
//!
//! [`run`] takes its listener and its shutdown future from the caller, so tests start a node on
//! port 0 and stop it whenever they like, and `main` passes [`shutdown_signal`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, app};
use crate::cluster::{ClusterConfig, ClusterView, Coordinator};
use crate::config::Config;
use crate::deliverer::{Deliverer, DelivererError};
use crate::dispatch::{Dispatch, DispatchContext, PartitionOwner, RouterMsg, RuleRouter};
use crate::ingest::cache::WorkspaceCache;
use crate::store::{Store, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deliverer(#[from] DelivererError),
    #[error("cannot start the dispatcher: {0}")]
    Spawn(String),
    #[error("the API server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs a node until `shutdown` completes.
pub async fn run(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    crate::telemetry::handle();
    crate::telemetry::register(&config.node_id);
    match crate::api::server::raise_open_file_limit() {
        Ok(n) if (n as usize) < config.max_connections + config.max_concurrent_attempts + 256 => {
            tracing::warn!(
                open_files = n,
                max_connections = config.max_connections,
                max_concurrent_attempts = config.max_concurrent_attempts,
                "the open-file limit is below what the connection limits may need; raise the hard limit (ulimit -Hn) or lower them"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let store = Store::open(&config).await?;
    let generated_token = match (&config.admin_token, &store) {
        (None, Store::Embedded(_)) => {
            config.admin_token = Some(admin_token_in(&config.data_dir)?);
            true
        }
        _ => false,
    };
    store.ping().await?;
    let deliverer = Deliverer::new(&config)?;
    let guard = deliverer.guard().clone();
    let rules = Arc::new(WorkspaceCache::default());
    let ctx = Arc::new(DispatchContext {
        store: store.clone(),
        deliverer,
        idle: Duration::from_secs(config.actor_idle_secs),
        policy: crate::dispatch::policy::DispatchPolicy::from_config(&config),
        node: config.node_id.clone(),
        rules: rules.clone(),
    });
    let (router, router_done) = Actor::spawn(None, RuleRouter, ctx)
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
    let stop = CancellationToken::new();
    let dispatch = Arc::new(Dispatch::start(
        store.clone(),
        router.clone(),
        config.node_id.clone(),
        config.partition_buffer,
    ));
    // On Redis, keys are trusted only while this node hears revocations (the change listener).
    let keys = Arc::new(crate::workspace::keys::KeyCache::new(matches!(
        store,
        Store::Embedded(_)
    )));
    let (owners, mut tasks, coordinator, cluster_view) = start_delivering(
        &config,
        &store,
        &dispatch,
        &router,
        &stop,
        listener.local_addr()?,
        &keys,
    );
    tasks.spawn(crate::dispatch::backlog::share(
        store.clone(),
        dispatch.backlog.clone(),
        config.node_id.clone(),
        stop.clone(),
    ));
    let routines = tokio::spawn(
        crate::routine::Scheduler::new(store.clone(), rules.clone()).run(stop.clone()),
    );

    let state = AppState {
        store: store.clone(),
        rules,
        guard,
        router: router.clone(),
        config: Arc::new(config.clone()),
        stopping: stop.clone(),
        cluster: cluster_view,
        backlog: dispatch.backlog.clone(),
        keys,
        ingests: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_ingests)),
    };
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, node = %config.node_id, partitions = config.partitions, store = store.backend(), "switchyard node started");
    tracing::info!("{}", banner(&config, addr, generated_token));
    if config.dev {
        tracing::warn!(
            "development mode: loopback and http:// endpoints are allowed; never run --dev in production"
        );
    }
    let stop_api = stop.clone();
    let limits = crate::api::server::Limits {
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        max_connections: config.max_connections,
    };
    let served = crate::api::server::serve(listener, app(state), limits, async move {
        shutdown.await;
        stop_api.cancel();
    })
    .await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    // Leaving the cluster drains and releases each partition (others take them at once).
    if let Some(c) = coordinator {
        let _ = c.await;
    }
    // The embedded store's partitions: stop reading, let in-flight attempts finish and their
    // outcomes be committed (bounded), then stop committing. Their jobs are then final, not
    // sent again as duplicates on the next start. Anything not finished stays unfinished.
    for o in owners {
        o.stop_reading().await;
    }
    let drain = Duration::from_secs(config.drain_timeout_secs);
    match ractor::call_t!(router, RouterMsg::Drain, drain.as_millis() as u64) {
        Ok(()) => tracing::info!("in-flight attempts drained"),
        Err(e) => tracing::warn!(error = %e, "drain timed out; unfinished jobs stay pending"),
    }
    dispatch.stop().await;
    router.stop(Some("shutdown".into()));
    let _ = routines.await;
    let _ = router_done.await;
    tracing::info!("switchyard node stopped");
    Ok(served?)
}

/// The embedded default's admin token: read from `data_dir/admin-token`, or generated there
/// (mode 0600) on first start, so a new user can create a workspace at once and the token
/// survives restarts. A configured token always wins; with Redis none is generated (api.md).
fn admin_token_in(dir: &std::path::Path) -> Result<String, NodeError> {
    let path = dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path)
        && token.trim().len() >= 16
    {
        return Ok(token.trim().to_string());
    }
    let token = format!(
        "sya_{}",
        crate::workspace::generate_api_key().trim_start_matches(crate::workspace::API_KEY_PREFIX)
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options
        .open(&path)
        .and_then(|mut f| f.write_all(token.as_bytes()))?;
    Ok(token)
}

/// What a new user needs to see at start: where the API is, where data goes, how to begin.
fn banner(config: &Config, addr: std::net::SocketAddr, generated_token: bool) -> String {
    let store = match &config.redis_url {
        Some(_) => format!("redis (key prefix `{}`)", config.key_prefix),
        None => format!(
            "embedded, in {} (single node; set SWITCHYARD_REDIS_URL for a cluster)",
            config.data_dir.display()
        ),
    };
    let token = match (&config.admin_token, generated_token) {
        (Some(t), true) => format!(
            "{t} (generated, kept in {})",
            config.data_dir.join("admin-token").display()
        ),
        (Some(_), false) => "as configured (SWITCHYARD_ADMIN_TOKEN)".to_string(),
        (None, _) => "none: set SWITCHYARD_ADMIN_TOKEN to create workspaces".to_string(),
    };
    let shown = match (&config.admin_token, generated_token) {
        (Some(t), true) => t.clone(),
        _ => "$SWITCHYARD_ADMIN_TOKEN".to_string(),
    };
    let dev = if config.dev {
        "\n  DEVELOPMENT MODE: loopback and http:// endpoints are allowed (the SSRF guard is open \
         for 127.0.0.0/8 and ::1). Never run this in production.\n"
    } else {
        ""
    };
    format!(
        "{dev}\n  Switchyard {} is running\n  API:         http://{addr}\n  store:       {store}\n  admin token: {token}\n  \
         create a workspace:\n    curl -s -X POST http://{addr}/v1/workspaces -H 'Authorization: Bearer {shown}' -d '{{\"name\": \"Acme\"}}'\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Starts reading partitions: all of them on a single embedded node; on Redis, those this
/// node's coordinator wins leases for (plus the listener of endpoint changes).
#[allow(clippy::type_complexity)]
fn start_delivering(
    config: &Config,
    store: &Store,
    dispatch: &Arc<Dispatch>,
    router: &ractor::ActorRef<RouterMsg>,
    stop: &CancellationToken,
    listen: std::net::SocketAddr,
    keys: &Arc<crate::workspace::keys::KeyCache>,
) -> (
    Vec<PartitionOwner>,
    tokio::task::JoinSet<()>,
    Option<tokio::task::JoinHandle<()>>,
    Option<Arc<ClusterView>>,
) {
    match store {
        Store::Embedded(_) => {
            let owners = (0..config.partitions)
                .map(|partition| dispatch.own(partition, None))
                .collect();
            (owners, tokio::task::JoinSet::new(), None, None)
        }
        Store::Redis(redis) => {
            let cluster = ClusterConfig {
                node_id: config.node_id.clone(),
                addr: listen.to_string(),
                partitions: config.partitions,
                lease: Duration::from_millis(config.lease_ms),
                heartbeat: Duration::from_millis(config.heartbeat_ms),
                partition_buffer: config.partition_buffer,
                drain: Duration::from_secs(config.drain_timeout_secs),
            };
            let coordinator =
                Coordinator::new(redis.clone(), dispatch.clone(), router.clone(), cluster);
            let view = coordinator.view();
            let mut tasks = tokio::task::JoinSet::new();
            tasks.spawn(crate::cluster::listen_for_changes(
                redis.clone(),
                router.clone(),
                keys.clone(),
                config.node_id.clone(),
                stop.clone(),
            ));
            let running = tokio::spawn(coordinator.run(stop.clone()));
            (Vec::new(), tasks, Some(running), Some(view))
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
