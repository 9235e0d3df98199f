//! Ingest on Redis: a request's jobs, its events and its idempotency record.
//!
//! Per delivery (one event with one delivery) this is one command inside a script, the `XADD`
//! of the job (it carries everything sending it needs: nothing is read before the write and no
//! hash is written), plus `HINCRBY` of the endpoint's created count once per endpoint and
//! request. Per request, one `XADD` logs all its events in one entry of the workspace's event
//! log, and an `MGET` checks the rule and endpoint versions the request was planned with. On
//! one Redis the requests that arrive while a call runs go together in the next one (a group
//! commit, like the outcomes': no timer, a call starts as soon as the previous one returned,
//! with whatever gathered meanwhile, so groups grow with load and a lone request waits one
//! round trip); each is written, checked and answered as it would be alone. On a Redis Cluster
//! it is the steps of [`super::scripts`]' cluster protocol, each in one slot.

use std::collections::BTreeMap;

use super::RedisStore;
use super::scripts::{CLAIM_SCRIPT, EVENTS_SCRIPT, INGEST_SCRIPT, PART_SCRIPT};
use crate::delivery::{DeliveryId, EntryId};
use crate::store::jobs::{Idempotency, Ingested, NewEvent};
use crate::store::packed::{Packing, pack};
use crate::store::record::Answered;
use crate::store::{Result, StoreError};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Deliveries written per script call at most (a call holds the Redis thread while it runs,
/// and every other command waits behind it); a request that makes more is split in calls made
/// in order.
const MAX_PER_CALL: usize = 500;
/// Grouped calls in flight at most. A second one starts only when a whole call's worth is
/// waiting, so Redis is not left idle during a round trip under heavy batch ingest, and small
/// requests still gather behind the one running call.
const MAX_CALLS: usize = 2;

/// One request's part of a grouped `INGEST` call: its KEYS and ARGV, in the script's order.
#[derive(Default)]
struct Section {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
    deliveries: usize,
}

impl Section {
    fn key(&mut self, key: String) -> &mut Self {
        self.keys.push(key);
        self
    }

    fn arg<T: redis::ToRedisArgs>(&mut self, value: T) -> &mut Self {
        value.write_redis_args(&mut self.args);
        self
    }
}

/// The requests waiting for the next grouped call, and whether a call is running.
#[derive(Default)]
pub(crate) struct Group {
    state: Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    waiting: VecDeque<Waiting>,
    /// Deliveries of the waiting requests.
    deliveries: usize,
    /// Tasks making grouped calls.
    running: usize,
}

struct Waiting {
    section: Section,
    reply: oneshot::Sender<Result<Vec<String>>>,
}

impl RedisStore {
    /// Writes `section` in the next grouped call and returns its reply. The calls run in a task
    /// of their own, so a request that goes away (its client hung up) never stalls the others.
    async fn grouped(&self, section: Section) -> Result<Vec<String>> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.group.state.lock().expect("ingest group");
            state.deliveries += section.deliveries;
            state.waiting.push_back(Waiting { section, reply });
            let start = state.running == 0
                || (state.running < MAX_CALLS && state.deliveries >= MAX_PER_CALL);
            state.running += usize::from(start);
            start
        };
        if start {
            let store = self.clone();
            tokio::spawn(async move { store.run_group().await });
        }
        answer
            .await
            .map_err(|_| StoreError::Backend("the ingest group call was lost".into()))?
    }

    /// Grouped calls, one after the other, until nobody waits: each takes the waiting requests
    /// in arrival order, up to [`MAX_PER_CALL`] deliveries (at least one request). At most
    /// [`MAX_CALLS`] of these loops run at once.
    async fn run_group(&self) {
        loop {
            let group: Vec<Waiting> = {
                let mut state = self.group.state.lock().expect("ingest group");
                if state.waiting.is_empty() {
                    state.running -= 1;
                    return;
                }
                let mut n = 0;
                let mut take = 0;
                for w in &state.waiting {
                    if take > 0 && n + w.section.deliveries > MAX_PER_CALL {
                        break;
                    }
                    n += w.section.deliveries;
                    take += 1;
                }
                state.deliveries -= n;
                state.waiting.drain(..take).collect()
            };
            let mut inv = INGEST_SCRIPT.prepare_invoke();
            inv.arg(group.len());
            for w in &group {
                for k in &w.section.keys {
                    inv.key(k);
                }
                inv.arg(w.section.keys.len()).arg(w.section.args.len() + 2);
                for a in &w.section.args {
                    inv.arg(a.as_slice());
                }
            }
            let replies: Result<Vec<Vec<String>>> = inv
                .invoke_async(&mut self.conn())
                .await
                .map_err(StoreError::from);
            match replies {
                Ok(replies) => {
                    for (w, r) in group.into_iter().zip(replies) {
                        let _ = w.reply.send(Ok(r));
                    }
                }
                Err(e) => {
                    for w in group {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    pub async fn ingest(
        &self,
        ws: &str,
        events: &[NewEvent],
        idem: Option<&Idempotency>,
        expect: Option<(u64, u64)>,
    ) -> Result<Ingested> {
        let total: usize = events.iter().map(|e| e.deliveries.len()).sum();
        if self.is_cluster() || (total > MAX_PER_CALL && idem.is_some()) {
            // A cluster's slots, or a keyed request too large for one call: the steps of the
            // cluster protocol (claim, partitions, events), each once for the key. Its scripts
            // do not check versions, so they are read before the first.
            if let Some(expect) = expect
                && self.versions(ws).await? != expect
            {
                return Ok(Ingested::Stale);
            }
            return self.ingest_on_cluster(ws, events, idem).await;
        }
        if total > MAX_PER_CALL {
            // One call at a time, in order, so a long request never holds Redis for long; the
            // first call checks the versions (a stale answer then has written nothing).
            let mut expect = expect;
            let mut answer = Vec::with_capacity(events.len());
            let mut start = 0;
            while start < events.len() {
                let mut end = start;
                let mut n = 0;
                while end < events.len()
                    && (end == start || n + events[end].deliveries.len() <= MAX_PER_CALL)
                {
                    n += events[end].deliveries.len();
                    end += 1;
                }
                match self
                    .ingest_one_call(ws, &events[start..end], None, expect.take())
                    .await?
                {
                    Ingested::Written(a) => answer.extend(a),
                    other => return Ok(other),
                }
                start = end;
            }
            return Ok(Ingested::Written(answer));
        }
        self.ingest_one_call(ws, events, idem, expect).await
    }

    /// `events` in one section of the next grouped ingest call, checking the versions when
    /// `expect` names them.
    async fn ingest_one_call(
        &self,
        ws: &str,
        events: &[NewEvent],
        idem: Option<&Idempotency>,
        expect: Option<(u64, u64)>,
    ) -> Result<Ingested> {
        debug_assert!(events.len() <= super::log::EVENTS_PER_ENTRY);
        let mut inv = Section::default();
        inv.key(self.events_key(ws));
        inv.key(match idem {
            Some(i) => self.idem_key(ws, &i.key),
            None => self.ws_key(ws, "idem:"),
        });
        inv.key(self.ws_key(ws, "rules:ver"));
        inv.key(self.ws_key(ws, "ep:ver"));
        // KEYS indexes (1-based, as Lua sees them) of each partition's stream; its counts key
        // follows it.
        let mut slot: BTreeMap<u32, usize> = BTreeMap::new();
        let mut next_key = 5;
        for e in events {
            for d in &e.deliveries {
                slot.entry(d.partition).or_insert_with(|| {
                    inv.key(self.stream_key(d.partition));
                    inv.key(self.counts_key(d.partition));
                    next_key += 2;
                    next_key - 2
                });
            }
        }
        let mut created: BTreeMap<(usize, &str), i64> = BTreeMap::new();
        for e in events {
            for d in &e.deliveries {
                *created
                    .entry((slot[&d.partition] + 1, &d.endpoint_id))
                    .or_default() += 1;
            }
        }
        inv.deliveries = events.iter().map(|e| e.deliveries.len()).sum();
        inv.arg(ws)
            .arg(if idem.is_some() { "1" } else { "0" })
            .arg(idem.map_or("", |i| i.fingerprint.as_str()))
            .arg(idem.map_or(1, |i| i.ttl_secs.max(1)))
            .arg(self.cutoff())
            .arg(self.retention.max_per_partition)
            .arg(events.len())
            .arg(created.len())
            .arg(expect.map_or(String::new(), |(r, _)| r.to_string()))
            .arg(expect.map_or(String::new(), |(_, e)| e.to_string()));
        for e in events {
            let parts: Vec<String> = e
                .deliveries
                .iter()
                .map(|d| d.partition.to_string())
                .collect();
            inv.arg(&e.id)
                .arg(crate::store::log::event_ms(&e.id).unwrap_or(0))
                .arg(&e.event_type)
                .arg(e.body.as_bytes())
                .arg(parts.join(" "))
                .arg(e.deliveries.len());
            for d in &e.deliveries {
                inv.arg(slot[&d.partition]).arg(pack(&Packing {
                    workspace: ws,
                    endpoint: &d.endpoint_id,
                    rule: d.rule_id,
                    event_id: &e.id,
                    event_type: &e.event_type,
                    key: &d.key,
                    body: &d.body,
                }));
            }
        }
        for ((counts, ep), n) in &created {
            inv.arg(*counts).arg(format!("{ws}|{ep}|c")).arg(*n);
        }
        let reply = self.grouped(inv).await?;
        Ok(match reply.first().map(String::as_str) {
            Some("?") => Ingested::Stale,
            Some("!") => Ingested::Reused,
            Some("=") => {
                Ingested::Answered(Answered::decode(reply.get(1).map_or("", String::as_str)).events)
            }
            _ => Ingested::Written(
                events
                    .iter()
                    .zip(reply.iter().skip(1))
                    .map(|(e, entries)| (e.id.clone(), delivery_ids(e, entries)))
                    .collect(),
            ),
        })
    }

    /// Ingest on a Redis Cluster: the claim (with a key), one call per partition, then the
    /// events and the answer; see [`CLAIM`], [`PART`], [`EVENTS`]. A crash between the steps
    /// is repaired by the same request again (its key's claim and markers make each step
    /// once); without a key it can leave jobs whose event is not in the event log.
    async fn ingest_on_cluster(
        &self,
        ws: &str,
        events: &[NewEvent],
        idem: Option<&Idempotency>,
    ) -> Result<Ingested> {
        let mut ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        if let Some(i) = idem {
            let claim: String = CLAIM_SCRIPT
                .key(self.idem_key(ws, &i.key))
                .arg(&i.fingerprint)
                .arg(ids.join(" "))
                .arg(i.ttl_secs.max(1))
                .invoke_async(&mut self.conn())
                .await?;
            match claim.as_bytes().first() {
                Some(b'!') => return Ok(Ingested::Reused),
                Some(b'=') => return Ok(Ingested::Answered(Answered::decode(&claim[1..]).events)),
                Some(b'#') => {
                    let claimed: Vec<String> = claim[1..].split(' ').map(str::to_string).collect();
                    if claimed.len() == ids.len() {
                        ids = claimed;
                    }
                }
                _ => {}
            }
        }
        let mut by_partition: BTreeMap<u32, Vec<(usize, &crate::delivery::NewDelivery)>> =
            BTreeMap::new();
        for (e, ev) in events.iter().enumerate() {
            for d in &ev.deliveries {
                by_partition.entry(d.partition).or_default().push((e, d));
            }
        }
        let keyed = idem.is_some();
        let ids_ref = &ids;
        let writes = by_partition.iter().map(|(p, group)| async move {
            let mut written: Vec<DeliveryId> = Vec::with_capacity(group.len());
            for (n, chunk) in group.chunks(MAX_PER_CALL).enumerate() {
                let marker = match idem {
                    Some(i) => self.key(&format!("{{p{p}}}:idem:{ws}:{}:{n}", i.key)),
                    None => self.key(&format!("{{p{p}}}:idem:")),
                };
                let mut created: BTreeMap<&str, i64> = BTreeMap::new();
                for (_, d) in chunk {
                    *created.entry(&d.endpoint_id).or_default() += 1;
                }
                let mut inv = PART_SCRIPT.prepare_invoke();
                inv.key(self.stream_key(*p))
                    .key(self.counts_key(*p))
                    .key(marker)
                    .arg(ws)
                    .arg(if keyed { "1" } else { "0" })
                    .arg(idem.map_or(1, |i| i.ttl_secs.max(1)))
                    .arg(chunk.len())
                    .arg(created.len());
                for (e, d) in chunk {
                    inv.arg(pack(&Packing {
                        workspace: ws,
                        endpoint: &d.endpoint_id,
                        rule: d.rule_id,
                        event_id: &ids_ref[*e],
                        event_type: &events[*e].event_type,
                        key: &d.key,
                        body: &d.body,
                    }));
                }
                for (ep, n) in &created {
                    inv.arg(format!("{ws}|{ep}|c")).arg(*n);
                }
                let out: String = inv.invoke_async(&mut self.conn()).await?;
                written.extend(out.split(' ').filter(|s| !s.is_empty()).filter_map(|e| {
                    e.parse::<EntryId>().ok().map(|entry| DeliveryId {
                        partition: *p,
                        entry,
                    })
                }));
            }
            Ok::<_, StoreError>((group, written))
        });
        let written = futures::future::try_join_all(writes).await?;
        let mut per_event: Vec<Vec<DeliveryId>> = vec![Vec::new(); events.len()];
        for (group, written) in written {
            for ((e, _), id) in group.iter().zip(written) {
                per_event[*e].push(id);
            }
        }
        let answer = Answered {
            fingerprint: idem.map(|i| i.fingerprint.clone()).unwrap_or_default(),
            events: ids
                .iter()
                .zip(&per_event)
                .map(|(id, ds)| (id.clone(), ds.iter().map(|d| d.to_string()).collect()))
                .collect(),
        };
        let mut inv = EVENTS_SCRIPT.prepare_invoke();
        inv.key(self.events_key(ws))
            .key(match idem {
                Some(i) => self.idem_key(ws, &i.key),
                None => self.ws_key(ws, "idem:"),
            })
            .arg(if keyed { "1" } else { "0" })
            .arg(idem.map_or(1, |i| i.ttl_secs.max(1)))
            .arg(self.cutoff())
            .arg(self.retention.max_per_partition)
            .arg(answer.encode())
            .arg(events.len());
        for ((ev, id), ds) in events.iter().zip(&ids).zip(&per_event) {
            let (partitions, entries) = crate::store::record::split_ids(ds);
            inv.arg(crate::store::log::event_ms(id).unwrap_or(0))
                .arg(id)
                .arg(&ev.event_type)
                .arg(entries)
                .arg(partitions)
                .arg(ev.body.as_bytes());
        }
        let done: String = inv.invoke_async(&mut self.conn()).await?;
        if let Some(prev) = done.strip_prefix('=') {
            return Ok(Ingested::Answered(Answered::decode(prev).events));
        }
        Ok(Ingested::Written(answer.events))
    }
}

/// The delivery ids of an event's deliveries from the entries its ingest wrote.
fn delivery_ids(e: &NewEvent, entries: &str) -> Vec<String> {
    e.deliveries
        .iter()
        .zip(entries.split(' '))
        .filter_map(|(d, entry)| {
            Some(
                DeliveryId {
                    partition: d.partition,
                    entry: entry.parse().ok()?,
                }
                .to_string(),
            )
        })
        .collect()
}
