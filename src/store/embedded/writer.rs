//! The embedded store's writer thread: group commit. Every write waits in one channel; the
//! thread takes all that are waiting, applies them to one batch and commits it with one
//! `fdatasync`, so a write is answered only once durable and, under load, many share a sync.
//! Then it hands the jobs the group wrote to their partitions' tails and wakes their readers.
//! Before each group it checks the disk's free space (see the parent module).

use std::sync::atomic::Ordering;

use fjall::PersistMode;

use super::{Answer, GROUP_MAX, Ids, Inner, Tx, WriteOp, fjall_error};
use crate::store::jobs::RawJob;

/// The jobs a group wrote, with their partitions.
type Fresh = Vec<(u32, RawJob)>;
use crate::store::{Result, StoreError};

/// Refuses writes while the disk's free space is below the margin, logging the cause once and
/// the recovery once.
pub(super) fn check_space(inner: &Inner) -> Result<()> {
    let free = fs4::available_space(&inner.dir).unwrap_or(u64::MAX);
    let mut full = inner.full.lock().expect("full lock");
    if free < inner.settings.min_free_bytes {
        let why = format!(
            "the disk of {} has {free} bytes free, below min_free_disk_bytes ({}): nothing is \
             written until there is room",
            inner.dir.display(),
            inner.settings.min_free_bytes
        );
        if full.is_none() {
            tracing::error!(dir = %inner.dir.display(), free, min = inner.settings.min_free_bytes, "the embedded store's disk is full; refusing writes");
        }
        *full = Some(why.clone());
        return Err(StoreError::InsufficientStorage(why));
    }
    if full.take().is_some() {
        tracing::warn!(dir = %inner.dir.display(), free, "the embedded store's disk has room again; writing");
    }
    Ok(())
}

/// The writer thread: takes every waiting write, applies them to one batch, commits once (one
/// `fdatasync` for the group), answers each. When the group fails, each write is re-run alone,
/// so one bad write cannot fail its neighbours.
pub(super) fn writer_loop(
    inner: std::sync::Weak<Inner>,
    rx: std::sync::mpsc::Receiver<WriteOp>,
    mut ids: Ids,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = check_space(&inner) {
            for op in group {
                let _ = op
                    .done
                    .send(Err(StoreError::InsufficientStorage(e.to_string())));
            }
            continue;
        }
        let mut fresh = Vec::new();
        match run(&inner, &mut ids, &group) {
            Ok((answers, f)) => {
                fresh = f;
                for (op, a) in group.into_iter().zip(answers) {
                    let _ = op.done.send(Ok(a));
                }
            }
            Err(_) => {
                for op in group {
                    match run(&inner, &mut ids, std::slice::from_ref(&op)) {
                        Ok((mut answers, f)) => {
                            fresh.extend(f);
                            let _ = op.done.send(Ok(answers.remove(0)));
                        }
                        Err(e) => {
                            let _ = op.done.send(Err(e));
                        }
                    }
                }
            }
        }
        hand_over(&inner, fresh);
    }
}

/// Gives the jobs a durable group wrote to their partitions' tails (in the order they were
/// numbered, which is each partition's order), counts them, then wakes each reader once.
fn hand_over(inner: &Inner, fresh: Fresh) {
    let mut touched: Vec<u32> = Vec::new();
    for (p, raw) in fresh {
        inner.unread[p as usize].fetch_add(1, Ordering::Relaxed);
        let held = &inner.held[p as usize];
        if held.load(Ordering::Relaxed) >= 0 {
            held.fetch_add(1, Ordering::Relaxed);
        }
        inner.tails[p as usize].lock().expect("tail lock").push(raw);
        touched.push(p);
    }
    touched.sort_unstable();
    touched.dedup();
    for p in touched {
        inner.wake[p as usize].notify_one();
    }
}

/// Applies `ops` to one batch and commits it durably.
fn run(inner: &Inner, ids: &mut Ids, ops: &[WriteOp]) -> Result<(Vec<Answer>, Fresh)> {
    let mut tx = Tx {
        inner,
        batch: inner.db.batch().durability(Some(PersistMode::SyncData)),
        overlay: Default::default(),
        ids,
        fresh: Vec::new(),
        counts: Default::default(),
        uncounted: Vec::new(),
    };
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push((op.f)(&mut tx)?);
    }
    let fresh = std::mem::take(&mut tx.fresh);
    let (counts, uncounted) = tx.write_counts()?;
    tx.batch.commit().map_err(fjall_error)?;
    tx.ids.counts.committed(counts, uncounted);
    Ok((out, fresh))
}
