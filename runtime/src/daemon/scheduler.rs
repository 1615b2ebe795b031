//! The scheduler: when each job is due, and the one entry every trigger
//! source feeds.
//!
//! Runs start only through [`Daemon::trigger`](super::Daemon::trigger), told
//! where the request came from ([`Source`]): an interval or cron due time
//! (this module's loop, [`run`]), a webhook or the control plane (`control`),
//! and next the release activation. [`Schedule`] turns a job's trigger into
//! due times, with one misfire rule: after downtime a job runs once, not once
//! per missed tick. The loop reads the in-memory job table and keeps each
//! job's parsed schedule until the job changes.

use super::Daemon;
use super::jobs::JobError;
use crate::manifest::Trigger;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where a trigger came from, for the log and the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An interval or cron due time.
    Schedule,
    /// `POST /hooks/JOB`.
    Webhook,
    /// `wfrun trigger` (the control plane, either transport).
    Manual,
    /// A release's health job, at the release's activation.
    Health,
    /// A service's start or restart.
    Service,
}

impl Source {
    /// In words, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Schedule => "schedule",
            Source::Webhook => "webhook",
            Source::Manual => "manual",
            Source::Health => "health check",
            Source::Service => "service",
        }
    }
}

/// The longest interval: a year and a day.
const MAX_EVERY: Duration = Duration::from_secs(366 * 24 * 3600);

/// When a time-triggered job is next due.
#[derive(Debug, Clone)]
pub struct Schedule {
    every: Option<Duration>,
    cron: Option<croner::Cron>,
    zone: jiff::tz::TimeZone,
}

impl Schedule {
    /// The schedule of job `name`'s trigger: `None` for webhook and manual
    /// jobs, an error for an interval out of range, a cron expression that
    /// does not parse or a zone the system does not know.
    pub fn of(name: &str, trigger: &Trigger) -> Result<Option<Schedule>, JobError> {
        match trigger {
            Trigger::Interval { every } => {
                if *every < Duration::from_millis(100) || *every > MAX_EVERY {
                    return Err(JobError::BadInterval { name: name.to_owned() });
                }
                Ok(Some(Schedule { every: Some(*every), cron: None, zone: jiff::tz::TimeZone::UTC }))
            }
            Trigger::Cron { cron, timezone } => {
                let parsed = parse_cron(cron).map_err(|reason| JobError::BadCron { name: name.to_owned(), reason })?;
                let zone = match timezone {
                    Some(zone) => jiff::tz::TimeZone::get(zone).map_err(|e| JobError::BadTimeZone {
                        name: name.to_owned(),
                        zone: zone.clone(),
                        reason: e.to_string(),
                    })?,
                    None => jiff::tz::TimeZone::UTC,
                };
                Ok(Some(Schedule { every: None, cron: Some(parsed), zone }))
            }
            Trigger::Webhook | Trigger::Manual | Trigger::Always => Ok(None),
        }
    }

    /// The first due time after the daemon starts, given when the job last
    /// ran. A job that missed one or more due times while the daemon was
    /// down runs once, now; it is not run once per missed time.
    pub fn first_due(&self, last_run: Option<SystemTime>, now: SystemTime) -> SystemTime {
        match last_run {
            Some(last) => {
                let due = self.next_after(last);
                if due <= now { now } else { due }
            }
            None => self.next_after(now),
        }
    }

    /// The next due time strictly after `after`.
    pub fn next_after(&self, after: SystemTime) -> SystemTime {
        if let Some(every) = self.every {
            return after.checked_add(every).unwrap_or_else(far_future);
        }
        let Some(cron) = &self.cron else { return far_future() };
        jiff::Timestamp::try_from(after)
            .ok()
            .and_then(|t| cron.find_next_occurrence(&t.to_zoned(self.zone.clone()), false).ok())
            .map(|next| SystemTime::from(next.timestamp()))
            // An expression with no future time (Feb 30) never fires.
            .unwrap_or_else(far_future)
    }
}

/// Parses a standard five-field cron expression (minute hour day month
/// weekday).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    if expr.split_whitespace().count() != 5 {
        return Err(format!(
            "cron {expr:?}: expected five fields (minute hour day-of-month month day-of-week), e.g. \"*/5 * * * *\""
        ));
    }
    expr.parse::<croner::Cron>().map_err(|e| format!("cron {expr:?}: {e}"))
}

fn far_future() -> SystemTime {
    SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// One job's place in the loop: its parsed schedule and next due time.
struct Due {
    schedule: Schedule,
    at: SystemTime,
}

/// The scheduler loop: sleeps until the next interval or cron job is due,
/// triggers it, and computes its next time from now. Woken early when a job
/// is added, removed, paused or resumed.
pub async fn run(daemon: Arc<Daemon>) {
    let mut due: BTreeMap<String, Due> = BTreeMap::new();
    loop {
        let changed = daemon.schedule_changed.notified();
        let now = SystemTime::now();
        let jobs = daemon.jobs.all();
        let mut due_now = Vec::new();
        let mut earliest: Option<SystemTime> = None;
        {
            let mut forget = daemon.schedule_forget.lock().unwrap_or_else(|p| p.into_inner());
            for name in forget.drain(..) {
                due.remove(&name);
            }
        }
        due.retain(|name, _| jobs.iter().any(|j| &j.name == name));
        for job in &jobs {
            if !due.contains_key(&job.name) {
                let schedule = match Schedule::of(&job.name, &job.spec.trigger) {
                    Ok(Some(schedule)) => schedule,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!("{e}; not scheduled");
                        continue;
                    }
                };
                let last = job.last_run_at.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok());
                let at = schedule.first_due(last, now);
                due.insert(job.name.clone(), Due { schedule, at });
            }
            let entry = due.get_mut(&job.name).expect("inserted above");
            if entry.at <= now {
                if !job.paused {
                    due_now.push(job.name.clone());
                }
                // One run per due time, even if it was missed by far.
                entry.at = entry.schedule.next_after(now);
            }
            earliest = Some(earliest.map_or(entry.at, |e| e.min(entry.at)));
        }
        daemon.publish_next_due(due.iter().map(|(name, d)| (name.clone(), d.at)).collect());
        for name in due_now {
            match daemon.trigger(&name, None, Source::Schedule) {
                Ok(run_id) => tracing::info!("job {name}: started run {run_id} on schedule"),
                Err(super::DaemonError::Busy { .. }) => tracing::warn!("job {name}: due, but still running; skipped"),
                Err(e) => tracing::warn!("job {name}: not started: {e}"),
            }
        }
        let wait = earliest
            .and_then(|e| e.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = changed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_interval_runs_once_at_start_then_on_schedule() {
        let schedule = Schedule::of("j", &Trigger::Interval { every: Duration::from_secs(60) }).unwrap().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Down for ten intervals: one run now, not ten.
        let last = now - Duration::from_secs(600);
        assert_eq!(schedule.first_due(Some(last), now), now);
        // Not yet due: wait for it.
        let last = now - Duration::from_secs(30);
        assert_eq!(schedule.first_due(Some(last), now), now + Duration::from_secs(30));
        // Never ran: one interval from now.
        assert_eq!(schedule.first_due(None, now), now + Duration::from_secs(60));
    }

    #[test]
    fn cron_expressions_are_standard_and_utc_unless_a_zone_is_given() {
        let cron = |zone: Option<&str>| Trigger::Cron { cron: "30 2 * * *".into(), timezone: zone.map(str::to_owned) };
        let schedule = Schedule::of("j", &cron(None)).unwrap().unwrap();
        // 1970-01-01T00:00:00Z → 02:30 the same day.
        assert_eq!(schedule.next_after(SystemTime::UNIX_EPOCH), SystemTime::UNIX_EPOCH + Duration::from_secs(9000));
        // 02:30 in Paris (UTC+1 in January 1970) is 01:30 UTC.
        let schedule = Schedule::of("j", &cron(Some("Europe/Paris"))).unwrap().unwrap();
        assert_eq!(schedule.next_after(SystemTime::UNIX_EPOCH), SystemTime::UNIX_EPOCH + Duration::from_secs(5400));
        assert!(Schedule::of("j", &Trigger::Manual).unwrap().is_none());
    }
}
