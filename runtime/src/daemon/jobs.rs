//! The daemon's jobs: validation, and the in-memory table the daemon reads.
//!
//! A job ([`JobSpec`], from the config file's `[jobs.NAME]`, `wfrun jobs
//! add` or the control protocol) is checked by [`validate`] before it is
//! stored: its name, input, trigger (interval range, cron syntax, time
//! zone), webhook secret and ceilings, each failure a typed [`JobError`].
//! [`JobTable`] holds every job's typed record in memory and writes each
//! change through to the store, so the scheduler and the supervisor never
//! read or parse the `jobs` table on their way.

use super::scheduler::Schedule;
use crate::limits::LimitKey;
use crate::manifest::JobSpec;
use crate::outcome::RunStatus;
use crate::store::{JobRecord, JobSource, Store, StoreError};
use crate::units::UnitError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Why a job definition is unusable. Every variant names the job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// A name with characters other than letters, digits, `-` and `_`.
    #[error("job name {name:?}: use 1-64 letters, digits, `-` or `_`")]
    BadName {
        /// The name as given.
        name: String,
    },
    /// The input is not JSON.
    #[error("job {name}: input is not valid JSON: {reason}")]
    BadInput {
        /// The job.
        name: String,
        /// The parser's explanation.
        reason: String,
    },
    /// An interval outside 100ms..=366 days.
    #[error("job {name}: `every` must be between 100ms and 366 days")]
    BadInterval {
        /// The job.
        name: String,
    },
    /// A cron expression that does not parse.
    #[error("job {name}: {reason}")]
    BadCron {
        /// The job.
        name: String,
        /// What is wrong, naming the expression.
        reason: String,
    },
    /// A time zone the system does not know.
    #[error("job {name}: time zone {zone:?}: {reason}")]
    BadTimeZone {
        /// The job.
        name: String,
        /// The zone as given.
        zone: String,
        /// What is wrong.
        reason: String,
    },
    /// A webhook secret too short or not hex.
    #[error("job {name}: webhook_secret must be at least 16 bytes, written in hex")]
    WeakWebhookSecret {
        /// The job.
        name: String,
    },
    /// A ceiling outside its range.
    #[error("job {name}: {key}: {error}")]
    BadLimit {
        /// The job.
        name: String,
        /// `memory`, `timeout` or `fuel`.
        key: &'static str,
        /// What is wrong.
        error: UnitError,
    },
    /// A memory ceiling above the daemon's `max_memory`.
    #[error(
        "job {name}: memory {memory} bytes is more than the daemon's max_memory ({max} bytes); raise [daemon] max_memory"
    )]
    MemoryOverDaemon {
        /// The job.
        name: String,
        /// Its memory ceiling.
        memory: u64,
        /// The daemon's.
        max: u64,
    },
    /// No bundle at the job's path.
    #[error("job {name}: no bundle at {}", path.display())]
    NoBundle {
        /// The job.
        name: String,
        /// The path.
        path: PathBuf,
    },
}

impl JobError {
    /// A stable code for what is wrong, under the control plane's `invalid`.
    pub fn detail(&self) -> &'static str {
        match self {
            JobError::BadName { .. } => "bad_name",
            JobError::BadInput { .. } => "bad_input",
            JobError::BadInterval { .. } => "bad_interval",
            JobError::BadCron { .. } => "bad_cron",
            JobError::BadTimeZone { .. } => "bad_time_zone",
            JobError::WeakWebhookSecret { .. } => "weak_webhook_secret",
            JobError::BadLimit { .. } => "bad_limit",
            JobError::MemoryOverDaemon { .. } => "memory_over_daemon",
            JobError::NoBundle { .. } => "no_bundle",
        }
    }
}

/// Checks what can be checked without running: the name, the input JSON,
/// the trigger, the webhook secret and the ceilings (against the daemon's
/// `max_memory`).
pub fn validate(name: &str, spec: &JobSpec, max_memory: u64) -> Result<(), JobError> {
    let name_ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(JobError::BadName { name: name.to_owned() });
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&spec.input)
        .map_err(|e| JobError::BadInput { name: name.to_owned(), reason: e.to_string() })?;
    Schedule::of(name, &spec.trigger)?;
    if let Some(secret) = &spec.webhook_secret
        && (secret.len() < 32 || hex::decode(secret).is_err())
    {
        return Err(JobError::WeakWebhookSecret { name: name.to_owned() });
    }
    let limit = |key: &'static str, error| JobError::BadLimit { name: name.to_owned(), key, error };
    if let Some(memory) = spec.memory_bytes {
        LimitKey::check_memory(memory).map_err(|e| limit("memory", e))?;
        if memory > max_memory {
            return Err(JobError::MemoryOverDaemon { name: name.to_owned(), memory, max: max_memory });
        }
    }
    if let Some(timeout) = spec.timeout {
        LimitKey::check_timeout(timeout).map_err(|e| limit("timeout", e))?;
    }
    if let Some(fuel) = spec.fuel {
        LimitKey::check_fuel(fuel).map_err(|e| limit("fuel", e))?;
    }
    Ok(())
}

/// Every job, typed, in memory; each change written through to the store.
#[derive(Debug)]
pub struct JobTable {
    store: Arc<Store>,
    jobs: Mutex<BTreeMap<String, JobRecord>>,
}

impl JobTable {
    /// Loads every job from `store`.
    pub fn load(store: Arc<Store>) -> Result<JobTable, StoreError> {
        let jobs = store.jobs()?.into_iter().map(|job| (job.name.clone(), job)).collect();
        Ok(JobTable { store, jobs: Mutex::new(jobs) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, JobRecord>> {
        self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Job `name`.
    pub fn get(&self, name: &str) -> Option<JobRecord> {
        self.lock().get(name).cloned()
    }

    /// Every job, by name.
    pub fn all(&self) -> Vec<JobRecord> {
        self.lock().values().cloned().collect()
    }

    /// How many jobs there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Stores (or replaces) a job, keeping its run state.
    pub fn put(&self, name: &str, spec: &JobSpec, source: JobSource) -> Result<(), StoreError> {
        let mut jobs = self.lock();
        self.store.put_job(name, spec, source)?;
        match jobs.get_mut(name) {
            Some(job) => {
                job.spec = spec.clone();
                job.source = source;
            }
            None => {
                let stored = self.store.job(name)?;
                if let Some(job) = stored {
                    jobs.insert(name.to_owned(), job);
                }
            }
        }
        Ok(())
    }

    /// Removes a job; false if there was none.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let mut jobs = self.lock();
        let removed = self.store.remove_job(name)?;
        jobs.remove(name);
        Ok(removed)
    }

    /// Pauses (with a reason) or resumes a job; false if there is none.
    pub fn set_paused(&self, name: &str, paused: bool, reason: Option<&str>) -> Result<bool, StoreError> {
        let mut jobs = self.lock();
        let changed = self.store.set_job_paused(name, paused, reason)?;
        if let Some(job) = jobs.get_mut(name) {
            job.paused = paused;
            job.paused_reason = if paused { reason.map(str::to_owned) } else { None };
            if !paused {
                job.consecutive_failures = 0;
            }
        }
        Ok(changed)
    }

    /// Notes how a run of job `name` ended; returns its consecutive
    /// failures. The job's row took the same note in the write that
    /// recorded the run's end.
    pub fn record_run(
        &self,
        name: &str,
        run_id: &str,
        status: RunStatus,
        code: Option<crate::outcome::ErrorCode>,
    ) -> u32 {
        let mut jobs = self.lock();
        let Some(job) = jobs.get_mut(name) else { return 0 };
        job.last_run_at = Some(crate::store::now());
        job.last_run_id = Some(run_id.to_owned());
        job.last_status = Some(status);
        job.consecutive_failures = crate::store::jobs::failures_after(job.consecutive_failures, status, code);
        job.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Trigger;
    use std::time::Duration;

    fn spec(trigger: Trigger) -> JobSpec {
        JobSpec { trigger, ..JobSpec::manual("x.wasm") }
    }

    const MAX: u64 = 128 * 1024 * 1024;

    #[test]
    fn specs_are_checked_with_the_job_named() {
        assert!(matches!(validate("bad name", &spec(Trigger::Manual), MAX), Err(JobError::BadName { .. })));
        let mut bad_input = spec(Trigger::Manual);
        bad_input.input = "{".into();
        assert!(matches!(validate("j", &bad_input, MAX), Err(JobError::BadInput { .. })));
        let tiny = spec(Trigger::Interval { every: Duration::from_millis(1) });
        assert!(matches!(validate("j", &tiny, MAX), Err(JobError::BadInterval { .. })));
        let huge = spec(Trigger::Interval { every: Duration::from_secs(20_000 * 365 * 24 * 3600) });
        assert!(matches!(validate("j", &huge, MAX), Err(JobError::BadInterval { .. })));
        let mut weak = spec(Trigger::Webhook);
        weak.webhook_secret = Some("abcd".into());
        assert!(matches!(validate("j", &weak, MAX), Err(JobError::WeakWebhookSecret { .. })));
        let mut greedy = spec(Trigger::Manual);
        greedy.memory_bytes = Some(2 * MAX);
        assert!(matches!(validate("j", &greedy, MAX), Err(JobError::MemoryOverDaemon { .. })));
        let mut forever = spec(Trigger::Manual);
        forever.timeout = Some(Duration::from_secs(30 * 24 * 3600));
        assert!(matches!(validate("j", &forever, MAX), Err(JobError::BadLimit { key: "timeout", .. })));
    }

    #[test]
    fn cron_and_time_zones_are_checked() {
        let cron = |expr: &str, zone: Option<&str>| {
            spec(Trigger::Cron { cron: expr.to_owned(), timezone: zone.map(str::to_owned) })
        };
        assert!(validate("ok", &cron("*/5 * * * *", None), MAX).is_ok());
        assert!(validate("p", &cron("30 2 * * *", Some("Europe/Paris")), MAX).is_ok());
        assert!(matches!(validate("j", &cron("* * * *", None), MAX), Err(JobError::BadCron { .. })));
        assert!(matches!(validate("j", &cron("61 * * * *", None), MAX), Err(JobError::BadCron { .. })));
        assert!(matches!(
            validate("p", &cron("30 2 * * *", Some("Mars/Olympus")), MAX),
            Err(JobError::BadTimeZone { zone, .. }) if zone == "Mars/Olympus"
        ));
    }
}
