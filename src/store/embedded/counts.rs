//! The delivery counts of each endpoint (`n/W/EP` in `cfg`), as the writer keeps them.
//!
//! Every ingested delivery and every outcome moves its endpoint's counts. Read from the
//! keyspace at each move, that was a lookup in the `cfg` memtable, where every earlier move of
//! every endpoint left a version under a key sharing a long prefix with the others, then a JSON
//! parse: 7 % of a busy node's CPU, more than any other part of the writer. The writer thread
//! is the only writer of these keys, so it keeps the committed counts of the endpoints it has
//! touched in memory. A group moves its own copy, writes each endpoint's counts once when it
//! commits, and the cache takes them only once that commit is durable: a group that fails (and
//! is re-run write by write) leaves the cache as it was.

use super::{Ks, Tx};
use crate::store::Result;

/// Endpoints whose counts the cache holds at most; past it, it starts again empty (the
/// keyspace still has them all).
const CACHED_MAX: usize = 200_000;

/// One endpoint's counts, by counter.
pub(super) type Counts = foldhash::HashMap<String, i64>;

/// The committed counts of the endpoints the writer has touched, by key.
#[derive(Default)]
pub(super) struct CountCache(foldhash::HashMap<String, Counts>);

impl CountCache {
    /// Takes what a durable group changed and removed.
    pub(super) fn committed(
        &mut self,
        changed: foldhash::HashMap<String, Counts>,
        removed: Vec<String>,
    ) {
        for k in removed {
            self.0.remove(&k);
        }
        if self.0.len() + changed.len() > CACHED_MAX {
            self.0.clear();
        }
        self.0.extend(changed);
    }
}

/// Whether a `cfg` key holds an endpoint's counts.
pub(super) fn is_counts_key(key: &[u8]) -> bool {
    key.starts_with(b"n/")
}

impl Tx<'_> {
    /// Moves the counts of `ws`'s endpoint `ep` by `moves` (counter, delta).
    pub(crate) fn count(&mut self, ws: &str, ep: &str, moves: &[(&str, i64)]) -> Result<()> {
        if moves.is_empty() {
            return Ok(());
        }
        let key = format!("n/{ws}/{ep}");
        if !self.counts.contains_key(&key) {
            // Removed earlier in this group (the overlay says so), committed (the cache), or
            // not touched since the store opened (the keyspace). The cache's copy is taken,
            // not cloned: the commit puts it back, and after a failed group the keyspace
            // still holds what the cache held.
            let current = match self.overlay.get(&(Ks::Cfg, key.as_bytes().to_vec())) {
                Some(Some(v)) => serde_json::from_slice(v)?,
                Some(None) => Counts::default(),
                None => match self.ids.counts.0.remove(&key) {
                    Some(c) => c,
                    None => self.get_json(&key)?.unwrap_or_default(),
                },
            };
            self.counts.insert(key.clone(), current);
        }
        let counts = self.counts.get_mut(&key).expect("inserted above");
        for &(c, d) in moves {
            match counts.get_mut(c) {
                Some(n) => *n += d,
                None => {
                    counts.insert(c.to_string(), d);
                }
            }
        }
        Ok(())
    }

    /// A counts key removed in this group: its moves so far are dropped with it.
    pub(super) fn uncount(&mut self, key: &[u8]) {
        let key = String::from_utf8_lossy(key).into_owned();
        self.counts.remove(&key);
        self.uncounted.push(key);
    }

    /// Puts the group's counts in its batch, once per endpoint, and returns them with the
    /// keys it removed, for the cache once the batch is durable.
    pub(super) fn write_counts(
        &mut self,
    ) -> Result<(foldhash::HashMap<String, Counts>, Vec<String>)> {
        let counts = std::mem::take(&mut self.counts);
        for (k, v) in &counts {
            let bytes = serde_json::to_vec(v)?;
            self.batch
                .insert(self.inner.ks.get(Ks::Cfg), k.as_bytes().to_vec(), bytes);
        }
        Ok((counts, std::mem::take(&mut self.uncounted)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::EmbeddedStore;
    use super::*;
    use crate::store::StoreError;

    fn created(store: &EmbeddedStore) -> i64 {
        let counts = store.counts("ws", "ep").unwrap();
        counts.get("c").copied().unwrap_or(0)
    }

    async fn count(store: &EmbeddedStore, n: i64) {
        store
            .write(move |tx| tx.count("ws", "ep", &[("c", n)]))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_cache_follows_commits_removals_and_failed_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), 4).unwrap();
        count(&store, 2).await;
        count(&store, 3).await;
        assert_eq!(created(&store), 5, "moves add up across groups");
        // Moved twice in one write: written once, both moves in it.
        store
            .write(|tx| {
                tx.count("ws", "ep", &[("c", 1)])?;
                tx.count("ws", "ep", &[("c", 1), ("s", 1)])
            })
            .await
            .unwrap();
        assert_eq!(created(&store), 7);
        // A write that fails after moving the counts commits none of it, and the next move
        // starts from what is on disk.
        let failed = store
            .write(|tx| {
                tx.count("ws", "ep", &[("c", 100)])?;
                Err::<(), _>(StoreError::Backend("refused".into()))
            })
            .await;
        assert!(failed.is_err());
        count(&store, 1).await;
        assert_eq!(created(&store), 8, "the failed write's move is not counted");
        // Removed: the next move starts from nothing, in the same write or a later one.
        store
            .write(|tx| {
                tx.remove(Ks::Cfg, b"n/ws/ep");
                tx.count("ws", "ep", &[("c", 1)])
            })
            .await
            .unwrap();
        assert_eq!(created(&store), 1, "removed, then moved in the same write");
        store
            .write(|tx| {
                tx.count("ws", "ep", &[("c", 4)])?;
                tx.remove(Ks::Cfg, b"n/ws/ep");
                Ok(())
            })
            .await
            .unwrap();
        assert!(
            store.counts("ws", "ep").unwrap().is_empty(),
            "moved, then removed"
        );
        count(&store, 2).await;
        assert_eq!(created(&store), 2);
        // Removed alone (a deleted workspace): the cache forgets them too.
        store
            .write(|tx| {
                tx.remove(Ks::Cfg, b"n/ws/ep");
                Ok(())
            })
            .await
            .unwrap();
        count(&store, 1).await;
        assert_eq!(created(&store), 1, "the cache forgot the removed counts");
    }
}
