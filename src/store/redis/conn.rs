//! One connection type for a single Redis and for a Redis Cluster.
//!
//! `redis_url` names one server or, comma-separated, several seeds of a cluster. At connect the
//! first reachable one is asked `INFO cluster`: with `cluster_enabled:1` every command goes
//! through redis-rs' cluster connection (slot routing, `MOVED`/`ASK`, topology refresh), else
//! through a reconnecting `ConnectionManager`. Both are multiplexed: concurrent commands from
//! many tasks share one socket per server and are pipelined on it.
//!
//! On a cluster a pipeline or a script may only touch keys of one hash slot; the key layout
//! (`docs/architecture.md`) is built so that every multi-key write stays in one slot, and
//! reads that span slots are issued as separate commands ([`Conn::each`]).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Response timeout of the shared connection: long enough for a pipelined ingest of a batch,
/// short enough that an unreachable Redis turns into a 503 quickly.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the store's Redis is: one server, or the seeds of a cluster.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per store, held behind an Arc
pub(crate) enum Target {
    Single(redis::Client),
    Cluster {
        /// For the shared connection: responses time out.
        shared: redis::cluster::ClusterClient,
        /// For blocking readers: no response timeout at all (the builder's would also bound
        /// the whole call, cutting `BLOCK` short).
        blocking: redis::cluster::ClusterClient,
        /// Every seed, in the order given: pub/sub uses the first that answers.
        seeds: Vec<redis::Client>,
    },
}

/// A shared (multiplexed) connection to a single Redis or a Redis Cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    /// A connection of its own, without reconnection (a blocking reader rebuilds it).
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Target {
    /// Parses the comma-separated URLs and finds out whether they name a cluster.
    pub(crate) async fn discover(urls: &str) -> redis::RedisResult<Target> {
        let urls: Vec<&str> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let clients = urls
            .iter()
            .map(|u| redis::Client::open(*u))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let mut last_err = None;
        for client in clients.iter() {
            match cluster_enabled(client).await {
                Ok(false) if clients.len() == 1 => return Ok(Target::Single(client.clone())),
                Ok(false) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "several redis_url entries are given but the server is not a cluster",
                    )));
                }
                Ok(true) => {
                    let builder = || {
                        redis::cluster::ClusterClientBuilder::new(urls.clone())
                            .connection_timeout(CONNECT_TIMEOUT)
                    };
                    return Ok(Target::Cluster {
                        shared: builder()
                            .response_timeout(RESPONSE_TIMEOUT)
                            .retries(2)
                            .build()?,
                        blocking: builder().build()?,
                        seeds: clients,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no redis_url given"))
        }))
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }

    /// The shared connection.
    pub(crate) async fn shared(&self) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Conn::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            Target::Cluster { shared, .. } => {
                Ok(Conn::Cluster(shared.get_async_connection().await?))
            }
        }
    }

    /// A connection of its own with no response timeout, for blocking stream reads (a blocking
    /// read stalls a multiplexed connection, and a response timeout would cut `BLOCK` short).
    pub(crate) async fn blocking(&self) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(None)
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Conn::Plain(conn))
            }
            Target::Cluster { blocking, .. } => {
                Ok(Conn::Cluster(blocking.get_async_connection().await?))
            }
        }
    }

    /// A pub/sub connection. On a cluster, classic `PUBLISH` reaches every node, so one
    /// subscription on any master hears all of it: the first seed that answers.
    pub(crate) async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        match self {
            Target::Single(client) => client.get_async_pubsub().await,
            Target::Cluster { seeds, .. } => {
                let mut last = None;
                for seed in seeds {
                    match seed.get_async_pubsub().await {
                        Ok(p) => return Ok(p),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("a cluster has at least one seed"))
            }
        }
    }
}

async fn cluster_enabled(client: &redis::Client) -> redis::RedisResult<bool> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn)
        .await?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

impl Conn {
    /// Runs independent commands whose keys may lie in different slots, concurrently, and
    /// returns their replies in order. On a single Redis the multiplexer pipelines them.
    pub(crate) async fn each<T: redis::FromRedisValue>(
        &self,
        cmds: Vec<Cmd>,
    ) -> redis::RedisResult<Vec<T>> {
        let calls = cmds.into_iter().map(|cmd| {
            let mut conn = self.clone();
            async move { cmd.query_async::<T>(&mut conn).await }
        });
        futures::future::try_join_all(calls).await
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Plain(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
