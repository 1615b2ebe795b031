//! What `wfrun status` shows: the daemon, its trust mode, its prepared
//! programs, the runs in flight and every job with its schedule.

use super::Daemon;
use super::DaemonError;
use crate::policy::TrustMode;
use crate::runner::CacheStats;
use crate::store::JobRecord;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

impl Daemon {
    /// What `wfrun status` shows.
    pub fn status(&self) -> Result<Status, DaemonError> {
        let next_due = self.next_due.lock().unwrap().clone();
        let running_jobs: Vec<String> = self.running.lock().unwrap().values().map(|r| r.job.clone()).collect();
        let jobs = self
            .jobs
            .all()
            .into_iter()
            .map(|mut job| {
                // The webhook secret never leaves the daemon.
                if job.spec.webhook_secret.is_some() {
                    job.spec.webhook_secret = Some("redacted".to_owned());
                }
                JobStatus {
                    trigger: job.spec.trigger.to_string(),
                    bundle: job.spec.bundle.display().to_string(),
                    next_due: next_due.get(&job.name).map(|t| humantime::format_rfc3339_seconds(*t).to_string()),
                    running: running_jobs.iter().filter(|j| **j == job.name).count(),
                    job,
                }
            })
            .collect();
        let running = self
            .running
            .lock()
            .unwrap()
            .iter()
            .map(|(id, r)| RunningStatus {
                run_id: id.clone(),
                job: r.job.clone(),
                started_at: humantime::format_rfc3339_millis(r.started).to_string(),
            })
            .collect();
        Ok(Status {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            state_dir: self.state_dir.display().to_string(),
            started_at: humantime::format_rfc3339_seconds(self.started).to_string(),
            uptime_s: self.started.elapsed().unwrap_or_default().as_secs(),
            max_concurrent_runs: self.config.max_concurrent_runs,
            stopping: self.stopping.load(Ordering::SeqCst),
            trust: TrustStatus { mode: self.policy.trust.mode(), trusted_keys: self.policy.trust.key_ids() },
            programs: self.programs.stats(),
            release: match &self.sync {
                Some(_) => self
                    .store
                    .release_in(crate::store::ReleaseState::Trial)?
                    .or(self.store.release_in(crate::store::ReleaseState::Committed)?),
                None => None,
            },
            running,
            jobs,
        })
    }
}

/// The daemon's state, as `status` returns it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's process id.
    pub pid: u32,
    /// wfrun's version.
    pub version: String,
    /// The state directory.
    pub state_dir: String,
    /// When it started.
    pub started_at: String,
    /// Seconds since.
    pub uptime_s: u64,
    /// Runs at once, at most.
    pub max_concurrent_runs: usize,
    /// Whether it is draining.
    pub stopping: bool,
    /// How bundles' signatures are treated.
    pub trust: TrustStatus,
    /// The prepared-program cache.
    pub programs: CacheStats,
    /// The active release (in trial, else committed), with a `[sync]` table.
    #[serde(default)]
    pub release: Option<crate::store::ReleaseRecord>,
    /// Runs in flight.
    pub running: Vec<RunningStatus>,
    /// Every job.
    pub jobs: Vec<JobStatus>,
}

/// The trust mode, as `status` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrustStatus {
    /// `signed_only` or `unsigned_allowed`.
    pub mode: TrustMode,
    /// The ids of the trusted keys.
    pub trusted_keys: Vec<String>,
}

/// A run in flight.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunningStatus {
    /// Its id.
    pub run_id: String,
    /// Its job.
    pub job: String,
    /// When it started.
    pub started_at: String,
}

/// A job with its schedule.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobStatus {
    /// The stored job.
    #[serde(flatten)]
    pub job: JobRecord,
    /// Its trigger in words.
    pub trigger: String,
    /// Its bundle.
    pub bundle: String,
    /// When it next runs, for interval and cron jobs.
    pub next_due: Option<String>,
    /// Its runs in flight.
    pub running: usize,
}
