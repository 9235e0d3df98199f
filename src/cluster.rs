//! The cluster: which node delivers which partitions, over Redis.
//!
//! Every node runs one [`Coordinator`] task. Each heartbeat (`heartbeat_ms`, default 1 s) it
//!
//! 1. records itself in the membership (a sorted set scored by heartbeat time),
//! 2. renews each lease it holds; a lease it could not renew for `lease_ms - 2 heartbeats` is
//!    given up at once (self-fencing), before it can expire and pass to another node,
//! 3. computes its fair share — `partitions / live nodes`, the remainder going to the first
//!    nodes by id, so counts differ by at most one — then releases partitions above it
//!    (gracefully: in-flight attempts finish first) or takes free ones below it.
//!
//! A new owner reads the partition's log from its checkpoint, so it resumes the old owner's
//! unfinished jobs in order. Each partition owned here has a [`Lease`]: the holder string
//! (`node:token`) fences every commit (the script refuses a stale holder, so a paused node
//! that wakes up late cannot write over the new owner's work), and its local deadline — the
//! last renewal's send time plus the lease, less a margin, on the monotonic clock — is checked
//! before every send, so a node paused past its lease sends nothing once it resumes.
//!
//! A crashed node's leases expire after `lease_ms` (default 5 s) and its heartbeat after three
//! heartbeats, so survivors take its partitions over within `lease_ms` plus one heartbeat. The
//! trade-off: a shorter lease means faster takeover but more renewal traffic and more risk of
//! giving partitions up during a short Redis or network stall.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio_util::sync::CancellationToken;

use crate::dispatch::{Dispatch, Lease, PartitionOwner, RouterMsg};
use crate::store::RedisStore;
use crate::store::redis::NodeInfo;

/// Settings of the coordinator.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: String,
    pub addr: String,
    pub partitions: u32,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub partition_buffer: usize,
    /// How long a graceful release waits for in-flight attempts.
    pub drain: Duration,
}

/// What the rest of the node may read: the partitions this node owns now.
#[derive(Default)]
pub struct ClusterView {
    owned: Mutex<Vec<u32>>,
}

impl ClusterView {
    pub fn owned(&self) -> Vec<u32> {
        self.owned.lock().expect("cluster view").clone()
    }
}

struct Owned {
    lease: Arc<Lease>,
    renewed: Instant,
    /// `None` while a graceful release drains it in the background (its lease is still
    /// renewed until the drain is over: its actors may still be sending).
    owner: Option<PartitionOwner>,
    /// The background drain of a graceful release, done when it may be let go.
    releasing: Option<tokio::task::JoinHandle<()>>,
    /// The reader's stop token, kept here too so a lost lease stops a draining partition.
    stop: CancellationToken,
}

/// The per-node coordinator task.
pub struct Coordinator {
    redis: RedisStore,
    dispatch: Arc<Dispatch>,
    router: ActorRef<RouterMsg>,
    config: ClusterConfig,
    owned: BTreeMap<u32, Owned>,
    view: Arc<ClusterView>,
    started_at: String,
}

/// This node's target number of partitions: `partitions / nodes`, plus one for the first
/// `partitions % nodes` nodes in id order.
pub fn fair_share(partitions: u32, live_ids: &[String], me: &str) -> u32 {
    let n = live_ids.len().max(1) as u32;
    let rank = live_ids
        .iter()
        .position(|id| id == me)
        .unwrap_or(live_ids.len()) as u32;
    partitions / n + u32::from(rank < partitions % n)
}

impl Coordinator {
    pub fn new(
        redis: RedisStore,
        dispatch: Arc<Dispatch>,
        router: ActorRef<RouterMsg>,
        config: ClusterConfig,
    ) -> Coordinator {
        Coordinator {
            redis,
            dispatch,
            router,
            config,
            owned: BTreeMap::new(),
            view: Arc::new(ClusterView::default()),
            started_at: crate::delivery::now_rfc3339(),
        }
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.view.clone()
    }

    fn node_ttl(&self) -> u64 {
        (self.config.heartbeat * 3).as_millis() as u64
    }

    /// Runs until `stop`, then leaves: drains and releases every partition.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.step().await,
                _ = stop.cancelled() => break,
            }
        }
        let _ = self.redis.leave(&self.config.node_id).await;
        let all: Vec<u32> = self.owned.keys().copied().collect();
        for p in all {
            self.release(p);
        }
        // Keep renewing what drains, and let each go once its drain is over.
        while !self.owned.is_empty() {
            self.renew().await;
            self.finish_releases().await;
            tokio::time::sleep(self.config.heartbeat.min(Duration::from_millis(100))).await;
        }
    }

    async fn step(&mut self) {
        let info = NodeInfo {
            id: self.config.node_id.clone(),
            addr: self.config.addr.clone(),
            started_at: self.started_at.clone(),
            partitions: self.owned.keys().copied().collect(),
        };
        let sent = Instant::now();
        match self.redis.heartbeat(&info, self.node_ttl()).await {
            Ok(()) => crate::telemetry::store_roundtrip(&self.config.node_id, sent.elapsed()),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        self.renew().await;
        self.finish_releases().await;
        let live = match self.redis.live_nodes(self.node_ttl()).await {
            Ok(nodes) => nodes.into_iter().map(|n| n.id).collect::<Vec<_>>(),
            Err(_) => return,
        };
        let target = fair_share(self.config.partitions, &live, &self.config.node_id) as usize;
        let active: Vec<u32> = self
            .owned
            .iter()
            .filter(|(_, o)| o.owner.is_some())
            .map(|(p, _)| *p)
            .collect();
        if active.len() > target {
            for p in active.iter().rev().take(active.len() - target) {
                tracing::info!(partition = p, target, "rebalancing: releasing a partition");
                self.release(*p);
            }
        } else if self.owned.len() < target {
            self.take_free(target).await;
        }
        self.publish_view();
    }

    fn publish_view(&self) {
        *self.view.owned.lock().expect("cluster view") = self
            .owned
            .iter()
            .filter(|(_, o)| o.owner.is_some())
            .map(|(p, _)| *p)
            .collect();
    }

    /// Starts a graceful release: the partition's reader stops, its actors finish their
    /// in-flight attempts and commit them (bounded by the drain timeout), in the background,
    /// while the coordinator keeps renewing the lease; [`Self::finish_releases`] lets it go.
    fn release(&mut self, partition: u32) {
        let Some(o) = self.owned.get_mut(&partition) else {
            return;
        };
        let Some(owner) = o.owner.take() else { return };
        let (router, wait) = (self.router.clone(), self.config.drain.as_millis() as u64);
        o.releasing = Some(tokio::spawn(async move {
            owner.stop_reading().await;
            let released = ractor::call_t!(
                router,
                |reply| RouterMsg::ReleasePartition {
                    partition,
                    graceful: true,
                    reply
                },
                wait
            );
            if released.is_err() {
                let _ = router.cast(RouterMsg::DropPartition(partition));
            }
        }));
        self.publish_view();
    }

    /// Lets go of the partitions whose graceful release has drained.
    async fn finish_releases(&mut self) {
        let done: Vec<u32> = self
            .owned
            .iter()
            .filter(|(_, o)| o.releasing.as_ref().is_some_and(|r| r.is_finished()))
            .map(|(p, _)| *p)
            .collect();
        for p in done {
            if let Some(o) = self.owned.remove(&p)
                && let Err(e) = self.redis.release_lease(p, &o.lease.holder).await
            {
                tracing::warn!(partition = p, error = %e, "cannot release a lease; it will expire");
            }
        }
        self.publish_view();
    }

    /// How much of a lease this node does not trust: it stops sending this long before the
    /// lease could expire in Redis (clock-rate differences and the renewal's own travel).
    fn margin(&self) -> Duration {
        (self.config.lease / 10).max(self.config.heartbeat / 2)
    }

    /// Renews every lease held, concurrently (one slow answer must not hold up the others).
    async fn renew(&mut self) {
        let lease_ms = self.config.lease.as_millis() as u64;
        let safe_for = self.config.lease.saturating_sub(self.config.heartbeat * 2);
        let (length, margin) = (self.config.lease, self.margin());
        let sent = Instant::now();
        let redis = &self.redis;
        let answers = futures::future::join_all(self.owned.iter().map(|(p, o)| async move {
            (*p, redis.renew_lease(*p, &o.lease.holder, lease_ms).await)
        }))
        .await;
        let mut lost = Vec::new();
        for (p, answer) in answers {
            let Some(o) = self.owned.get_mut(&p) else {
                continue;
            };
            match answer {
                Ok(true) => {
                    o.renewed = sent;
                    o.lease.renewed(sent, length, margin);
                }
                Ok(false) => lost.push(p),
                Err(e) if o.renewed.elapsed() >= safe_for => {
                    tracing::warn!(partition = p, error = %e, "cannot renew the lease in time; fencing myself");
                    lost.push(p);
                }
                Err(_) => {}
            }
        }
        for p in lost {
            tracing::warn!(
                partition = p,
                "lease lost; stopped delivering this partition"
            );
            self.give_up(p).await;
        }
    }

    async fn take_free(&mut self, target: usize) {
        let Ok(holders) = self.redis.lease_holders().await else {
            return;
        };
        // Start at a node-specific offset so that nodes joining together reach for different
        // partitions first.
        let n = self.config.partitions;
        let offset = crate::delivery::partition_of(&self.config.node_id, n);
        let lease_ms = self.config.lease.as_millis() as u64;
        for i in 0..n {
            if self.owned.len() >= target {
                break;
            }
            let p = (offset + i) % n;
            if self.owned.contains_key(&p) || holders.get(p as usize).is_some_and(Option::is_some) {
                continue;
            }
            let sent = Instant::now();
            match self
                .redis
                .acquire_lease(p, &self.config.node_id, lease_ms)
                .await
            {
                Ok(Some(holder)) => self.start(p, holder, sent),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cannot acquire a lease");
                    return;
                }
            }
        }
    }

    fn start(&mut self, partition: u32, holder: String, sent: Instant) {
        tracing::info!(partition, %holder, "partition acquired");
        let lease = Arc::new(Lease::new(holder, sent, self.config.lease, self.margin()));
        let owner = self.dispatch.own(partition, Some(lease.clone()));
        self.owned.insert(
            partition,
            Owned {
                lease,
                renewed: sent,
                stop: owner.stop.clone(),
                owner: Some(owner),
                releasing: None,
            },
        );
    }

    /// Stops a partition at once (its lease is lost: nothing more may be sent or written);
    /// unfinished jobs stay for the next owner.
    async fn give_up(&mut self, partition: u32) {
        let Some(o) = self.owned.remove(&partition) else {
            return;
        };
        o.stop.cancel();
        if let Some(owner) = o.owner {
            owner.stop_reading().await;
        }
        if let Some(r) = o.releasing {
            r.abort();
        }
        let wait = self.config.drain.as_millis() as u64;
        let released = ractor::call_t!(
            self.router,
            |reply| RouterMsg::ReleasePartition {
                partition,
                graceful: false,
                reply
            },
            wait
        );
        if released.is_err() {
            let _ = self.router.cast(RouterMsg::DropPartition(partition));
        }
        self.publish_view();
    }
}

/// Forwards endpoint changes published by any node to this node's router, and evicts
/// revoked API keys from this node's cache (then confirms it, so the revoking node can
/// answer knowing no node trusts the key any more).
pub async fn listen_for_changes(
    redis: RedisStore,
    router: ActorRef<RouterMsg>,
    keys: std::sync::Arc<crate::workspace::keys::KeyCache>,
    node: String,
    stop: CancellationToken,
) {
    use futures::StreamExt;
    let channel = redis.changes_channel();
    while !stop.is_cancelled() {
        let mut pubsub = match redis.pubsub().await {
            Ok(p) => p,
            Err(_) => {
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => continue, _ = stop.cancelled() => return }
            }
        };
        if pubsub.subscribe(&channel).await.is_err() {
            continue;
        }
        // Revocations reach this node from now on (and any it missed while deaf are moot:
        // the cache was emptied when the subscription broke).
        keys.set_hears(true);
        let mut messages = pubsub.on_message();
        loop {
            let msg = tokio::select! { m = messages.next() => m, _ = stop.cancelled() => return };
            let Some(msg) = msg else { break };
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            match crate::store::Change::decode(&payload) {
                Some(crate::store::Change::Endpoint {
                    workspace,
                    endpoint,
                }) => {
                    let _ = router.cast(RouterMsg::EndpointChanged((workspace, endpoint)));
                }
                Some(crate::store::Change::Keys {
                    nonce,
                    workspace,
                    hashes,
                }) => {
                    keys.evict(&hashes, workspace.as_deref());
                    if let Err(e) = redis.confirm_eviction(&nonce, &node).await {
                        tracing::warn!(error = %e, "cannot confirm a revoked key's eviction; the revoking node waits out the cache's lifetime");
                    }
                }
                None => {}
            }
        }
        keys.set_hears(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_differ_by_at_most_one_and_cover_every_partition() {
        for nodes in 1..=7usize {
            let ids: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
            let shares: Vec<u32> = ids.iter().map(|id| fair_share(64, &ids, id)).collect();
            assert_eq!(shares.iter().sum::<u32>(), 64);
            assert!(
                shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1,
                "{shares:?}"
            );
        }
    }
}
