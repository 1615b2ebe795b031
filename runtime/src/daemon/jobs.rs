//! Job definitions and when they are due.
//!
//! A [`JobSpec`] names a bundle, its input or arguments, optional limit
//! ceilings and one [`Trigger`]: an interval, a cron expression (in UTC, or
//! in the job's IANA time zone), a webhook, or manual only. The same spec comes from the config file
//! (`[jobs.NAME]`), from `wfrun jobs add`, and is stored as JSON in the
//! `jobs` table. [`Schedule`] turns a trigger into due times, with one
//! misfire rule: after downtime a job runs once, not once per missed tick.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// What starts a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Every interval, e.g. `30s`.
    Every(#[serde(with = "humantime_serde_compat")] Duration),
    /// A standard five-field cron expression, in UTC or the job's `timezone`.
    Cron(String),
    /// An HTTP POST to `/hooks/NAME` on the webhook listener; the body is the input.
    Webhook,
    /// Only `wfrun trigger NAME`.
    Manual,
}

impl Trigger {
    /// The trigger chosen by at most one of `every`, `cron` and `webhook`;
    /// none of them is manual.
    pub fn choose(every: Option<Duration>, cron: Option<String>, webhook: bool) -> Result<Trigger, String> {
        match (every, cron, webhook) {
            (Some(every), None, false) => Ok(Trigger::Every(every)),
            (None, Some(cron), false) => Ok(Trigger::Cron(cron)),
            (None, None, true) => Ok(Trigger::Webhook),
            (None, None, false) => Ok(Trigger::Manual),
            _ => Err("give one of `every`, `cron` and `webhook`".to_owned()),
        }
    }
}

/// One job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The bundle to run (absolute, or relative to the daemon's working
    /// directory for CLI jobs and to the config file for config jobs).
    pub bundle: PathBuf,
    /// Input JSON text for a node or workflow.
    #[serde(default = "empty_object")]
    pub input: String,
    /// Arguments for a job (a WASI command).
    #[serde(default)]
    pub args: Vec<String>,
    /// What starts it.
    pub trigger: Trigger,
    /// The IANA time zone a cron expression is read in (e.g.
    /// `Europe/Paris`, from the system's zoneinfo); `None`: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Let a new run start while the last one is still running.
    #[serde(default)]
    pub allow_overlap: bool,
    /// Memory ceiling for its nodes, in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Wall-clock ceiling per node attempt.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub timeout: Option<Duration>,
    /// Fuel ceiling per node attempt.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// HMAC-SHA256 key for webhook signatures (hex); unsigned POSTs are
    /// refused when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

/// The longest interval: a year and a day.
const MAX_EVERY: Duration = Duration::from_secs(366 * 24 * 3600);

fn empty_object() -> String {
    "{}".to_owned()
}

impl JobSpec {
    /// Checks what can be checked without running: the name, the input
    /// JSON, the cron expression, the interval.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(format!("job name {name:?}: use 1-64 letters, digits, `-` or `_`"));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&self.input)
            .map_err(|e| format!("job {name}: input is not valid JSON: {e}"))?;
        match &self.trigger {
            Trigger::Every(every) if *every < Duration::from_millis(100) || *every > MAX_EVERY => {
                Err(format!("job {name}: `every` must be between 100ms and 366 days"))
            }
            Trigger::Cron(expr) => parse_cron(expr).map(|_| ()).map_err(|e| format!("job {name}: {e}")),
            _ => Ok(()),
        }?;
        if let Some(zone) = &self.timezone {
            if !matches!(self.trigger, Trigger::Cron(_)) {
                return Err(format!("job {name}: a timezone applies to cron jobs only"));
            }
            time_zone(zone).map_err(|e| format!("job {name}: {e}"))?;
        }
        if let Some(secret) = &self.webhook_secret
            && (secret.len() < 32 || hex::decode(secret).is_err())
        {
            return Err(format!("job {name}: webhook_secret must be at least 16 bytes, written in hex"));
        }
        Ok(())
    }
}

/// Parses a standard five-field cron expression (minute hour day month
/// weekday), evaluated in UTC.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    if expr.split_whitespace().count() != 5 {
        return Err(format!(
            "cron {expr:?}: expected five fields (minute hour day-of-month month day-of-week), e.g. \"*/5 * * * *\""
        ));
    }
    expr.parse::<croner::Cron>().map_err(|e| format!("cron {expr:?}: {e}"))
}

/// The IANA time zone `name`, from the system's zoneinfo.
pub fn time_zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name).map_err(|e| format!("time zone {name:?}: {e}"))
}

/// When a time-triggered job is next due.
#[derive(Debug, Clone)]
pub struct Schedule {
    trigger: Trigger,
    cron: Option<croner::Cron>,
    zone: jiff::tz::TimeZone,
}

impl Schedule {
    /// The schedule of `spec`'s trigger; `None` for webhook and manual jobs.
    pub fn of(spec: &JobSpec) -> Option<Schedule> {
        let zone = spec.timezone.as_deref().and_then(|z| time_zone(z).ok()).unwrap_or(jiff::tz::TimeZone::UTC);
        let cron = match &spec.trigger {
            Trigger::Every(_) => None,
            Trigger::Cron(expr) => parse_cron(expr).ok(),
            Trigger::Webhook | Trigger::Manual => return None,
        };
        Some(Schedule { trigger: spec.trigger.clone(), cron, zone })
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
        match (&self.trigger, &self.cron) {
            (Trigger::Every(every), _) => after.checked_add(*every).unwrap_or_else(far_future),
            (Trigger::Cron(_), Some(cron)) => jiff::Timestamp::try_from(after)
                .ok()
                .and_then(|t| cron.find_next_occurrence(&t.to_zoned(self.zone.clone()), false).ok())
                .map(|next| SystemTime::from(next.timestamp()))
                // An expression with no future time (Feb 30) never fires.
                .unwrap_or_else(far_future),
            _ => far_future(),
        }
    }
}

fn far_future() -> SystemTime {
    SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Serde for durations as humantime text (`30s`, `5m`).
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| {
                    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
                })
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(trigger: Trigger) -> JobSpec {
        JobSpec {
            bundle: "x.wasm".into(),
            input: "{}".into(),
            args: vec![],
            trigger,
            timezone: None,
            allow_overlap: false,
            memory_bytes: None,
            timeout: None,
            fuel: None,
            webhook_secret: None,
        }
    }

    #[test]
    fn a_missed_interval_runs_once_at_start_then_on_schedule() {
        let schedule = Schedule::of(&spec(Trigger::Every(Duration::from_secs(60)))).unwrap();
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
        let schedule = Schedule::of(&spec(Trigger::Cron("30 2 * * *".into()))).unwrap();
        // 1970-01-01T00:00:00Z → 02:30 the same day.
        assert_eq!(schedule.next_after(SystemTime::UNIX_EPOCH), SystemTime::UNIX_EPOCH + Duration::from_secs(9000));
        // 02:30 in Paris (UTC+1 in January 1970) is 01:30 UTC.
        let mut paris = spec(Trigger::Cron("30 2 * * *".into()));
        paris.timezone = Some("Europe/Paris".into());
        assert!(paris.validate("p").is_ok());
        let schedule = Schedule::of(&paris).unwrap();
        assert_eq!(schedule.next_after(SystemTime::UNIX_EPOCH), SystemTime::UNIX_EPOCH + Duration::from_secs(5400));
        paris.timezone = Some("Mars/Olympus".into());
        assert!(paris.validate("p").unwrap_err().contains("Mars/Olympus"));
        assert!(parse_cron("* * * *").unwrap_err().contains("five fields"));
        assert!(parse_cron("61 * * * *").is_err());
        assert!(spec(Trigger::Cron("*/5 * * * *".into())).validate("ok").is_ok());
    }

    #[test]
    fn specs_are_checked_with_the_job_named() {
        assert!(spec(Trigger::Manual).validate("bad name").unwrap_err().contains("bad name"));
        let mut bad_input = spec(Trigger::Manual);
        bad_input.input = "{".into();
        assert!(bad_input.validate("j").unwrap_err().contains("not valid JSON"));
        assert!(spec(Trigger::Every(Duration::from_millis(1))).validate("j").is_err());
        assert!(spec(Trigger::Every(Duration::from_secs(20_000 * 365 * 24 * 3600))).validate("j").is_err());
        let mut weak = spec(Trigger::Webhook);
        weak.webhook_secret = Some("abcd".into());
        assert!(weak.validate("j").unwrap_err().contains("16 bytes"));
    }

    #[test]
    fn specs_round_trip_through_json() {
        let mut job = spec(Trigger::Every(Duration::from_secs(30)));
        job.timeout = Some(Duration::from_millis(1500));
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains(r#""every":"30s""#), "{text}");
        assert_eq!(serde_json::from_str::<JobSpec>(&text).unwrap(), job);
    }
}
