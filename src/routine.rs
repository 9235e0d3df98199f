//! Routines: event rules that fire on a cron schedule instead of on events.
//!
//! A schedule is compiled with `croner` (5- or 6-field cron, seconds optional) in an IANA time
//! zone from `chrono-tz`. Daylight-saving rules are explicit here rather than left to the
//! library: a local time that does not exist (the spring-forward gap) has no tick that day,
//! and a local time that happens twice (fall back) ticks once, at its first occurrence.
//!
//! Every node runs the [`Scheduler`]; a tick is fired by whichever node first claims it in the
//! store (`SET NX` on the tick's key), and its event id is derived from (routine, scheduled
//! time), so two nodes, a restart or clock skew never fire a tick twice. Ticks missed while no
//! node was up: those of the last [`RECENT`] are fired in order (a failover loses none); older
//! ones collapse into the most recent (`catchUp: "latest"`) or are dropped (`"none"`), so a
//! long outage never ends in a storm.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::delivery::rfc3339;
use crate::event::Event;
use crate::ingest::Fired;
use crate::invalid::Invalid;
use crate::rule::{CatchUp, CompiledRule, Rule, Schedule};
use crate::store::Store;

/// Missed ticks younger than this are all fired after a gap (a failover); older ones collapse.
pub const RECENT: Duration = Duration::from_secs(60);
/// Most ticks one routine fires in one pass.
const MAX_PER_PASS: usize = 120;
/// How often the scheduler looks for due ticks.
const PASS_EVERY: Duration = Duration::from_millis(200);

/// A schedule ready to compute fire times.
#[derive(Debug, Clone)]
pub struct CompiledSchedule {
    cron: Cron,
    tz: Tz,
}

impl CompiledSchedule {
    /// Parses the cron and the time zone; errors name `cron` or `timezone`.
    pub fn compile(s: &Schedule) -> Result<CompiledSchedule, Invalid> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(s.cron.trim())
            .map_err(|e| {
                Invalid::new(
                    "invalid_cron",
                    "cron",
                    format!("`{}` is not a cron expression: {e}", s.cron),
                )
            })?;
        let tz = Tz::from_str(s.timezone.trim()).map_err(|_| {
            Invalid::new(
                "invalid_timezone",
                "timezone",
                format!("`{}` is not an IANA time zone", s.timezone),
            )
        })?;
        Ok(CompiledSchedule { cron, tz })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_timezone(&self.tz);
        for _ in 0..10_000 {
            let n = self.cron.find_next_occurrence(&t, false).ok()?;
            if self.is_real_tick(&n) {
                return Some(n.with_timezone(&Utc));
            }
            t = n;
        }
        None
    }

    /// A found occurrence is a tick only if its local time is the one the pattern names (not a
    /// time shifted out of a DST gap) and, for a local time that happens twice, the first.
    fn is_real_tick(&self, n: &DateTime<Tz>) -> bool {
        if !self.cron.is_time_matching(n).unwrap_or(false) {
            return false;
        }
        match self.tz.from_local_datetime(&n.naive_local()) {
            LocalResult::Single(_) => true,
            LocalResult::Ambiguous(first, _) => first == *n,
            LocalResult::None => false,
        }
    }

    /// The next `n` ticks after `after`.
    pub fn next_n(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// The ticks to fire now: every tick in `(last, now]` when they are recent, else only the
    /// latest (or none, by `catch_up`). Bounded, so a long outage never causes a storm.
    pub fn due(
        &self,
        last: DateTime<Utc>,
        now: DateTime<Utc>,
        catch_up: CatchUp,
    ) -> Vec<DateTime<Utc>> {
        let recent_from = now - chrono::Duration::from_std(RECENT).unwrap_or_default();
        let mut due = Vec::new();
        let mut older_latest = None;
        let mut t = last;
        while let Some(next) = self.next_after(t) {
            if next > now {
                break;
            }
            if next >= recent_from {
                due.push(next);
            } else {
                older_latest = Some(next);
            }
            t = if next < recent_from {
                self.skip_to(next, recent_from)
            } else {
                next
            };
            if due.len() >= MAX_PER_PASS {
                break;
            }
        }
        if due.is_empty() && catch_up == CatchUp::Latest {
            due.extend(older_latest);
        }
        due
    }

    /// Jumps over old ticks: the last tick before `from`, found without walking every one.
    fn skip_to(&self, current: DateTime<Utc>, from: DateTime<Utc>) -> DateTime<Utc> {
        let before = from - chrono::Duration::seconds(1);
        match self
            .cron
            .find_previous_occurrence(&before.with_timezone(&self.tz), true)
        {
            Ok(prev) if prev.with_timezone(&Utc) > current => {
                prev.with_timezone(&Utc) - chrono::Duration::milliseconds(1)
            }
            _ => current,
        }
    }
}

/// The `routine:tick` event of one tick.
pub fn tick_event(rule: &Rule, schedule: &Schedule, at: DateTime<Utc>) -> Event {
    use crate::event::catalogue::{RoutineRef, RoutineTick, TickSchedule};
    let tick = RoutineTick {
        routine: RoutineRef {
            id: rule.id,
            uuid: rule.uuid.clone(),
            name: rule.spec.name.clone(),
            schedule: TickSchedule {
                cron: schedule.cron.clone(),
                timezone: schedule.timezone.clone(),
            },
            scheduled_at: rfc3339(at),
        },
        payload: rule.spec.payload.clone().unwrap_or_else(|| json!({})),
    };
    let mut body = serde_json::Map::new();
    body.insert("event".into(), json!("routine:tick"));
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(tick) {
        body.extend(fields);
    }
    Event {
        event_type: "routine:tick".into(),
        body,
    }
}

/// Fires due ticks of every routine, on every node; the store's claim decides who fires each.
pub struct Scheduler {
    store: Store,
    cache: std::sync::Arc<crate::ingest::cache::WorkspaceCache>,
}

impl Scheduler {
    pub fn new(
        store: Store,
        cache: std::sync::Arc<crate::ingest::cache::WorkspaceCache>,
    ) -> Scheduler {
        Scheduler { store, cache }
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PASS_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.pass(Utc::now()).await {
                tracing::warn!(error = %e, "routine pass failed");
            }
        }
    }

    /// One look at every routine: fires what is due and not yet claimed.
    pub async fn pass(&self, now: DateTime<Utc>) -> crate::store::Result<u32> {
        let mut fired = 0;
        for (ws_id, rule) in self.store.routines().await? {
            let Some(schedule) = rule.spec.schedule.clone().filter(|_| rule.spec.enabled) else {
                continue;
            };
            let Ok(compiled) = CompiledSchedule::compile(&schedule) else {
                continue;
            };
            let created = DateTime::parse_from_rfc3339(&rule.created_at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(now);
            let last = self
                .store
                .routine_last(&ws_id, &rule.uuid)
                .await?
                .and_then(DateTime::from_timestamp_millis)
                .unwrap_or(created);
            let due = compiled.due(last.max(created), now, schedule.catch_up);
            if due.is_empty() {
                continue;
            }
            let Some(ws) = self.store.workspace(&ws_id).await? else {
                continue;
            };
            let compiled_rule = CompiledRule::for_routine(&rule);
            for at in due {
                if !self
                    .store
                    .claim_tick(&ws_id, &rule.uuid, at.timestamp_millis())
                    .await?
                {
                    continue;
                }
                let event = tick_event(&rule, &schedule, at);
                let snapshot = self.cache.get(&self.store, &ws_id).await?;
                crate::ingest::ingest(
                    &self.store,
                    &self.cache,
                    &snapshot,
                    &ws,
                    vec![Fired {
                        event: &event,
                        rules: vec![&compiled_rule],
                    }],
                    None,
                )
                .await?;
                fired += 1;
            }
        }
        Ok(fired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str) -> CompiledSchedule {
        CompiledSchedule::compile(&Schedule {
            cron: cron.into(),
            timezone: tz.into(),
            catch_up: CatchUp::Latest,
        })
        .unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_fields_and_bad_input_name_the_field() {
        let every_second = schedule("* * * * * *", "UTC");
        assert_eq!(
            every_second.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:00:01Z"))
        );
        let weekdays = schedule("0 9 * * 1-5", "UTC");
        // 2026-01-03 is a Saturday: the next weekday 09:00 is Monday the 5th.
        assert_eq!(
            weekdays.next_after(utc("2026-01-03T10:00:00Z")),
            Some(utc("2026-01-05T09:00:00Z"))
        );
        let bad = |cron: &str, tz: &str| {
            CompiledSchedule::compile(&Schedule {
                cron: cron.into(),
                timezone: tz.into(),
                catch_up: CatchUp::Latest,
            })
            .unwrap_err()
        };
        assert_eq!(bad("61 * * * *", "UTC").field, "cron");
        assert_eq!(bad("not cron", "UTC").field, "cron");
        assert_eq!(bad("* * * * *", "Mars/Olympus").field, "timezone");
    }

    #[test]
    fn a_time_that_does_not_exist_is_skipped() {
        // New York springs forward on 2026-03-08: 02:30 local does not exist that day.
        let s = schedule("0 30 2 * * *", "America/New_York");
        let ticks = s.next_n(utc("2026-03-06T12:00:00Z"), 3);
        let local: Vec<String> = ticks
            .iter()
            .map(|t| {
                t.with_timezone(&Tz::America__New_York)
                    .format("%m-%d %H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(local, vec!["03-07 02:30", "03-09 02:30", "03-10 02:30"]);
    }

    #[test]
    fn a_time_that_happens_twice_fires_once() {
        // New York falls back on 2026-11-01: 01:30 local happens twice.
        let s = schedule("0 30 1 * * *", "America/New_York");
        let ticks = s.next_n(utc("2026-10-31T12:00:00Z"), 3);
        let local: Vec<String> = ticks
            .iter()
            .map(|t| {
                t.with_timezone(&Tz::America__New_York)
                    .format("%m-%d %H:%M %Z")
                    .to_string()
            })
            .collect();
        assert_eq!(
            local,
            vec!["11-01 01:30 EDT", "11-02 01:30 EST", "11-03 01:30 EST"],
            "01:30 on 11-01 once, not twice"
        );
        // Every minute through the repeated hour: 60 ticks for 01:xx, not 120.
        let m = schedule("0 * 1 * * *", "America/New_York");
        let day = m.next_n(utc("2026-11-01T04:00:00Z"), 200);
        // 01:00 EDT is 05:00Z; the repeated 01:00 EST is 06:00Z; 02:00 EST is 07:00Z.
        let in_one_oclock = day
            .iter()
            .filter(|t| **t >= utc("2026-11-01T05:00:00Z") && **t < utc("2026-11-01T07:00:00Z"))
            .count();
        assert_eq!(in_one_oclock, 60);
    }

    #[test]
    fn missed_ticks_never_storm() {
        let s = schedule("* * * * * *", "UTC");
        let now = utc("2026-01-01T12:00:00Z");
        // A 5 s gap (a failover): all five ticks, in order.
        let short = s.due(utc("2026-01-01T11:59:55Z"), now, CatchUp::Latest);
        assert_eq!(short.len(), 5);
        assert_eq!(short.last(), Some(&now));
        // A day without any node: the recent minute, never 86,400 ticks.
        let long = s.due(utc("2025-12-31T12:00:00Z"), now, CatchUp::Latest);
        assert!(long.len() <= MAX_PER_PASS, "{}", long.len());
        let hourly = schedule("0 0 * * * *", "UTC");
        let collapsed = hourly.due(
            utc("2025-12-31T12:30:00Z"),
            utc("2026-01-01T12:30:00Z"),
            CatchUp::Latest,
        );
        assert_eq!(
            collapsed,
            vec![utc("2026-01-01T12:00:00Z")],
            "only the most recent missed tick"
        );
        assert!(
            hourly
                .due(
                    utc("2025-12-31T12:30:00Z"),
                    utc("2026-01-01T12:30:00Z"),
                    CatchUp::None
                )
                .is_empty()
        );
    }
}
