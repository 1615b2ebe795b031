//! What `wfrun status` shows: the daemon, its trust mode, its prepared
//! programs, the runs in flight and every job with its schedule.

use super::Daemon;
use super::DaemonError;
use crate::policy::TrustMode;
use crate::report::{Capabilities, Heartbeat, ReleaseSummary};
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
            device_id: self.device_id.clone(),
            report: self.report_status()?,
            running,
            jobs,
            services: self.services_status(),
        })
    }

    /// The outbox and the uploader, with a `[report]` table.
    pub fn report_status(&self) -> Result<Option<ReportStatus>, DaemonError> {
        let Some(uploader) = &self.uploader else { return Ok(None) };
        Ok(Some(ReportStatus { outbox: self.store.outbox_status()?, uploader: uploader.state() }))
    }

    /// Tells the uploader there is something new to send.
    pub(super) fn reports_written(&self) {
        if let Some(uploader) = &self.uploader {
            uploader.wake.notify_one();
        }
    }

    /// This daemon's heartbeat, as the uploader sends it.
    pub(super) fn heartbeat(&self) -> Heartbeat {
        use crate::store::ReleaseState;
        let summary = |state: ReleaseState| {
            self.store.release_in(state).ok().flatten().map(|r| ReleaseSummary {
                version: r.version,
                digest: r.digest,
                channel: r.channel,
                state: r.state.as_str().to_owned(),
            })
        };
        let last_known_good = summary(ReleaseState::Committed);
        let sync = self.sync_status().ok();
        let kinds: std::collections::BTreeSet<String> = self
            .store
            .list_runs(None, 200)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kind.map(|k| k.as_str().to_owned()))
            .collect();
        Heartbeat {
            schema: crate::report::REPORT_SCHEMA,
            device_id: self.device_id.clone(),
            runner_version: env!("CARGO_PKG_VERSION").to_owned(),
            sent_at: crate::store::now(),
            uptime_s: self.started.elapsed().unwrap_or_default().as_secs(),
            active_release: summary(ReleaseState::Trial).or_else(|| last_known_good.clone()),
            last_known_good,
            ring: sync.as_ref().map(|s| s.ring),
            sync: sync.map(|s| {
                serde_json::json!({
                    "channel": s.channel,
                    "last_check": s.last_check,
                    "last_error": s.last_error.map(|(code, _)| code),
                    "active_error": s.active_error.map(|(code, _)| code),
                    "metadata_refreshed": s.metadata_refreshed,
                    "metadata_expires": s.metadata_expires,
                    "metadata_expired": s.metadata_expired,
                })
            }),
            capabilities: Capabilities {
                wit_contract: wfrun_host_api::HANDLER_EXPORT.to_owned(),
                wasi_http: true,
                guest_kinds_seen: kinds.into_iter().collect(),
                triggers: ["interval", "cron", "webhook", "manual"].map(str::to_owned).to_vec(),
            },
            outbox: self.store.outbox_status().unwrap_or_default(),
        }
    }
}

/// The outbox and the uploader, as `status` shows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportStatus {
    /// The outbox's numbers.
    pub outbox: crate::store::OutboxStatus,
    /// The uploader's.
    pub uploader: crate::report::uploader::UploadState,
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
    /// This device's id.
    #[serde(default)]
    pub device_id: String,
    /// Reporting, with a `[report]` table.
    #[serde(default)]
    pub report: Option<ReportStatus>,
    /// Runs in flight.
    pub running: Vec<RunningStatus>,
    /// Every job.
    pub jobs: Vec<JobStatus>,
    /// Every service (`always` job): its state, restarts and uptime.
    pub services: Vec<super::services::ServiceStatus>,
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
