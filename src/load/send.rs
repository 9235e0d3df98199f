//! Sending a run's events: batches through the API, paced or as fast as it accepts, and what
//! each accepted delivery was (its endpoint, its event's sequence number, when its batch went
//! out and came back, on the wall clock so it compares with any receiver's clock).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::LoadConfig;
use super::measure::now_ms;

/// Tries of one batch before the run stops sending (the API is gone or refuses it).
const BATCH_TRIES: usize = 20;
/// Pause between two tries of a batch.
const BATCH_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// An accepted delivery: its endpoint, its event's seq, and its batch's times (unix ms).
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    pub ep: usize,
    pub seq: usize,
    /// When its batch was first sent: its events were ingested no earlier.
    pub first_sent: f64,
    /// When the batch's request that was answered 202 was sent (latency counts from it).
    pub sent: f64,
    /// When that 202 came back: its events were ingested no later.
    pub answered: f64,
}

pub(super) struct Accepted {
    /// delivery id → its event and batch
    pub deliveries: HashMap<String, Sent>,
    /// When the last batch's 202 came back (unix ms).
    pub last_accept: f64,
    /// Events never accepted: their batch was refused [`BATCH_TRIES`] times, or came after one
    /// that was.
    pub unaccepted: usize,
}

/// The event of the `k`-th event of the run: `member.id` picks the endpoint's rule, `seq` and
/// `key` are what the receivers report back.
fn event(k: usize, cfg: &LoadConfig) -> Value {
    let mut member = json!({"id": k % cfg.endpoints, "seq": k});
    if let Some(keys) = cfg.keys {
        member["key"] = json!(keys.of(k, cfg.endpoints));
    }
    json!({"event": "member:updated", "member": member})
}

/// What one batch's 202 says: each delivery id with its event.
fn accepted_of(
    answer: &Value,
    start: usize,
    endpoints: usize,
    times: [f64; 3],
) -> Vec<(String, Sent)> {
    let [first_sent, sent, answered] = times;
    let mut out = Vec::new();
    for (i, r) in answer["results"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let k = start + i;
        for d in r["deliveries"].as_array().into_iter().flatten() {
            out.push((
                d.as_str().unwrap_or_default().to_string(),
                Sent {
                    ep: k % endpoints,
                    seq: k,
                    first_sent,
                    sent,
                    answered,
                },
            ));
        }
    }
    out
}

pub(super) async fn send_all(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    cfg: &LoadConfig,
    started: Instant,
    started_ms: f64,
) -> Accepted {
    let url = Arc::new(format!("{base}/v1/events/batch"));
    let gate = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
    let gave_up = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    let batches = cfg.events.div_ceil(cfg.batch.max(1));
    for b in 0..batches {
        if let Some(rate) = cfg.rate {
            let due = started + Duration::from_secs_f64((b * cfg.batch) as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = gate.clone().acquire_owned().await.expect("open");
        if gave_up.load(Ordering::SeqCst) {
            break;
        }
        let range = b * cfg.batch..((b + 1) * cfg.batch).min(cfg.events);
        let body = json!({"events": range.clone().map(|k| event(k, cfg)).collect::<Vec<_>>()});
        let (http, url, key, endpoints) =
            (http.clone(), url.clone(), key.to_string(), cfg.endpoints);
        let gave_up = gave_up.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let first_sent = now_ms();
            for _ in 0..BATCH_TRIES {
                // Latency counts from the moment the batch is sent: a delivery can arrive before
                // its batch's 202 is back, so the 202 would under-count it.
                let sent = now_ms();
                if let Ok(resp) = http
                    .post(url.as_str())
                    .bearer_auth(&key)
                    .header("Idempotency-Key", format!("load-{}", range.start))
                    .json(&body)
                    .send()
                    .await
                    && resp.status().as_u16() == 202
                    && let Ok(answer) = resp.json::<Value>().await
                {
                    let answered = now_ms();
                    let times = [first_sent, sent, answered];
                    let batch = accepted_of(&answer, range.start, endpoints, times);
                    return Ok((batch, range.len(), answered));
                }
                if gave_up.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(BATCH_RETRY_PAUSE).await;
            }
            gave_up.store(true, Ordering::SeqCst);
            Err(())
        });
    }
    let mut deliveries = HashMap::new();
    let mut last_accept = started_ms;
    let mut accepted_events = 0;
    while let Some(Ok(done)) = tasks.join_next().await {
        if let Ok((batch, events, answered)) = done {
            last_accept = last_accept.max(answered);
            accepted_events += events;
            deliveries.extend(batch);
        }
    }
    Accepted {
        deliveries,
        last_accept,
        unaccepted: cfg.events - accepted_events,
    }
}
