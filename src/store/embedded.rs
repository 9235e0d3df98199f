//! The embedded backend: a single-node store on disk, so a node runs with nothing installed.
//!
//! Built on `fjall`, an LSM tree in pure Rust: a write is an append to its journal and an
//! insert into a memtable, flushed to sorted tables in the background, so a delivery costs a
//! few appends rather than the page copies and checksums of a copy-on-write B-tree rewritten
//! at every commit (which made the earlier redb store the slowest of the two). Its directory
//! lock makes a second process on the same directory fail at once.
//!
//! Every write goes through one writer thread that takes whatever writes are waiting, applies
//! them to one batch and commits it with one `fdatasync` (group commit): a write is
//! acknowledged only after its commit, yet under load many share one sync. Writes in a group
//! see each other's delivery states and configuration (an overlay over the batch), so two
//! outcomes of one endpoint in one group count correctly. Reads go straight to the keyspaces
//! on the calling task, except a partition's reader, which takes the jobs committed since it
//! last read from memory (`tail`).
//!
//! Before each commit the writer checks the disk's free space: below `min_free_disk_bytes` it
//! writes nothing and answers [`StoreError::InsufficientStorage`] (503 with `Retry-After`,
//! `/readyz` not ready), logging the cause once with the directory, and it writes again by
//! itself as soon as there is room. The margin keeps fjall from ever meeting a full disk,
//! which would poison it until the process restarts.
//!
//! # Layout
//!
//! Keyspace `q` (jobs, in the packed form both backends share: `store::packed`) and `s`
//! (delivery states) are keyed by the delivery's partition and
//! entry (`u32 ‖ ms u64 ‖ seq u64`, big-endian, so a partition's jobs are in ingest order);
//! `ev` (the event log) by workspace and entry (`W ‖ 0 ‖ ms ‖ seq`); `dead` by partition and
//! entry. `cfg` holds the rest as JSON under prefixed keys: `ws/W`, `wskey/W/{key id}`,
//! `key/{sha256}` (`W id`), `ep/W/EP`,
//! `rule/W/{id:020}`, `ruleseq/W`, `rulever/W`, `routine/W/{id:020}`, `tick/W/{uuid}/{ms}`,
//! `routinelast/W/{uuid}`, `idem/W/K`, `health/W/EP`, `n/W/EP` (counts), `ck/{p}`
//! (checkpoints).

mod config;
mod counts;
mod jobs;
mod keys;
mod log;
mod retention;
mod tail;
mod tenants;
mod writer;

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, oneshot};

use super::jobs::{RawJob, Retention};
use super::{Result, StoreError};
use crate::delivery::EntryId;

pub use jobs::JobReader;
pub(crate) use keys::{entry_key, event_key, key_entry, key_event, next_id, now_ms};

/// Writes waiting at most per group commit.
const GROUP_MAX: usize = 1024;
/// The lock-holding directory fjall makes inside the data directory.
pub const DB_DIR: &str = "fjall";

/// What the embedded store needs besides its directory.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub retention: Retention,
    /// Below this many free bytes on the disk the store writes nothing.
    pub min_free_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retention: Retention::default(),
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// The free disk space below which the embedded store stops writing unless configured: enough
/// for fjall to flush its memtables and compact.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

/// The keyspaces.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Ks {
    Cfg,
    Q,
    S,
    Ev,
    Dead,
}

struct Keyspaces {
    cfg: Keyspace,
    q: Keyspace,
    s: Keyspace,
    ev: Keyspace,
    dead: Keyspace,
}

impl Keyspaces {
    fn get(&self, ks: Ks) -> &Keyspace {
        match ks {
            Ks::Cfg => &self.cfg,
            Ks::Q => &self.q,
            Ks::S => &self.s,
            Ks::Ev => &self.ev,
            Ks::Dead => &self.dead,
        }
    }
}

/// What a write returns, type-erased for the writer thread.
type Answer = Box<dyn Any + Send>;

/// A write: `Fn`, not `FnOnce`, so a write whose group failed can be re-run alone.
type WriteFn = Box<dyn Fn(&mut Tx) -> Result<Answer> + Send>;

struct WriteOp {
    f: WriteFn,
    done: oneshot::Sender<Result<Answer>>,
}

struct Inner {
    db: Database,
    ks: Keyspaces,
    writer: std::sync::mpsc::Sender<WriteOp>,
    partitions: u32,
    dir: PathBuf,
    settings: Settings,
    /// One per partition: a reader waits on it for new jobs.
    wake: Vec<Notify>,
    /// One per partition: jobs after its reader's position (the lag gauge), counted when the
    /// reader opens, then moved by each job written and each read.
    unread: Vec<AtomicI64>,
    /// One per partition: jobs in its log (for the retention cap); `-1` until first counted.
    held: Vec<AtomicI64>,
    /// One per partition: the jobs committed lately, for its reader.
    tails: Vec<Mutex<tail::Tail>>,
    /// Why writes are refused now (the disk is full), if they are.
    full: Mutex<Option<String>>,
}

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn fjall_error(e: fjall::Error) -> StoreError {
    if let fjall::Error::Io(io) = &e
        && io.kind() == std::io::ErrorKind::StorageFull
    {
        return StoreError::InsufficientStorage(format!("the disk is full: {io}"));
    }
    backend(e)
}

/// The writer's running state: the last job of each partition, the last event of each
/// workspace (found in the keyspace the first time one is needed), the endpoints' counts.
struct Ids {
    jobs: Vec<EntryId>,
    events: HashMap<String, EntryId>,
    dead: Vec<EntryId>,
    counts: counts::CountCache,
}

/// One group commit in the making: the batch, the states and configuration it has written so
/// far (so later writes in the group read them), and the jobs it wrote.
pub(crate) struct Tx<'a> {
    inner: &'a Inner,
    batch: fjall::OwnedWriteBatch,
    overlay: foldhash::HashMap<(Ks, Vec<u8>), Option<Vec<u8>>>,
    ids: &'a mut Ids,
    /// The jobs written, with their partitions, for the tails once the group is durable.
    fresh: Vec<(u32, RawJob)>,
    /// The counts this group moved, written once each at its commit.
    counts: foldhash::HashMap<String, counts::Counts>,
    /// The counts keys this group removed.
    uncounted: Vec<String>,
}

/// Whether a group's writes to `ks` are read back within the group. States and configuration
/// are (an outcome reads its delivery's state, a requeue too, a count its endpoint's counts).
/// Jobs, events and dead letters are not: a job is written once, under a new entry, and read
/// only once it is durable (the reader, a requeue of a delivery that has a state by then); the
/// event log and the dead letters are written under new entries and read by the API. Their
/// writes skip the overlay, which copied every job's value once more.
fn overlaid(ks: Ks) -> bool {
    matches!(ks, Ks::S | Ks::Cfg)
}

impl Tx<'_> {
    pub(crate) fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if overlaid(ks)
            && let Some(v) = self.overlay.get(&(ks, key.to_vec()))
        {
            return Ok(v.clone());
        }
        Ok(self
            .inner
            .ks
            .get(ks)
            .get(key)
            .map_err(fjall_error)?
            .map(|v| v.to_vec()))
    }

    pub(crate) fn put(&mut self, ks: Ks, key: &[u8], value: Vec<u8>) {
        debug_assert!(ks != Ks::Q, "jobs are written by put_job");
        if overlaid(ks) {
            self.batch
                .insert(self.inner.ks.get(ks), key.to_vec(), value.clone());
            self.overlay.insert((ks, key.to_vec()), Some(value));
        } else {
            self.batch
                .insert(self.inner.ks.get(ks), key.to_vec(), value);
        }
    }

    /// Writes job `raw` of partition `p` (its entry numbered by [`Tx::next_job`]) as `value`;
    /// the job goes to the partition's tail once the group is durable.
    pub(crate) fn put_job(&mut self, p: u32, value: Vec<u8>, raw: RawJob) {
        self.batch.insert(
            &self.inner.ks.q,
            entry_key(p, raw.job.entry).to_vec(),
            value,
        );
        self.fresh.push((p, raw));
    }

    pub(crate) fn remove(&mut self, ks: Ks, key: &[u8]) {
        if ks == Ks::Cfg && counts::is_counts_key(key) {
            self.uncount(key);
        }
        self.batch.remove(self.inner.ks.get(ks), key.to_vec());
        if overlaid(ks) {
            self.overlay.insert((ks, key.to_vec()), None);
        }
    }

    pub(crate) fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(Ks::Cfg, key.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put_json<T: Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        self.put(Ks::Cfg, key.as_bytes(), bytes);
        Ok(())
    }

    /// The id of a new job of partition `p`.
    pub(crate) fn next_job(&mut self, p: u32) -> EntryId {
        let id = next_id(self.ids.jobs[p as usize], now_ms());
        self.ids.jobs[p as usize] = id;
        id
    }

    /// The id of a new dead letter of partition `p`.
    pub(crate) fn next_dead(&mut self, p: u32) -> EntryId {
        let id = next_id(self.ids.dead[p as usize], now_ms());
        self.ids.dead[p as usize] = id;
        id
    }

    /// The id of a new event of `ws`, at `ms` or later (after the workspace's last event).
    pub(crate) fn next_event(&mut self, ws: &str, ms: u64) -> EntryId {
        let last = match self.ids.events.get(ws) {
            Some(l) => *l,
            None => {
                let mut prefix = ws.as_bytes().to_vec();
                prefix.push(0);
                self.inner
                    .ks
                    .ev
                    .prefix(&prefix)
                    .next_back()
                    .and_then(|g| g.key().ok())
                    .and_then(|k| key_event(&k))
                    .unwrap_or_default()
            }
        };
        let id = next_id(last, ms);
        self.ids.events.insert(ws.to_string(), id);
        id
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with default settings.
    pub fn open(dir: &Path, partitions: u32) -> Result<EmbeddedStore> {
        Self::open_with(dir, partitions, Settings::default())
    }

    /// Opens (or creates) the store in `dir`. Fails with [`StoreError::InUse`] when another
    /// process has it open: the embedded store is single-node.
    pub fn open_with(dir: &Path, partitions: u32, settings: Settings) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| backend(format!("cannot create data_dir {}: {e}", dir.display())))?;
        let path = dir.join(DB_DIR);
        let db = Database::builder(&path)
            .cache_size(32 * 1024 * 1024)
            .max_journaling_size(64 * 1024 * 1024)
            .worker_threads(1)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => StoreError::InUse(format!(
                    "the data directory {} is in use by another switchyard node; the embedded store \
                     is single-node (set SWITCHYARD_REDIS_URL to run a cluster)",
                    dir.display()
                )),
                other => backend(format!("cannot open {}: {other}", path.display())),
            })?;
        let open = |name: &str, memtable: u64| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(fjall_error)
        };
        let ks = Keyspaces {
            cfg: open("cfg", 8 << 20)?,
            q: open("q", 16 << 20)?,
            s: open("s", 16 << 20)?,
            ev: open("ev", 8 << 20)?,
            dead: open("dead", 4 << 20)?,
        };
        let last_of = |k: &Keyspace, p: u32| {
            k.prefix(p.to_be_bytes())
                .next_back()
                .and_then(|g| g.key().ok())
                .and_then(|k| key_entry(&k))
                .map_or(EntryId::ZERO, |(_, e)| e)
        };
        let ids = Ids {
            jobs: (0..partitions).map(|p| last_of(&ks.q, p)).collect(),
            dead: (0..partitions).map(|p| last_of(&ks.dead, p)).collect(),
            events: HashMap::new(),
            counts: counts::CountCache::default(),
        };
        let (tx, rx) = std::sync::mpsc::channel::<WriteOp>();
        let inner = Arc::new(Inner {
            db,
            ks,
            writer: tx,
            partitions,
            dir: dir.to_path_buf(),
            settings,
            wake: (0..partitions).map(|_| Notify::new()).collect(),
            unread: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            held: (0..partitions).map(|_| AtomicI64::new(-1)).collect(),
            tails: ids
                .jobs
                .iter()
                .map(|&last| Mutex::new(tail::Tail::new(last, tail::budget(partitions))))
                .collect(),
            full: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || writer::writer_loop(weak, rx, ids))
            .map_err(backend)?;
        Ok(EmbeddedStore { inner })
    }

    pub fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    pub(crate) fn ks(&self, ks: Ks) -> &Keyspace {
        self.inner.ks.get(ks)
    }

    pub(crate) fn settings(&self) -> Settings {
        self.inner.settings
    }

    pub(crate) fn wake(&self, partition: u32) -> &Notify {
        &self.inner.wake[partition as usize]
    }

    pub(crate) fn unread(&self, partition: u32) -> &AtomicI64 {
        &self.inner.unread[partition as usize]
    }

    pub(crate) fn held(&self, partition: u32) -> &AtomicI64 {
        &self.inner.held[partition as usize]
    }

    /// Up to `count` of `partition`'s jobs after `after` from its tail, `None` when the tail
    /// does not reach back to `after`.
    pub(crate) fn take_tail(
        &self,
        partition: u32,
        after: EntryId,
        count: usize,
    ) -> Option<Vec<RawJob>> {
        self.inner.tails[partition as usize]
            .lock()
            .expect("tail lock")
            .take(after, count)
    }

    /// Runs `f` in the next group commit and returns its result once the commit is on disk.
    pub(crate) async fn write<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Tx) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (done, rx) = oneshot::channel();
        let f: WriteFn = Box::new(move |tx| f(tx).map(|r| Box::new(r) as Answer));
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

    pub(crate) fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.inner.ks.cfg.get(key).map_err(fjall_error)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Values of `cfg` under `prefix`, in key order.
    pub(crate) fn scan_json<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for g in self.inner.ks.cfg.prefix(prefix) {
            let v = g.value().map_err(fjall_error)?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    /// Keys of `cfg` under `prefix`, in order.
    pub(crate) fn scan_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for g in self.inner.ks.cfg.prefix(prefix) {
            let k = g.key().map_err(fjall_error)?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    /// Readiness: the database is not poisoned, and the disk has room (or has it again).
    pub async fn ping(&self) -> Result<()> {
        self.inner
            .db
            .persist(PersistMode::Buffer)
            .map_err(fjall_error)?;
        writer::check_space(&self.inner)
    }
}
