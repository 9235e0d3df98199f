//! The embedded backend: a single-node store on disk, so a node runs with nothing installed.
//!
//! Built on `redb` (a pure-Rust, ACID, copy-on-write B-tree): no C toolchain, no server,
//! crash-safe commits, MVCC reads that never block the writer, and an exclusive file lock that
//! makes a second process on the same directory fail at once. (fjall, an LSM tree, would write
//! faster but needs compaction tuning and gives us nothing a single node needs.)
//!
//! Every write goes through one writer thread that applies whatever writes are waiting in one
//! transaction and commits it with a single fsync (group commit): a write is acknowledged only
//! after its commit, yet under load many writes share one fsync. Reads open their own read
//! transaction on the calling task.
//!
//! # Layout
//!
//! Table `kv` (`&str` → bytes), keys by prefix, `W` workspace, `EP` endpoint, `D` delivery:
//! `ws/W`, `key/{sha256}`, `ep/W/EP`, `rule/W/{id:020}`, `ruleseq/W`, `rulever/W`, `evt/W/E`,
//! `idem/W/K`, `dlv/W/D`, `att/W/D/{n:06}`, `idx/W/{seq}|D`, `epidx/W/EP/{seq}|D`,
//! `dead/W/{ms:013}{n:07}`, `health/W/EP`, `stats/W/EP`. The attempts are the delivery log.
//! Table `jobs` (`(partition, seq)` → job): the unfinished jobs; acknowledging deletes.

mod deliveries;
mod jobs;

use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, oneshot};

use super::{Result, StoreError};
use crate::endpoint::Endpoint;
use crate::rule::Rule;
use crate::workspace::{Workspace, generate_api_key, hash_api_key};

pub use jobs::JobReader;

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub(crate) const JOBS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("jobs");

/// Writes waiting at most per group commit.
const GROUP_MAX: usize = 512;
/// The database file inside the data directory.
pub const DB_FILE: &str = "switchyard.redb";

/// What a write returns, type-erased for the writer thread.
type Answer = Box<dyn Any + Send>;

/// A write: `Fn`, not `FnOnce`, so a write whose group failed can be re-run alone.
type WriteFn = Box<dyn Fn(&WriteTransaction, &mut Ctx) -> Result<Answer> + Send>;

struct WriteOp {
    f: WriteFn,
    done: oneshot::Sender<Result<Answer>>,
}

/// What a write may use besides the transaction: the job sequence and the partitions it fed.
pub(crate) struct Ctx<'a> {
    pub next_seq: &'a AtomicU64,
    pub touched: Vec<u32>,
}

struct Inner {
    db: Database,
    writer: std::sync::mpsc::Sender<WriteOp>,
    partitions: u32,
    /// One per partition: a reader waits on it for new jobs.
    wake: Vec<Notify>,
    /// One per partition: jobs written and not yet read by its reader (the lag gauge).
    /// Counted from the table at open (a new reader starts at the first job), moved up by
    /// each commit that enqueues and down by each read.
    unread: Vec<std::sync::atomic::AtomicI64>,
}

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// How long finished deliveries and the log are kept ([`EmbeddedStore::trim`]).
    pub(crate) retention: std::time::Duration,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>> {
    match table.get(key).map_err(backend)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

pub(crate) fn put_json<T: Serialize>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<()> {
    let bytes = serde_json::to_vec(value)?;
    table.insert(key, bytes.as_slice()).map_err(backend)?;
    Ok(())
}

/// Values under `prefix`, in key order.
pub(crate) fn scan_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<T>> {
    let end = format!("{prefix}\u{10FFFF}");
    let mut out = Vec::new();
    for item in table.range(prefix..end.as_str()).map_err(backend)? {
        let (_, v) = item.map_err(backend)?;
        out.push(serde_json::from_slice(v.value())?);
    }
    Ok(out)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Fails with [`StoreError::InUse`] when another
    /// process has it open: the embedded store is single-node.
    pub fn open(dir: &Path, partitions: u32) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| backend(format!("cannot create data_dir {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(format!(
                "the data directory {} is in use by another switchyard node; the embedded store is \
                 single-node (set SWITCHYARD_REDIS_URL to run a cluster)",
                dir.display()
            )),
            other => backend(format!("cannot open {}: {other}", path.display())),
        })?;
        let unread: Vec<std::sync::atomic::AtomicI64> = (0..partitions)
            .map(|_| std::sync::atomic::AtomicI64::new(0))
            .collect();
        let next = {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(KV).map_err(backend)?;
            let last = {
                let jobs = txn.open_table(JOBS).map_err(backend)?;
                let mut last = 0;
                for item in jobs.iter().map_err(backend)? {
                    let (k, _) = item.map_err(backend)?;
                    let (p, seq) = k.value();
                    last = last.max(seq);
                    if let Some(n) = unread.get(p as usize) {
                        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                last
            };
            txn.commit().map_err(backend)?;
            last + 1
        };
        let (tx, rx) = std::sync::mpsc::channel::<WriteOp>();
        let inner = Arc::new(Inner {
            db,
            writer: tx,
            partitions,
            wake: (0..partitions).map(|_| Notify::new()).collect(),
            unread,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || writer_loop(weak, rx, AtomicU64::new(next)))
            .map_err(backend)?;
        Ok(EmbeddedStore {
            inner,
            retention: super::DEFAULT_RETENTION,
        })
    }

    /// Keeps finished records for `retention` (default 30 days).
    pub fn with_retention(mut self, retention: std::time::Duration) -> Self {
        self.retention = retention;
        self
    }

    pub fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
    }

    pub(crate) fn wake(&self, partition: u32) -> &Notify {
        &self.inner.wake[partition as usize]
    }

    pub(crate) fn unread(&self, partition: u32) -> &std::sync::atomic::AtomicI64 {
        &self.inner.unread[partition as usize]
    }

    /// Runs `f` in the next group commit and returns its result once the commit is on disk.
    pub(crate) async fn write<R: Send + 'static>(
        &self,
        f: impl Fn(&WriteTransaction, &mut Ctx) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (done, rx) = oneshot::channel();
        let f: WriteFn = Box::new(move |txn, ctx| f(txn, ctx).map(|r| Box::new(r) as Answer));
        self.inner
            .writer
            .send(WriteOp { f, done })
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        let result = rx
            .await
            .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))??;
        Ok(*result
            .downcast::<R>()
            .expect("a write returns what its closure returns"))
    }

    /// Reads with `f` in a read transaction over the `kv` table.
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> Result<R>,
    ) -> Result<R> {
        let txn = self.inner.db.begin_read().map_err(backend)?;
        let table = txn.open_table(KV).map_err(backend)?;
        f(&table)
    }

    pub async fn ping(&self) -> Result<()> {
        self.read(|_| Ok(()))
    }

    // ---- workspaces -------------------------------------------------------------------------

    pub async fn create_workspace(&self, ws: &Workspace) -> Result<String> {
        let key = generate_api_key();
        let (ws, hash) = (ws.clone(), hash_api_key(&key));
        self.write(move |txn, _| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            put_json(&mut kv, &format!("ws/{}", ws.uuid), &ws)?;
            put_json(&mut kv, &format!("key/{hash}"), &ws.uuid)
        })
        .await?;
        Ok(key)
    }

    pub async fn workspace(&self, uuid: &str) -> Result<Option<Workspace>> {
        self.read(|kv| get_json(kv, &format!("ws/{uuid}")))
    }

    pub async fn add_api_key(&self, uuid: &str) -> Result<Option<String>> {
        if self.workspace(uuid).await?.is_none() {
            return Ok(None);
        }
        let key = generate_api_key();
        let (uuid, hash) = (uuid.to_string(), hash_api_key(&key));
        self.write(move |txn, _| {
            put_json(
                &mut txn.open_table(KV).map_err(backend)?,
                &format!("key/{hash}"),
                &uuid,
            )
        })
        .await?;
        Ok(Some(key))
    }

    pub async fn workspace_for_key(&self, key: &str) -> Result<Option<Workspace>> {
        let uuid: Option<String> =
            self.read(|kv| get_json(kv, &format!("key/{}", hash_api_key(key))))?;
        match uuid {
            Some(u) => self.workspace(&u).await,
            None => Ok(None),
        }
    }

    // ---- endpoints --------------------------------------------------------------------------

    pub async fn put_endpoint(&self, ws: &str, ep: &Endpoint) -> Result<()> {
        let (key, ep) = (format!("ep/{ws}/{}", ep.id), ep.clone());
        self.write(move |txn, _| put_json(&mut txn.open_table(KV).map_err(backend)?, &key, &ep))
            .await
    }

    pub async fn endpoint(&self, ws: &str, id: &str) -> Result<Option<Endpoint>> {
        self.read(|kv| get_json(kv, &format!("ep/{ws}/{id}")))
    }

    pub async fn endpoints(&self, ws: &str) -> Result<Vec<Endpoint>> {
        let mut eps: Vec<Endpoint> = self.read(|kv| scan_json(kv, &format!("ep/{ws}/")))?;
        eps.reverse();
        Ok(eps)
    }

    pub async fn endpoints_by_id(
        &self,
        ws: &str,
        ids: std::collections::HashSet<&str>,
    ) -> Result<std::collections::HashMap<String, Endpoint>> {
        self.read(|kv| {
            let mut out = std::collections::HashMap::new();
            for id in ids {
                if let Some(ep) = get_json::<Endpoint>(kv, &format!("ep/{ws}/{id}"))? {
                    out.insert(ep.id.clone(), ep);
                }
            }
            Ok(out)
        })
    }

    pub async fn delete_endpoint(&self, ws: &str, id: &str) -> Result<bool> {
        let key = format!("ep/{ws}/{id}");
        self.write(move |txn, _| {
            Ok(txn
                .open_table(KV)
                .map_err(backend)?
                .remove(key.as_str())
                .map_err(backend)?
                .is_some())
        })
        .await
    }

    // ---- rules ------------------------------------------------------------------------------

    pub async fn next_rule_id(&self, ws: &str) -> Result<u64> {
        let key = format!("ruleseq/{ws}");
        self.write(move |txn, _| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let next = get_json::<u64>(&kv, &key)?.unwrap_or(0) + 1;
            put_json(&mut kv, &key, &next)?;
            Ok(next)
        })
        .await
    }

    fn bump_version(kv: &mut redb::Table<&'static str, &'static [u8]>, ws: &str) -> Result<()> {
        let key = format!("rulever/{ws}");
        let v = get_json::<u64>(kv, &key)?.unwrap_or(0) + 1;
        put_json(kv, &key, &v)
    }

    pub async fn put_rule(&self, ws: &str, rule: &Rule) -> Result<()> {
        let (ws, rule) = (ws.to_string(), rule.clone());
        self.write(move |txn, _| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            put_json(&mut kv, &format!("rule/{ws}/{:020}", rule.id), &rule)?;
            let marker = format!("routine/{ws}/{:020}", rule.id);
            if rule.spec.schedule.is_some() {
                kv.insert(marker.as_str(), [].as_slice()).map_err(backend)?;
            } else {
                kv.remove(marker.as_str()).map_err(backend)?;
            }
            Self::bump_version(&mut kv, &ws)
        })
        .await
    }

    pub async fn rule(&self, ws: &str, id: u64) -> Result<Option<Rule>> {
        self.read(|kv| get_json(kv, &format!("rule/{ws}/{id:020}")))
    }

    pub async fn delete_rule(&self, ws: &str, id: u64) -> Result<bool> {
        let ws = ws.to_string();
        self.write(move |txn, _| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let existed = kv
                .remove(format!("rule/{ws}/{id:020}").as_str())
                .map_err(backend)?
                .is_some();
            kv.remove(format!("routine/{ws}/{id:020}").as_str())
                .map_err(backend)?;
            Self::bump_version(&mut kv, &ws)?;
            Ok(existed)
        })
        .await
    }

    pub async fn routines(&self) -> Result<Vec<(String, Rule)>> {
        self.read(|kv| {
            let mut out = Vec::new();
            for item in kv.range("routine/".."routine0").map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                let rest = &k.value()["routine/".len()..];
                let Some((ws, id)) = rest.split_once('/') else {
                    continue;
                };
                if let Some(rule) = get_json::<Rule>(kv, &format!("rule/{ws}/{id}"))? {
                    out.push((ws.to_string(), rule));
                }
            }
            Ok(out)
        })
    }

    pub async fn claim_tick(&self, ws: &str, uuid: &str, at_ms: i64) -> Result<bool> {
        let (tick, last) = (
            format!("tick/{ws}/{uuid}/{at_ms:013}"),
            format!("routinelast/{ws}/{uuid}"),
        );
        self.write(move |txn, _| {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            if kv.get(tick.as_str()).map_err(backend)?.is_some() {
                return Ok(false);
            }
            kv.insert(tick.as_str(), [].as_slice()).map_err(backend)?;
            if get_json::<i64>(&kv, &last)?.is_none_or(|l| at_ms > l) {
                put_json(&mut kv, &last, &at_ms)?;
            }
            Ok(true)
        })
        .await
    }

    pub async fn routine_last(&self, ws: &str, uuid: &str) -> Result<Option<i64>> {
        self.read(|kv| get_json(kv, &format!("routinelast/{ws}/{uuid}")))
    }

    pub async fn rules_version(&self, ws: &str) -> Result<u64> {
        Ok(self
            .read(|kv| get_json::<u64>(kv, &format!("rulever/{ws}")))?
            .unwrap_or(0))
    }

    pub async fn rules(&self, ws: &str) -> Result<(u64, Vec<Rule>)> {
        self.read(|kv| {
            let ver = get_json::<u64>(kv, &format!("rulever/{ws}"))?.unwrap_or(0);
            let mut rules: Vec<Rule> = scan_json(kv, &format!("rule/{ws}/"))?;
            rules.reverse();
            Ok((ver, rules))
        })
    }
}

/// The writer thread: takes every waiting write, applies them in one transaction, commits
/// once (one fsync for the group), answers each. When the group fails, each write is re-run
/// alone, so one bad write cannot fail its neighbours.
fn writer_loop(
    inner: std::sync::Weak<Inner>,
    rx: std::sync::mpsc::Receiver<WriteOp>,
    next_seq: AtomicU64,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let mut touched = Vec::new();
        match run(&inner.db, &next_seq, &batch) {
            Ok((results, t)) => {
                touched = t;
                for (op, r) in batch.into_iter().zip(results) {
                    let _ = op.done.send(Ok(r));
                }
            }
            Err(_) => {
                for op in batch {
                    match run(&inner.db, &next_seq, std::slice::from_ref(&op)) {
                        Ok((mut results, t)) => {
                            touched.extend(t);
                            let _ = op.done.send(Ok(results.remove(0)));
                        }
                        Err(e) => {
                            let _ = op.done.send(Err(e));
                        }
                    }
                }
            }
        }
        for &p in &touched {
            inner.unread[p as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        touched.sort_unstable();
        touched.dedup();
        for p in touched {
            inner.wake[p as usize].notify_one();
        }
    }
}

/// Applies `ops` in one transaction and commits it; dropping the transaction on error aborts it.
fn run(db: &Database, next_seq: &AtomicU64, ops: &[WriteOp]) -> Result<(Vec<Answer>, Vec<u32>)> {
    let txn = db.begin_write().map_err(backend)?;
    let mut ctx = Ctx {
        next_seq,
        touched: Vec::new(),
    };
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push((op.f)(&txn, &mut ctx)?);
    }
    txn.commit().map_err(backend)?;
    Ok((out, ctx.touched))
}
