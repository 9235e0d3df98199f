//! The RuleRouter: supervisor of the endpoint actors and the one door jobs go through.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::endpoint_actor::{EndpointActor, EndpointArgs, EndpointMsg};
use super::{DispatchContext, EndpointKey, EndpointQueue, QueuedJob};

pub struct RuleRouter;

pub enum RouterMsg {
    /// Jobs read from a partition stream, in order: one message per read, one `Pump` per
    /// endpoint they reach.
    Route(Vec<QueuedJob>),
    /// An endpoint was updated or deleted through the API: its actor reloads it.
    EndpointChanged(EndpointKey),
    /// An endpoint actor found its queue empty for the idle time.
    Idle(EndpointKey, ractor::ActorId),
    /// The node is stopping: every actor finishes its in-flight attempts and starts no more;
    /// the reply comes when all have (the caller bounds the wait).
    Drain(ractor::RpcReplyPort<()>),
    /// This node gives a partition up. Gracefully (rebalancing, leaving): its endpoints' actors
    /// finish their in-flight attempts first, then stop; the reply says when. Not gracefully
    /// (the lease could not be renewed): they stop at once; unfinished jobs stay pending for
    /// the next owner.
    ReleasePartition {
        partition: u32,
        graceful: bool,
        reply: ractor::RpcReplyPort<()>,
    },
    /// Stops the actors of a partition and forgets their queues.
    DropPartition(u32),
    /// How many endpoint actors are alive.
    CountActors(ractor::RpcReplyPort<usize>),
    /// Which of these jobs (by entry) of a partition are in an endpoint queue.
    Queued(
        u32,
        Vec<crate::delivery::EntryId>,
        ractor::RpcReplyPort<std::collections::HashSet<crate::delivery::EntryId>>,
    ),
}

struct Child {
    actor: ActorRef<EndpointMsg>,
    queue: EndpointQueue,
}

pub struct RouterState {
    ctx: Arc<DispatchContext>,
    children: HashMap<EndpointKey, Child>,
    /// The endpoint of every actor not yet terminated, so a supervision event finds its child
    /// in O(1): with 100k endpoints a scan per stopped actor would stall the router.
    keys: HashMap<ractor::ActorId, EndpointKey>,
}

impl RouterState {
    /// Stops the actors of a partition's endpoints and drops their queues (and so their
    /// buffer permits). Their unfinished jobs stay pending in the store for the next owner.
    fn drop_partition(&mut self, partition: u32) {
        let partitions = self.ctx.store.partitions();
        let keys: Vec<EndpointKey> = self
            .children
            .keys()
            .filter(|k| crate::delivery::partition_of(&k.1, partitions) == partition)
            .cloned()
            .collect();
        for key in keys {
            if let Some(child) = self.children.remove(&key) {
                child.actor.stop(Some("partition released".into()));
                child.queue.lock().expect("queue lock").clear();
            }
        }
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<RouterMsg>,
        key: EndpointKey,
        queue: EndpointQueue,
    ) -> Result<(), ActorProcessingErr> {
        let args = EndpointArgs {
            ctx: self.ctx.clone(),
            key: key.clone(),
            queue: queue.clone(),
            router: myself.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, EndpointActor, args, myself.get_cell()).await?;
        self.keys.insert(actor.get_id(), key.clone());
        self.children.insert(key, Child { actor, queue });
        crate::telemetry::actors(&self.ctx.node, self.children.len());
        Ok(())
    }
}

impl Actor for RuleRouter {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = Arc<DispatchContext>;

    async fn pre_start(
        &self,
        _: ActorRef<RouterMsg>,
        ctx: Arc<DispatchContext>,
    ) -> Result<RouterState, ActorProcessingErr> {
        Ok(RouterState {
            ctx,
            children: HashMap::new(),
            keys: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Route(jobs) => {
                let mut touched: HashMap<ractor::ActorId, ActorRef<EndpointMsg>> = HashMap::new();
                let mut last: Option<(EndpointKey, ActorRef<EndpointMsg>, EndpointQueue)> = None;
                for queued in jobs {
                    let same = last.as_ref().is_some_and(|(k, _, _)| {
                        k.0 == queued.job.workspace && k.1 == queued.job.endpoint_id
                    });
                    if !same {
                        let key = (queued.job.workspace.clone(), queued.job.endpoint_id.clone());
                        if !state.children.contains_key(&key) {
                            state
                                .spawn(&myself, key.clone(), EndpointQueue::default())
                                .await?;
                        }
                        let child = &state.children[&key];
                        touched
                            .entry(child.actor.get_id())
                            .or_insert_with(|| child.actor.clone());
                        last = Some((key, child.actor.clone(), child.queue.clone()));
                    }
                    let (_, _, queue) = last.as_ref().expect("set above");
                    let mut q = queue.lock().expect("queue lock");
                    // A job routed again by a rescan while still queued stays once.
                    let again =
                        queued.rerouted() && q.iter().any(|j| j.job.entry == queued.job.entry);
                    if !again {
                        q.push_back(queued);
                    }
                }
                // A dead actor's mailbox is lost; the queue is not, so a failed send is harmless.
                for actor in touched.into_values() {
                    let _ = actor.cast(EndpointMsg::Pump);
                }
            }
            RouterMsg::EndpointChanged(key) => {
                if let Some(child) = state.children.get(&key) {
                    let _ = child.actor.cast(EndpointMsg::Reload);
                }
            }
            RouterMsg::Drain(reply) => {
                let waits: Vec<_> = state
                    .children
                    .values()
                    .filter_map(|c| {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        c.actor.cast(EndpointMsg::Drain(tx)).ok().map(|_| rx)
                    })
                    .collect();
                tokio::spawn(async move {
                    futures::future::join_all(waits).await;
                    let _ = reply.send(());
                });
            }
            RouterMsg::ReleasePartition {
                partition,
                graceful,
                reply,
            } => {
                let partitions = state.ctx.store.partitions();
                let of_partition =
                    |k: &EndpointKey| crate::delivery::partition_of(&k.1, partitions) == partition;
                if !graceful {
                    state.drop_partition(partition);
                    let _ = reply.send(());
                    return Ok(());
                }
                let waits: Vec<_> = state
                    .children
                    .iter()
                    .filter(|(k, _)| of_partition(k))
                    .filter_map(|(_, c)| {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        c.actor.cast(EndpointMsg::Drain(tx)).ok().map(|_| rx)
                    })
                    .collect();
                let me = myself.clone();
                tokio::spawn(async move {
                    futures::future::join_all(waits).await;
                    let _ = me.cast(RouterMsg::DropPartition(partition));
                    let _ = reply.send(());
                });
            }
            RouterMsg::DropPartition(partition) => state.drop_partition(partition),
            RouterMsg::CountActors(reply) => {
                let _ = reply.send(state.children.len());
            }
            RouterMsg::Queued(partition, entries, reply) => {
                let wanted: std::collections::HashSet<_> = entries.into_iter().collect();
                let partitions = state.ctx.store.partitions();
                let mut found = std::collections::HashSet::new();
                for (key, child) in &state.children {
                    if crate::delivery::partition_of(&key.1, partitions) != partition {
                        continue;
                    }
                    for q in child.queue.lock().expect("queue lock").iter() {
                        if wanted.contains(&q.job.entry) {
                            found.insert(q.job.entry);
                        }
                    }
                }
                let _ = reply.send(found);
            }
            RouterMsg::Idle(key, actor_id) => {
                let idle = state.children.get(&key).is_some_and(|c| {
                    c.actor.get_id() == actor_id && c.queue.lock().expect("queue lock").is_empty()
                });
                if idle && let Some(child) = state.children.remove(&key) {
                    child.actor.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }

    /// Restart a panicked endpoint actor on the same queue; forget one that stopped.
    /// (ractor's default would stop the router when any child exits.)
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RouterMsg>,
        evt: SupervisionEvent,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let found = state
                    .keys
                    .remove(&cell.get_id())
                    .and_then(|key| state.children.get(&key).map(|c| (key, c)))
                    .filter(|(_, c)| c.actor.get_id() == cell.get_id())
                    .map(|(key, c)| (key, c.queue.clone()));
                if let Some((key, queue)) = found {
                    tracing::error!(workspace = %key.0, endpoint = %key.1, error = %err, "endpoint actor failed; restarting it");
                    state.children.remove(&key);
                    state.spawn(&myself, key, queue).await?;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                let id = cell.get_id();
                if let Some(key) = state.keys.remove(&id)
                    && state
                        .children
                        .get(&key)
                        .is_some_and(|c| c.actor.get_id() == id)
                {
                    state.children.remove(&key);
                }
                crate::telemetry::actors(&state.ctx.node, state.children.len());
            }
            _ => {}
        }
        Ok(())
    }
}
