//! Partition jobs in the embedded store: the `jobs` table holds every unfinished job under
//! `(partition, seq)`; a reader walks its partition in `seq` order from the start, so after a
//! restart it first meets the jobs that were read but not finished (the "pending" ones), in
//! order, exactly as the Redis reader replays its pending entries.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EmbeddedStore, JOBS, backend};
use crate::delivery::Job;
use crate::store::Result;

#[derive(Serialize, Deserialize)]
pub(crate) struct StoredJob {
    pub w: String,
    pub e: String,
    pub d: String,
    /// A manual retry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub m: bool,
}

/// A reader of one partition.
pub struct JobReader {
    store: EmbeddedStore,
    partition: u32,
    after: u64,
}

impl EmbeddedStore {
    pub fn job_reader(&self, partition: u32) -> JobReader {
        JobReader {
            store: self.clone(),
            partition,
            after: 0,
        }
    }

    pub(crate) fn insert_job(
        jobs: &mut redb::Table<(u32, u64), &'static [u8]>,
        partition: u32,
        seq: u64,
        job: &StoredJob,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(job)?;
        jobs.insert((partition, seq), bytes.as_slice())
            .map_err(backend)?;
        Ok(())
    }

    pub(crate) fn entry_seq(job: &Job) -> Result<u64> {
        job.entry_id
            .parse()
            .map_err(|_| crate::store::StoreError::Corrupt(format!("job id {}", job.entry_id)))
    }

    pub async fn ack(&self, job: &Job) -> Result<()> {
        let key = (job.partition, Self::entry_seq(job)?);
        self.write(move |txn, _| {
            txn.open_table(JOBS)
                .map_err(backend)?
                .remove(key)
                .map_err(backend)?;
            Ok(())
        })
        .await
    }
}

impl JobReader {
    fn next_batch(&mut self, count: usize) -> Result<Vec<Job>> {
        let txn = self.store.db().begin_read().map_err(backend)?;
        let table = txn.open_table(JOBS).map_err(backend)?;
        let mut out = Vec::new();
        for item in table
            .range((self.partition, self.after + 1)..=(self.partition, u64::MAX))
            .map_err(backend)?
            .take(count)
        {
            let (k, v) = item.map_err(backend)?;
            let (_, seq) = k.value();
            let stored: StoredJob = serde_json::from_slice(v.value())?;
            self.after = seq;
            self.store
                .unread(self.partition)
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            out.push(Job {
                partition: self.partition,
                entry_id: seq.to_string(),
                workspace: stored.w,
                endpoint_id: stored.e,
                delivery_id: stored.d,
                fence: None,
                manual: stored.m,
            });
        }
        Ok(out)
    }

    /// Jobs written and not yet read.
    pub fn lag(&self) -> i64 {
        self.store
            .unread(self.partition)
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(0)
    }

    /// Up to `count` jobs after the last one read, waiting up to `block` for new ones.
    pub async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Job>> {
        let jobs = self.next_batch(count)?;
        if !jobs.is_empty() {
            return Ok(jobs);
        }
        // A write between the scan and this wait leaves a permit in the Notify: no lost wake-up.
        let _ = tokio::time::timeout(block, self.store.wake(self.partition).notified()).await;
        self.next_batch(count)
    }
}
