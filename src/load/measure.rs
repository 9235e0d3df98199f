//! What a run's arrivals say: each accepted delivery's first arrival (later ones are
//! duplicates), latencies, order per sequence, rate limits per endpoint, and the throughput
//! and latency over time. It reads [`Arrival`]s only, so the built-in receiver and remote
//! receivers (read through their control API) are measured by the same code; every time is
//! a wall-clock unix ms, the arrivals' taken on the receivers' clocks.

use std::collections::HashMap;

use super::LoadConfig;
use super::receiver::Arrival;
use super::report::{Percentiles, Report, Sample};
use super::send::{Accepted, Sent};

/// Most points of the timeline: buckets widen to fit a long run.
const TIMELINE_POINTS: f64 = 60.0;
/// Narrowest bucket, ms: a shorter one holds too few deliveries for a percentile.
const MIN_BUCKET_MS: f64 = 250.0;

/// Now, on this machine's wall clock (unix ms, fractional).
pub(super) fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Deliveries of one sequence (first arrivals, in arrival order) that arrived after one that
/// was ingested later than them. Ingest order is known within a batch (its events in order)
/// and between batches when one's 202 came back before the other was first sent; batches in
/// flight together have no order between them.
pub(super) fn order_violations(arrivals: &[Sent], batch: usize) -> usize {
    let mut latest_sent: Option<f64> = None;
    let mut highest_in_batch: HashMap<usize, usize> = HashMap::new();
    let mut violations = 0;
    for a in arrivals {
        let later_batch_first = latest_sent.is_some_and(|s| s > a.answered);
        let later_in_batch = highest_in_batch
            .get(&(a.seq / batch))
            .is_some_and(|&s| s > a.seq);
        if later_batch_first || later_in_batch {
            violations += 1;
        }
        latest_sent = Some(latest_sent.map_or(a.first_sent, |s| s.max(a.first_sent)));
        let h = highest_in_batch.entry(a.seq / batch).or_insert(a.seq);
        *h = (*h).max(a.seq);
    }
    violations
}

/// Endpoints that got more than `limit + 1` deliveries within some second.
fn rate_limit_violations(per_endpoint: &HashMap<usize, Vec<f64>>, limit: u32) -> usize {
    per_endpoint
        .values()
        .filter(|v| {
            (0..v.len()).any(|i| {
                v[i..].iter().take_while(|at| **at - v[i] < 1000.0).count() > limit as usize + 1
            })
        })
        .count()
}

/// Deliveries/s and latency percentiles of the first arrivals `(at_ms, latency_ms)`, in
/// buckets from `started_ms`.
fn timeline(first: &[(f64, f64)], started_ms: f64) -> Vec<Sample> {
    let Some(last) = first.iter().map(|f| f.0).reduce(f64::max) else {
        return Vec::new();
    };
    let width = ((last - started_ms) / TIMELINE_POINTS).max(MIN_BUCKET_MS);
    let mut buckets: Vec<Vec<f64>> = Vec::new();
    for &(at, latency) in first {
        let b = ((at - started_ms).max(0.0) / width) as usize;
        if buckets.len() <= b {
            buckets.resize_with(b + 1, Vec::new);
        }
        buckets[b].push(latency);
    }
    buckets
        .into_iter()
        .enumerate()
        .map(|(b, latencies)| {
            let deliveries_per_s = latencies.len() as f64 * 1000.0 / width;
            Sample {
                t_s: (b as f64 + 1.0) * width / 1000.0,
                deliveries_per_s,
                latency_ms: (!latencies.is_empty()).then(|| Percentiles::of(latencies)),
            }
        })
        .collect()
}

/// The report of the deliveries' first arrivals; with `created` (each delivery's stored
/// `createdAt`) also accept-to-arrival.
pub(super) fn measure(
    arrivals: &[Arrival],
    accepted: &Accepted,
    created: Option<&HashMap<String, f64>>,
    started_ms: f64,
    cfg: &LoadConfig,
) -> Report {
    let mut first: HashMap<&str, f64> = HashMap::new();
    let mut since_accept = Vec::new();
    let mut duplicates = 0;
    let mut per_endpoint: HashMap<usize, Vec<f64>> = HashMap::new();
    // One sequence per endpoint, or per (endpoint, key value) with ordering keys; first
    // arrivals in arrival order.
    let mut per_sequence: HashMap<(usize, usize), Vec<Sent>> = HashMap::new();
    // Arrivals come in each receiver's own order (its index, not its clock, which may step),
    // receiver after receiver. That is enough: an endpoint, hence each of its sequences and
    // every copy of its deliveries, lives on one receiver.
    for a in arrivals.iter().filter(|a| a.status == 200) {
        let Some(&sent) = accepted.deliveries.get(a.id.as_str()) else {
            continue;
        };
        if first.contains_key(a.id.as_str()) {
            duplicates += 1;
            continue;
        }
        first.insert(&a.id, a.at_ms);
        if let Some(c) = created.and_then(|m| m.get(&a.id)) {
            since_accept.push(a.at_ms - c);
        }
        let key = cfg.keys.map_or(0, |k| k.of(sent.seq, cfg.endpoints));
        per_sequence.entry((sent.ep, key)).or_default().push(sent);
        per_endpoint.entry(sent.ep).or_default().push(a.at_ms);
    }
    let firsts: Vec<(f64, f64)> = first
        .iter()
        .map(|(id, at)| (*at, at - accepted.deliveries[*id].sent))
        .collect();
    let last = firsts.iter().map(|f| f.0).fold(started_ms, f64::max);
    // Deliveries while ingest ran (up to the last 202) and after it, each over its own time.
    let during = firsts
        .iter()
        .filter(|f| f.0 <= accepted.last_accept)
        .count();
    let ingest_secs = (accepted.last_accept - started_ms) / 1000.0;
    let after_secs = (last - accepted.last_accept).max(0.0) / 1000.0;
    // Too short a tail says nothing of the rate a backlog drains at.
    let after_ingest_per_s = (after_secs >= 0.2 && firsts.len() - during >= 100)
        .then(|| (firsts.len() - during) as f64 / after_secs);
    Report {
        endpoints: cfg.endpoints,
        events: cfg.events,
        offered_rate: cfg.rate,
        deliveries: firsts.len(),
        deliveries_per_s: firsts.len() as f64 / ((last - started_ms) / 1000.0).max(1e-6),
        during_ingest_per_s: (ingest_secs > 0.0).then(|| during as f64 / ingest_secs),
        after_ingest_per_s,
        latency_ms: Percentiles::of(firsts.iter().map(|f| f.1).collect()),
        accept_latency_ms: (!since_accept.is_empty()).then(|| Percentiles::of(since_accept)),
        lost: accepted.deliveries.len().saturating_sub(firsts.len()),
        unaccepted: accepted.unaccepted,
        duplicates,
        order_violations: per_sequence
            .values()
            .map(|v| order_violations(v, cfg.batch.max(1)))
            .sum(),
        ordering_keys: cfg.keys.map(|k| k.values),
        rate_limit_violations: cfg
            .rate_limit
            .map_or(0, |limit| rate_limit_violations(&per_endpoint, limit)),
        timeline: timeline(&firsts, started_ms),
        ..Report::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(seq: usize, first_sent: f64, answered: f64) -> Sent {
        Sent {
            ep: 0,
            seq,
            first_sent,
            sent: first_sent,
            answered,
        }
    }

    #[test]
    fn order_is_checked_within_a_batch_and_between_batches_that_did_not_overlap() {
        // Batch 0 (seqs 0-9) answered at 10 ms; batch 1 (10-19) sent at 20 ms; batch 2
        // (20-29) sent at 5 ms, with batch 0 still in flight.
        let (a, b, c) = (
            sent(3, 0.0, 10.0),
            sent(13, 20.0, 30.0),
            sent(23, 5.0, 15.0),
        );
        assert_eq!(order_violations(&[a, b], 10), 0);
        assert_eq!(
            order_violations(&[b, a], 10),
            1,
            "a's batch ended before b's began"
        );
        assert_eq!(
            order_violations(&[c, a], 10),
            0,
            "overlapping batches have no order"
        );
        let a2 = sent(5, 0.0, 10.0);
        assert_eq!(order_violations(&[a2, a], 10), 1, "within a batch");
    }

    #[test]
    fn the_timeline_buckets_first_arrivals_from_the_start() {
        // 4 deliveries in the first 250 ms bucket, 2 in the third; the second is empty.
        let firsts = [
            (10.0, 1.0),
            (20.0, 2.0),
            (30.0, 3.0),
            (240.0, 4.0),
            (600.0, 9.0),
            (700.0, 9.0),
        ];
        let t = timeline(&firsts, 0.0);
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].deliveries_per_s, t[1].deliveries_per_s), (16.0, 0.0));
        assert!(t[1].latency_ms.is_none());
        assert_eq!(t[2].latency_ms.as_ref().unwrap().p50, 9.0);
        assert!(timeline(&[], 0.0).is_empty());
        let limits: HashMap<usize, Vec<f64>> = [(0, vec![0.0, 100.0, 200.0, 1500.0])].into();
        assert_eq!(rate_limit_violations(&limits, 2), 0);
        assert_eq!(rate_limit_violations(&limits, 1), 1);
    }
}
