//! The delivery log role of the store: what `GET /v1/deliveries` and `GET /v1/events` read.
//!
//! Nothing here is written on purpose: the log *is* the jobs ingest wrote, the states their
//! outcomes wrote and the workspace's event log. A delivery is read by its id alone (the id
//! names its partition and its job's entry); a page of a workspace's deliveries walks its
//! event log newest first and loads each page's jobs and states in a few round trips; a page
//! of one endpoint's deliveries walks that endpoint's partition log. Filters that only a
//! delivery can answer (status, endpoint) look at a bounded number of candidates per request
//! and answer with what they found and a cursor, so no request scans without bound.

use std::collections::HashMap;

use super::record::{EventRecord, decode_progress, decode_state, last_attempt};
use super::{Counts, DeliveryFilter, Page, Result, Store};
use crate::delivery::{Attempt, Delivery, DeliveryId, EntryId, Job, Progress};

/// Candidates examined per round trip when a list is filtered.
const SCAN_CHUNK: usize = 200;
/// Round trips a filtered list may make before it answers with what it found and a cursor.
const SCAN_ROUNDS: usize = 10;

/// A delivery with its attempts, as `GET /v1/deliveries/{id}` shows it.
#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
}

/// An event of the event log.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    /// Its entry in the workspace's log.
    pub entry: EntryId,
    pub record: EventRecord,
}

impl Store {
    /// The jobs of these deliveries (`None` where there is none, or it is gone).
    pub async fn jobs(&self, ids: &[DeliveryId]) -> Result<Vec<Option<Job>>> {
        match self {
            Store::Redis(s) => s.jobs(ids).await,
            Store::Embedded(s) => s.jobs(ids),
        }
    }

    /// The stored states of these deliveries (`None`: no outcome yet).
    pub async fn states(&self, ids: &[DeliveryId]) -> Result<Vec<Option<String>>> {
        match self {
            Store::Redis(s) => s.states(ids).await,
            Store::Embedded(s) => s.states(ids),
        }
    }

    /// A delivery of workspace `ws` and its attempts; `None` when the id names no delivery of
    /// this workspace.
    pub async fn delivery(&self, ws: &str, id: &str) -> Result<Option<DeliveryView>> {
        let Ok(id) = id.parse::<DeliveryId>() else {
            return Ok(None);
        };
        if id.partition >= self.partitions() {
            return Ok(None);
        }
        let (jobs, states) =
            futures::future::try_join(self.jobs(&[id]), self.states(&[id])).await?;
        let Some(job) = jobs
            .into_iter()
            .next()
            .flatten()
            .filter(|j| j.workspace == ws)
        else {
            return Ok(None);
        };
        let (progress, attempts) = match states.into_iter().next().flatten() {
            Some(s) => {
                let state = decode_state(&s)?;
                (state.progress, state.attempts)
            }
            None => (Progress::NEW, Vec::new()),
        };
        let mut delivery = Delivery::of(&job, &progress);
        if let Some(last) = attempts.last() {
            with_last(&mut delivery, last);
        }
        let id = delivery.id.clone();
        Ok(Some(DeliveryView {
            attempts: attempts
                .iter()
                .map(|a| {
                    let sent = if job.render_failure().is_some() {
                        ""
                    } else {
                        &job.body
                    };
                    a.view(&id, sent)
                })
                .collect(),
            delivery,
        }))
    }

    /// The deliveries of these ids that still exist, with their progress, in order.
    pub async fn deliveries_of(&self, ids: &[DeliveryId]) -> Result<Vec<Delivery>> {
        let jobs = self.jobs(ids).await?.into_iter().flatten().collect();
        self.with_progress(jobs).await
    }

    /// The deliveries of these jobs with their progress, in order.
    async fn with_progress(&self, jobs: Vec<Job>) -> Result<Vec<Delivery>> {
        let ids: Vec<DeliveryId> = jobs.iter().map(|j| j.id).collect();
        let states = self.states(&ids).await?;
        jobs.iter()
            .zip(states)
            .map(|(job, state)| {
                let Some(s) = state else {
                    return Ok(Delivery::of(job, &Progress::NEW));
                };
                let mut d = Delivery::of(job, &decode_progress(&s)?);
                if let Some(last) = last_attempt(&s) {
                    with_last(&mut d, &last);
                }
                Ok(d)
            })
            .collect()
    }

    /// Lists deliveries newest first.
    pub async fn list_deliveries(
        &self,
        ws: &str,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>> {
        match &filter.endpoint_id {
            Some(ep) => self.list_endpoint(ws, ep, filter, limit, cursor).await,
            None => self.list_workspace(ws, filter, limit, cursor).await,
        }
    }

    /// A page of one endpoint's deliveries: its partition's log, newest first.
    async fn list_endpoint(
        &self,
        ws: &str,
        endpoint: &str,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>> {
        let partition = crate::delivery::partition_of(endpoint, self.partitions());
        let mut before = match cursor {
            Some(c) => Some(
                super::cursor::decode("deliveries-of-endpoint", c, |p| {
                    p.parse::<EntryId>().is_ok()
                })?
                .parse::<EntryId>()
                .map_err(|_| super::StoreError::BadCursor)?,
            ),
            None => filter.until_ms.map(|u| EntryId {
                ms: u as u64,
                seq: u64::MAX,
            }),
        };
        let since = filter.since_ms.map(|s| s.max(0) as u64);
        let mut out = Vec::new();
        for _ in 0..SCAN_ROUNDS {
            let chunk = match self {
                Store::Redis(s) => s.jobs_before(partition, before, SCAN_CHUNK).await?,
                Store::Embedded(s) => s.jobs_before(partition, before, SCAN_CHUNK)?,
            };
            let exhausted = chunk.len() < SCAN_CHUNK;
            let Some(last) = chunk.last() else { break };
            before = Some(last.entry);
            let past_window = since.is_some_and(|s| last.entry.ms < s);
            let mine: Vec<Job> = chunk
                .into_iter()
                .filter(|j| j.entry == j.id.entry && j.workspace == ws && j.endpoint_id == endpoint)
                .filter(|j| since.is_none_or(|s| j.entry.ms >= s))
                .filter(|j| filter.event_id.as_ref().is_none_or(|e| *e == j.event_id))
                .filter(|j| {
                    filter
                        .event_type
                        .as_ref()
                        .is_none_or(|t| *t == j.event_type)
                })
                .collect();
            for d in self.with_progress(mine).await? {
                if filter.status.is_none_or(|s| s == d.status) {
                    out.push(d);
                    if out.len() == limit {
                        let next = out
                            .last()
                            .and_then(|d| d.id.parse::<DeliveryId>().ok())
                            .map(|id| {
                                super::cursor::encode(
                                    "deliveries-of-endpoint",
                                    &id.entry.to_string(),
                                )
                            });
                        return Ok(Page {
                            data: out,
                            next_cursor: next,
                        });
                    }
                }
            }
            if exhausted || past_window {
                return Ok(Page {
                    data: out,
                    next_cursor: None,
                });
            }
        }
        Ok(Page {
            data: out,
            next_cursor: before
                .map(|b| super::cursor::encode("deliveries-of-endpoint", &b.to_string())),
        })
    }

    /// A page of a workspace's deliveries: its event log newest first, each event's
    /// deliveries newest (last made) first. The cursor is the event's entry and how many of
    /// its deliveries the pages so far have shown.
    async fn list_workspace(
        &self,
        ws: &str,
        filter: &DeliveryFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>> {
        if let Some(event_id) = &filter.event_id {
            let Some(event) = self.find_event(ws, event_id).await? else {
                return Ok(Page {
                    data: Vec::new(),
                    next_cursor: None,
                });
            };
            return self
                .page_of_events(vec![event], Vec::new(), filter, limit, 0, true)
                .await;
        }
        let (mut before, mut skip) = match cursor {
            Some(c) => {
                let pos = super::cursor::decode("deliveries", c, |p| p.contains('/'))?;
                let (entry, shown) = pos.split_once('/').ok_or(super::StoreError::BadCursor)?;
                let entry: EntryId = entry.parse().map_err(|_| super::StoreError::BadCursor)?;
                let shown: usize = shown.parse().map_err(|_| super::StoreError::BadCursor)?;
                // The cursor's event is read again (`before` is exclusive): step past it by one.
                (Some(entry.next()), shown)
            }
            None => (
                filter.until_ms.map(|u| EntryId {
                    ms: u as u64,
                    seq: u64::MAX,
                }),
                0,
            ),
        };
        let mut out: Vec<Delivery> = Vec::new();
        for _ in 0..SCAN_ROUNDS {
            let events = self
                .events_before(ws, before, filter.since_ms, SCAN_CHUNK)
                .await?;
            let exhausted = events.len() < SCAN_CHUNK;
            let Some(last) = events.last() else { break };
            before = Some(last.entry);
            let page = self
                .page_of_events(events, out, filter, limit, skip, exhausted)
                .await?;
            if page.next_cursor.is_some() || exhausted {
                return Ok(page);
            }
            out = page.data;
            skip = 0;
        }
        Ok(Page {
            data: out,
            next_cursor: before.map(|b| super::cursor::encode("deliveries", &format!("{b}/0"))),
        })
    }

    /// Adds the deliveries of `events` (newest first) that pass `filter` to `out`, up to
    /// `limit`; the first event's first `skip` deliveries (newest first) were shown before.
    /// `last` says no events come after these (so a page that ends with them has no cursor).
    async fn page_of_events(
        &self,
        events: Vec<LoggedEvent>,
        mut out: Vec<Delivery>,
        filter: &DeliveryFilter,
        limit: usize,
        skip: usize,
        last: bool,
    ) -> Result<Page<Delivery>> {
        let mut slots: Vec<(EntryId, usize, DeliveryId)> = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            if filter
                .event_type
                .as_ref()
                .is_some_and(|t| *t != ev.record.t)
            {
                continue;
            }
            let mut ids = ev.record.deliveries();
            ids.reverse();
            for (shown, id) in ids.into_iter().enumerate() {
                if i == 0 && shown < skip {
                    continue;
                }
                slots.push((ev.entry, shown + 1, id));
            }
        }
        let ids: Vec<DeliveryId> = slots.iter().map(|s| s.2).collect();
        let jobs = self.jobs(&ids).await?;
        let mut found: Vec<(EntryId, usize, Job)> = Vec::new();
        for (slot, job) in slots.into_iter().zip(jobs) {
            if let Some(job) = job {
                found.push((slot.0, slot.1, job));
            }
        }
        let positions: Vec<(EntryId, usize)> = found.iter().map(|f| (f.0, f.1)).collect();
        let deliveries = self
            .with_progress(found.into_iter().map(|f| f.2).collect())
            .await?;
        let total = deliveries.len();
        for (i, (d, (entry, shown))) in deliveries.into_iter().zip(positions).enumerate() {
            if filter.status.is_some_and(|s| s != d.status) {
                continue;
            }
            out.push(d);
            if out.len() == limit {
                let more = i + 1 < total || !last;
                return Ok(Page {
                    data: out,
                    next_cursor: more
                        .then(|| super::cursor::encode("deliveries", &format!("{entry}/{shown}"))),
                });
            }
        }
        Ok(Page {
            data: out,
            next_cursor: None,
        })
    }

    /// A page of the workspace's event log, newest first, of type `event_type` when given,
    /// made in `[since_ms, until_ms)`. Looks at a bounded number of events per request: a rare
    /// type answers with what it found and a cursor to go on from.
    pub async fn list_events(
        &self,
        ws: &str,
        event_type: Option<&str>,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<LoggedEvent>> {
        let mut before = match cursor {
            Some(c) => Some(
                super::cursor::decode("events", c, |p| p.parse::<EntryId>().is_ok())?
                    .parse::<EntryId>()
                    .map_err(|_| super::StoreError::BadCursor)?,
            ),
            None => until_ms.map(|u| EntryId {
                ms: u.max(0) as u64,
                seq: 0,
            }),
        };
        let mut out = Vec::new();
        for _ in 0..SCAN_ROUNDS {
            let events = self.events_before(ws, before, since_ms, SCAN_CHUNK).await?;
            let exhausted = events.len() < SCAN_CHUNK;
            for ev in events {
                before = Some(ev.entry);
                if event_type.is_some_and(|t| t != ev.record.t) {
                    continue;
                }
                out.push(ev);
                if out.len() == limit {
                    let next = before.map(|b| super::cursor::encode("events", &b.to_string()));
                    return Ok(Page {
                        data: out,
                        next_cursor: next,
                    });
                }
            }
            if exhausted {
                return Ok(Page {
                    data: out,
                    next_cursor: None,
                });
            }
        }
        Ok(Page {
            data: out,
            next_cursor: before.map(|b| super::cursor::encode("events", &b.to_string())),
        })
    }

    /// An event as received: kept in the event log when no plain delivery carries it,
    /// otherwise its first delivery's body without the `eventRule` and `workspace` blocks
    /// Switchyard added (`None` once retention removed it).
    pub async fn event_payload(&self, event: &LoggedEvent) -> Result<Option<serde_json::Value>> {
        if let Some(b) = event.record.b.as_deref().filter(|b| !b.is_empty()) {
            return Ok(serde_json::from_str(b).ok());
        }
        let Some(first) = event.record.deliveries().first().copied() else {
            return Ok(None);
        };
        let job = self.jobs(&[first]).await?.into_iter().next().flatten();
        Ok(job.and_then(|j| {
            let mut body: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&j.body).ok()?;
            body.remove("eventRule");
            body.remove("workspace");
            Some(serde_json::Value::Object(body))
        }))
    }

    /// The workspace's events before `before` (exclusive; `None`: the newest), newest first,
    /// not older than `since_ms`.
    pub async fn events_before(
        &self,
        ws: &str,
        before: Option<EntryId>,
        since_ms: Option<i64>,
        count: usize,
    ) -> Result<Vec<LoggedEvent>> {
        match self {
            Store::Redis(s) => s.events_before(ws, before, since_ms, count).await,
            Store::Embedded(s) => s.events_before(ws, before, since_ms, count),
        }
    }

    /// The event of id `event_id` in the workspace's log. Event ids are UUIDv7s, so the time
    /// in the id tells where in the log to look.
    pub async fn find_event(&self, ws: &str, event_id: &str) -> Result<Option<LoggedEvent>> {
        let Some(ms) = event_ms(event_id) else {
            return Ok(None);
        };
        match self {
            Store::Redis(s) => s.find_event(ws, event_id, ms).await,
            Store::Embedded(s) => s.find_event(ws, event_id, ms),
        }
    }

    pub async fn counts(&self, ws: &str, ep: &str) -> Result<Counts> {
        let stored: HashMap<String, i64> = match self {
            Store::Redis(s) => s.counts(ws, ep).await?,
            Store::Embedded(s) => s.counts(ws, ep)?,
        };
        Ok(Counts::from_stored(&stored))
    }
}

/// A delivery's last response status and duration, from its last attempt.
fn with_last(d: &mut Delivery, last: &super::record::AttemptRecord) {
    d.last_response_status = last.st;
    d.last_duration_ms = Some(last.d);
}

/// The unix-ms time of an event id (`evt_` + the UUIDv7's simple form).
pub fn event_ms(event_id: &str) -> Option<u64> {
    let hex = event_id.strip_prefix("evt_")?;
    let uuid = uuid::Uuid::try_parse(hex).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}
