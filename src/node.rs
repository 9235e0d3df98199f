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
use crate::config::Config;
use crate::deliverer::{Deliverer, DelivererError};
use crate::dispatch::{DispatchContext, RuleRouter, spawn_consumers};
use crate::rule::cache::RuleCache;
use crate::store::{Store, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("redis_url (SWITCHYARD_REDIS_URL) is not set; this version needs Redis")]
    NoStore,
    #[error("cannot reach the store: {0}")]
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
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let url = config.redis_url.clone().ok_or(NodeError::NoStore)?;
    let store = Store::connect(&url, &config.key_prefix, config.partitions).await?;
    store.ping().await?;
    let deliverer = Deliverer::new(&config)?;
    let guard = deliverer.guard().clone();
    let ctx = Arc::new(DispatchContext {
        store: store.clone(),
        deliverer,
        idle: Duration::from_secs(config.actor_idle_secs),
        policy: crate::dispatch::policy::DispatchPolicy::from_config(&config),
    });
    let (router, router_done) = Actor::spawn(None, RuleRouter, ctx)
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
    let stop = CancellationToken::new();
    let consumers = spawn_consumers(
        store.clone(),
        0..config.partitions,
        router.clone(),
        config.partition_buffer,
        stop.clone(),
    );
    let state = AppState {
        store,
        rules: Arc::new(RuleCache::default()),
        guard,
        router: router.clone(),
        config: Arc::new(config.clone()),
        stopping: stop.clone(),
    };
    tracing::info!(listen = %listener.local_addr()?, node = %config.node_id, partitions = config.partitions, "switchyard node started");
    let stop_api = stop.clone();
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop_api.cancel();
        })
        .await;
    stop.cancel();
    consumers.join_all().await;
    router.stop(Some("shutdown".into()));
    let _ = router_done.await;
    tracing::info!("switchyard node stopped");
    Ok(served?)
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
