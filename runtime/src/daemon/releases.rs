//! The daemon's side of releases: the sync loop, activation, the trial and
//! rolling back by itself.
//!
//! With a `[sync]` table, the daemon polls its release origin every
//! `interval` (jittered). Each poll refreshes the TUF metadata and stages
//! the channel's release through its gates ([`crate::sync`]). The release is
//! admitted by the local policy: every bundle is prepared (signature, load,
//! link) and every job's plan admitted strictly, so a release that asks for
//! more than the device allows never runs. Then it is recorded, put in
//! `trial`, and **activated**: the release's jobs replace the previous
//! release's in the job table (runs in flight finish under the old one).
//! Each successful run of a release job counts towards the trial; when every
//! job has `trial_runs` successes (or, for a release that names a `health`
//! job, when that job, triggered at activation, succeeds), the release is
//! committed as the last known good. A failed run in trial rolls it back:
//! the release is marked bad (never tried again) and the last known good's
//! jobs come back. Network errors never roll anything back: they are
//! recorded and retried at the next poll, and the active release keeps
//! running.
//!
//! Every step is persisted before the next begins (`downloading`, `staged`,
//! `trial`, the job table, `committed`), and a daemon that starts again
//! resumes from what it finds (`Daemon::resume_release`): the active
//! release's jobs are put back from its staged files (checked against the
//! document's digests), a download left half done is finished at the next
//! poll, and an active release whose files are gone or damaged leaves the
//! daemon running no release jobs, saying why in `wfrun sync status`.
//! `WFRUN_CRASH_AT=POINT` (a test hook) kills the daemon with SIGKILL right
//! after the persist point named, so tests can check each.

use super::config::SyncSettings;
use super::{Daemon, DaemonError};
use crate::manifest::{JobSpec, ReleaseDocument};
use crate::outcome::{ErrorCode, RunStatus};
use crate::policy::Policy;
use crate::store::{JobSource, ReleaseRecord, ReleaseState};
use crate::sync::{Client, Origin, StageError, Timeouts, gates::Device};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::Notify;

/// The sync loop's state, shown by `wfrun sync status`.
#[derive(Debug)]
pub(super) struct SyncState {
    pub(super) settings: SyncSettings,
    root: Vec<u8>,
    last: Mutex<LastCheck>,
    trial: Mutex<BTreeMap<String, u32>>,
    /// Why the active release is not running, if it is not.
    unusable: Mutex<Option<(String, String)>>,
    pub(super) wake: Notify,
}

#[derive(Debug, Default, Clone)]
struct LastCheck {
    at: Option<String>,
    error: Option<(String, String)>,
    refreshed: Option<String>,
}

/// What `wfrun sync status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The origin.
    pub url: String,
    /// The channel followed.
    pub channel: String,
    /// The ring.
    pub ring: u32,
    /// The release in trial, if any.
    pub trial: Option<ReleaseRecord>,
    /// The last known good release, if any.
    pub committed: Option<ReleaseRecord>,
    /// When the origin was last checked.
    pub last_check: Option<String>,
    /// The last check's error: (code, message).
    pub last_error: Option<(String, String)>,
    /// Successful runs per job in the current trial.
    pub trial_progress: BTreeMap<String, u32>,
    /// Runs each job needs for a trial to pass.
    pub trial_runs: u32,
    /// The active release's health job, if it names one.
    pub health: Option<String>,
    /// Why the active release's jobs are not running, if they are not:
    /// (code, message).
    pub active_error: Option<(String, String)>,
    /// When the TUF metadata was last refreshed from the origin (by this
    /// daemon process).
    pub metadata_refreshed: Option<String>,
    /// When each trusted role's metadata expires (`root`, `timestamp`,
    /// `snapshot`, `targets`), as kept on the device.
    pub metadata_expires: BTreeMap<String, String>,
    /// Whether any of it has expired: new releases wait until a refresh
    /// succeeds; the active release keeps running.
    pub metadata_expired: bool,
    /// Reporting, with a `[report]` table: the outbox and the uploader.
    #[serde(default)]
    pub report: Option<super::status::ReportStatus>,
}

impl SyncState {
    /// Reads the pinned root: a daemon whose `trusted_root` cannot be read
    /// does not start.
    pub(super) fn new(settings: SyncSettings) -> anyhow::Result<SyncState> {
        let root = std::fs::read(&settings.trusted_root)
            .map_err(|e| anyhow::anyhow!("sync.trusted_root {}: {e}", settings.trusted_root.display()))?;
        Ok(SyncState {
            settings,
            root,
            last: Mutex::default(),
            trial: Mutex::default(),
            unusable: Mutex::default(),
            wake: Notify::new(),
        })
    }
}

/// The test hook `WFRUN_CRASH_AT=POINT`: the daemon kills itself with
/// SIGKILL right after persist point `point` (`downloading`, `staged`,
/// `trial`, `activated`, `committed`, `rolled_back`).
fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT.get_or_init(|| std::env::var("WFRUN_CRASH_AT").ok()).as_deref() == Some(point) {
        tracing::error!("WFRUN_CRASH_AT={point}: killing this daemon");
        let _ = std::process::Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
        std::process::abort();
    }
}

/// Starts of the daemon during one release's trial after which the
/// release is rolled back: a release that keeps taking the daemon down
/// fails its trial.
pub const MAX_TRIAL_RESTARTS: u32 = 3;

impl Daemon {
    /// At start: counts this start against the release in trial, and rolls
    /// it back after [`MAX_TRIAL_RESTARTS`].
    pub(super) fn check_trial_restarts(&self) {
        if self.sync_state().is_none() {
            return;
        }
        let Ok(Some(trial)) = self.store.release_in(ReleaseState::Trial) else { return };
        let Ok(starts) = self.store.note_trial_restart(&trial.digest) else { return };
        if starts >= MAX_TRIAL_RESTARTS {
            let message = format!("the daemon started {starts} times during the trial");
            tracing::warn!("release {} {} rolled back: {message}", trial.channel, trial.version);
            let _ = self.store.roll_back(&trial.digest, "restarts_in_trial", &message);
        }
    }

    fn sync_state(&self) -> Option<&SyncState> {
        self.sync.as_ref()
    }

    /// At start, after [`Daemon::check_trial_restarts`]: puts back the
    /// active release's jobs (the one in trial, else the last known good)
    /// from its staged files, as a crash may have left the job table before
    /// or after an activation. A trial whose files do not check out is
    /// rolled back; a last known good whose files do not leaves no release
    /// jobs, and `sync status` says why.
    pub(super) fn resume_release(&self) {
        if self.sync_state().is_none() {
            return;
        }
        if let Ok(Some(trial)) = self.store.release_in(ReleaseState::Trial) {
            match self.recorded_jobs(&trial) {
                Ok(jobs) => {
                    if let Err(e) = self.install_release_jobs(jobs) {
                        tracing::error!("putting back the jobs of release {}: {e}", trial.version);
                    }
                    return;
                }
                Err((code, message)) => {
                    tracing::warn!("release {} {} rolled back: {message}", trial.channel, trial.version);
                    let _ = self.store.roll_back(&trial.digest, &code, &message);
                }
            }
        }
        self.restore_last_known_good();
        self.prune_staging();
    }

    /// Removes from `<state-dir>/releases/` what no release needs: the
    /// files of rolled-back releases, of all but the newest superseded one
    /// (what `wfrun rollback` of the committed release goes back to), of
    /// releases unknown to the database, and temporary files a crash left.
    fn prune_staging(&self) {
        let staging = self.state_dir.join("releases");
        let Ok(listing) = std::fs::read_dir(&staging) else { return };
        let mut keep = Vec::new();
        for state in [ReleaseState::Downloading, ReleaseState::Staged, ReleaseState::Trial, ReleaseState::Committed] {
            keep.extend(self.store.releases_in(state).unwrap_or_default());
        }
        keep.extend(self.store.releases_in(ReleaseState::Superseded).unwrap_or_default().into_iter().take(1));
        // By the digest each directory is named after, however the state
        // directory was spelt when it was recorded.
        let keep: Vec<String> = keep.into_iter().map(|r| r.digest.trim_start_matches("sha256:").to_owned()).collect();
        for entry in listing.flatten() {
            let path = entry.path();
            if !keep.contains(&entry.file_name().to_string_lossy().into_owned()) {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!("removing {}: {e}", path.display());
                }
                continue;
            }
            for file in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
    }

    /// The jobs of a recorded release, from its staged files.
    fn recorded_jobs(&self, record: &ReleaseRecord) -> Result<BTreeMap<String, JobSpec>, (String, String)> {
        let document: ReleaseDocument = serde_json::from_str(&record.document)
            .map_err(|e| ("bad_release_document".to_owned(), format!("its recorded document: {e}")))?;
        self.release_jobs(&document, std::path::Path::new(&record.dir))
    }

    /// Polls the origin until the task is dropped.
    pub(super) async fn sync_loop(self: Arc<Self>) {
        let Some(state) = self.sync_state() else { return };
        // A trial resumed after a restart has not seen its health job pass
        // in this process: it runs again.
        if let Ok(Some(trial)) = self.store.release_in(ReleaseState::Trial) {
            let document = serde_json::from_str::<ReleaseDocument>(&trial.document).ok();
            if let Some(health) = document.and_then(|d| d.health) {
                self.start_health_job(&trial.version, &health);
            }
        }
        loop {
            let woken = state.wake.notified();
            if let Err((code, message)) = self.sync_once().await {
                tracing::warn!(code, "sync: {message}");
            }
            let interval = state.settings.interval;
            let mut jitter = [0u8; 2];
            let _ = getrandom::fill(&mut jitter);
            let tenth = interval / 10;
            let extra = tenth.mul_f64(f64::from(u16::from_le_bytes(jitter)) / f64::from(u16::MAX));
            tokio::select! {
                () = tokio::time::sleep(interval - tenth / 2 + extra) => {}
                () = woken => {}
            }
        }
    }

    /// Asks the sync loop to check the origin now.
    pub fn sync_now(&self) -> Result<(), DaemonError> {
        let state =
            self.sync_state().ok_or_else(|| DaemonError::InvalidRequest("this daemon has no [sync] table".into()))?;
        state.wake.notify_one();
        Ok(())
    }

    /// The time to check expiry against: the clock, or the highest time
    /// seen before if the clock went back.
    fn sync_time(&self) -> jiff::Timestamp {
        let clock = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let highest = self.store.highest_time(clock).unwrap_or(clock);
        jiff::Timestamp::from_second(highest).unwrap_or_else(|_| jiff::Timestamp::now())
    }

    /// One poll: refresh, stage, admit, activate. `Err((code, message))`
    /// for anything that stopped it, recorded for `sync status`.
    pub(super) async fn sync_once(self: &Arc<Self>) -> Result<Option<String>, (String, String)> {
        let state = self.sync_state().ok_or(("no_sync".to_owned(), "no [sync] table".to_owned()))?;
        let result = self.poll(state).await;
        let mut last = state.last.lock().unwrap();
        last.at = Some(crate::store::now());
        last.error = result.as_ref().err().cloned();
        result
    }

    /// Rolls back the release in trial if its trial has outlived
    /// `trial_deadline`.
    fn check_trial_deadline(&self, state: &SyncState) {
        let Some(deadline) = state.settings.trial_deadline else { return };
        let Ok(Some(trial)) = self.store.release_in(ReleaseState::Trial) else { return };
        let started = self.store.trial_started_at(&trial.digest).ok().flatten();
        let started = started.and_then(|t| humantime::parse_rfc3339(&t).ok());
        if started.and_then(|t| t.elapsed().ok()).is_some_and(|age| age > deadline) {
            let message = format!("its trial did not pass within {}", humantime::format_duration(deadline));
            tracing::warn!("release {} {} rolled back: {message}", trial.channel, trial.version);
            if self.store.roll_back(&trial.digest, "trial_deadline", &message).is_ok() {
                state.trial.lock().unwrap().clear();
                self.restore_last_known_good();
            }
        }
    }

    async fn poll(self: &Arc<Self>, state: &SyncState) -> Result<Option<String>, (String, String)> {
        let fail = |code: &str, message: String| (code.to_owned(), message);
        self.check_trial_deadline(state);
        let settings = &state.settings;
        let origin = Origin::new(&settings.url, Timeouts::default()).map_err(|e| fail("bad_origin", e.to_string()))?;
        let now = self.sync_time();
        let mut client =
            Client::new(origin, &state.root, &self.state_dir.join("tuf")).map_err(|e| fail(e.code(), e.to_string()))?;
        client.refresh(now).await.map_err(|e| fail(e.code(), e.to_string()))?;
        state.last.lock().unwrap().refreshed = Some(crate::store::now());
        let active = self
            .store
            .release_in(ReleaseState::Trial)
            .ok()
            .flatten()
            .or_else(|| self.store.release_in(ReleaseState::Committed).ok().flatten());
        let bad = self.store.releases_in(ReleaseState::RolledBack).map_err(|e| fail("internal", e.to_string()))?;
        let device = Device {
            runner_version: semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("our version is semver"),
            channel: settings.channel.clone(),
            ring: settings.ring,
            active: active.as_ref().and_then(|r| semver::Version::parse(&r.version).ok()),
            active_digest: active.as_ref().map(|r| r.digest.clone()),
            bad: bad.into_iter().map(|r| (r.digest, r.version)).collect(),
        };
        let staging = self.state_dir.join("releases");
        let refused = |e: StageError| {
            // What the origin or the network did is not the release's fault.
            if !matches!(&e, StageError::Sync(s) if s.code() == "unreachable") {
                let _ = self.store.record_refusal(None, e.code(), &e.to_string());
            }
            fail(e.code(), e.to_string())
        };
        let offer = match client.offer(&settings.channel, &device, now).await {
            Ok(Some(offer)) => offer,
            Ok(None) => return Ok(None),
            Err(StageError::Gate(crate::sync::gates::GateRefusal::AlreadyActive { .. })) => return Ok(None),
            Err(e) => return Err(refused(e)),
        };
        let (digest, channel, version) =
            (offer.digest.clone(), offer.document.channel.clone(), offer.document.version.clone());
        let document_text = serde_json::to_string(&offer.document).expect("documents serialise");
        let dir = crate::sync::staging_dir(&staging, &digest).display().to_string();
        let record = self
            .store
            .record_downloading(&digest, &channel, &version, &document_text, &dir)
            .map_err(|e| fail("internal", e.to_string()))?;
        crash_point("downloading");
        let staged = client.download(offer, &staging, now).await.map_err(refused)?;
        self.store
            .record_staged(&digest, &channel, &version, &document_text, &dir)
            .map_err(|e| fail("internal", e.to_string()))?;
        crash_point("staged");
        // The local policy: every bundle prepared, every job admitted
        // strictly. A refusal marks the release bad before anything runs.
        let jobs = match self.release_jobs(&staged.document, &staged.dir) {
            Ok(jobs) => jobs,
            Err((code, message)) => {
                let _ = self.store.roll_back(&record.digest, &code, &message);
                return Err((code, message));
            }
        };
        self.store.begin_trial(&record.digest).map_err(|e| fail("internal", e.to_string()))?;
        crash_point("trial");
        state.trial.lock().unwrap().clear();
        self.install_release_jobs(jobs).map_err(|e| fail("internal", e.to_string()))?;
        *state.unusable.lock().unwrap() = None;
        crash_point("activated");
        tracing::warn!(
            "release {} {} activated in trial ({} job(s))",
            staged.document.channel,
            staged.document.version,
            staged.document.jobs.len()
        );
        if let Some(health) = &staged.document.health {
            self.start_health_job(&version, health);
        }
        Ok(Some(record.digest))
    }

    fn start_health_job(self: &Arc<Self>, version: &str, health: &str) {
        if let Err(e) = self.trigger(health, None, super::scheduler::Source::Health) {
            tracing::warn!("release {version}: its health job {health} did not start: {e}");
        }
    }

    /// The jobs of `document`, with each bundle's staged path, after the
    /// local policy admitted them.
    fn release_jobs(
        &self,
        document: &ReleaseDocument,
        dir: &std::path::Path,
    ) -> Result<BTreeMap<String, JobSpec>, (String, String)> {
        // The release's own policy: the egress it needs must be within the
        // device's grant.
        if let Some(rules) = document.policy.as_ref().and_then(|p| p.get("egress")).and_then(|e| e.get("allow")) {
            let rules: Vec<String> = serde_json::from_value(rules.clone())
                .map_err(|e| ("bad_release_document".to_owned(), format!("policy.egress.allow: {e}")))?;
            let mut requested = Vec::new();
            for rule in &rules {
                requested.push(
                    crate::egress::Rule::parse(rule)
                        .map_err(|e| ("bad_release_document".to_owned(), format!("policy.egress.allow: {e}")))?,
                );
            }
            let effective = crate::egress::EgressPolicy::clone(&self.policy.egress).with_requested(Some(requested));
            let missing: Vec<String> = effective.not_granted().iter().map(|r| r.to_string()).collect();
            if !missing.is_empty() {
                return Err((
                    "egress_not_granted".to_owned(),
                    format!("the release needs egress this device does not grant: {}", missing.join(", ")),
                ));
            }
        }
        // The staged files are the ones the document names, or nothing runs.
        for bundle in &document.bundles {
            let path = dir.join(&bundle.name);
            let bytes = std::fs::read(&path)
                .map_err(|e| ("release_files_missing".to_owned(), format!("{}: {e}", path.display())))?;
            let actual = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)));
            if actual != bundle.digest {
                return Err((
                    "release_files_corrupt".to_owned(),
                    format!("{}: not the bundle the release names ({actual}, not {})", path.display(), bundle.digest),
                ));
            }
        }
        let path_of = |target: &str| document.bundles.iter().find(|b| b.target == target).map(|b| dir.join(&b.name));
        let mut jobs = BTreeMap::new();
        for (name, spec) in &document.jobs {
            if self.jobs.get(name).is_some_and(|job| job.source != JobSource::Release) {
                return Err(("job_name_taken".to_owned(), format!("release job {name}: a job of that name exists")));
            }
            let target = spec.bundle.to_string_lossy();
            let path: PathBuf = path_of(&target)
                .ok_or_else(|| ("bad_release_document".to_owned(), format!("job {name}: no bundle {target}")))?;
            let spec = JobSpec { bundle: path.clone(), ..spec.clone() };
            super::jobs::validate(name, &spec, self.config.max_memory_bytes)
                .map_err(|e| (e.detail().to_owned(), e.to_string()))?;
            let prepared =
                self.runner.prepare(&path, &self.policy.trust).map_err(|r| (r.detail.to_owned(), r.message.clone()))?;
            let strict = Policy { strict_limits: true, ..self.job_policy(&spec) };
            strict.admit(prepared.workflow().plan()).map_err(|e| (e.detail().to_owned(), e.to_string()))?;
            jobs.insert(name.clone(), spec);
        }
        Ok(jobs)
    }

    /// Replaces the release jobs in the job table with `jobs`.
    fn install_release_jobs(&self, jobs: BTreeMap<String, JobSpec>) -> Result<(), crate::store::StoreError> {
        for job in self.jobs.all() {
            if job.source == JobSource::Release && !jobs.contains_key(&job.name) {
                self.jobs.remove(&job.name)?;
                self.reschedule(&job.name);
            }
        }
        for (name, spec) in jobs {
            self.jobs.put(&name, &spec, JobSource::Release)?;
            self.reschedule(&name);
        }
        Ok(())
    }

    /// Called after every run of a release job: counts it towards the
    /// trial, commits a trial that passed, rolls back one that failed.
    /// Returns whether it rolled the release back.
    pub(super) fn after_release_run(
        &self,
        name: &str,
        spec: &JobSpec,
        status: RunStatus,
        code: Option<ErrorCode>,
    ) -> bool {
        let Some(state) = self.sync_state() else { return false };
        let Ok(Some(trial)) = self.store.release_in(ReleaseState::Trial) else { return false };
        // A run of the release before this one is none of the trial's business.
        if !spec.bundle.starts_with(&trial.dir) {
            return false;
        }
        match status {
            RunStatus::Succeeded => {
                let _ = self.store.count_trial_run(&trial.digest);
                let document: Option<ReleaseDocument> = serde_json::from_str(&trial.document).ok();
                let passed = {
                    let mut progress = state.trial.lock().unwrap();
                    *progress.entry(name.to_owned()).or_insert(0) += 1;
                    document.is_some_and(|d| match &d.health {
                        Some(health) => progress.get(health).copied().unwrap_or(0) >= 1,
                        None => d
                            .jobs
                            .keys()
                            .all(|job| progress.get(job).copied().unwrap_or(0) >= state.settings.trial_runs),
                    })
                };
                if passed && self.store.commit(&trial.digest).is_ok() {
                    crash_point("committed");
                    tracing::warn!("release {} {} passed its trial; committed", trial.channel, trial.version);
                }
                false
            }
            // The host's own failure is no verdict on the release.
            RunStatus::Failed if code == Some(crate::outcome::ErrorCode::HostError) => false,
            RunStatus::Failed => {
                let code = code.map_or("failed", |c| c.as_str());
                let message = format!("job {name}'s run in trial ended with {code}");
                tracing::warn!("release {} {} rolled back: {message}", trial.channel, trial.version);
                if self.store.roll_back(&trial.digest, code, &message).is_err() {
                    return false;
                }
                crash_point("rolled_back");
                state.trial.lock().unwrap().clear();
                self.restore_last_known_good();
                true
            }
            _ => false,
        }
    }

    /// Brings back the last known good release's jobs: none if there is no
    /// such release, or if its files are gone or damaged (the daemon then
    /// runs no release jobs and `sync status` says why).
    fn restore_last_known_good(&self) {
        let mut unusable = None;
        let jobs = match self.store.release_in(ReleaseState::Committed) {
            Ok(Some(good)) => self.recorded_jobs(&good).unwrap_or_else(|(code, message)| {
                let message = format!("the last known good release {} cannot run: {message}", good.version);
                tracing::error!(code, "{message}; running no release jobs until a new release activates");
                let _ = self.store.record_refusal(Some(&good.digest), &code, &message);
                unusable = Some((code, message));
                BTreeMap::new()
            }),
            _ => BTreeMap::new(),
        };
        if let Some(state) = self.sync_state() {
            *state.unusable.lock().unwrap() = unusable;
        }
        if let Err(e) = self.install_release_jobs(jobs) {
            tracing::error!("restoring the last known good release's jobs: {e}");
        }
    }

    /// Rolls back by hand (`wfrun rollback`): the release in trial, or else
    /// the committed one (then the release committed before it, if its files
    /// are still staged, becomes the last known good again). Returns the
    /// version rolled back.
    pub fn rollback(&self) -> Result<String, DaemonError> {
        self.sync_state().ok_or_else(|| DaemonError::InvalidRequest("this daemon has no [sync] table".into()))?;
        let message = "rolled back by the operator";
        let target = match self.store.release_in(ReleaseState::Trial)? {
            Some(trial) => trial,
            None => self
                .store
                .release_in(ReleaseState::Committed)?
                .ok_or_else(|| DaemonError::InvalidRequest("no release is active; nothing to roll back".into()))?,
        };
        let result = if target.state == ReleaseState::Trial {
            self.store.roll_back(&target.digest, "operator", message).map(|_| ())
        } else {
            self.store.revert_committed(&target.digest, message).map(|_| ())
        };
        result.map_err(|e| DaemonError::Internal(e.to_string()))?;
        if let Some(state) = self.sync_state() {
            state.trial.lock().unwrap().clear();
        }
        self.restore_last_known_good();
        tracing::warn!("release {} {} rolled back by the operator", target.channel, target.version);
        Ok(target.version)
    }

    /// What `wfrun sync status` shows.
    pub fn sync_status(&self) -> Result<SyncStatus, DaemonError> {
        let state =
            self.sync_state().ok_or_else(|| DaemonError::InvalidRequest("this daemon has no [sync] table".into()))?;
        let last = state.last.lock().unwrap().clone();
        let trial = self.store.release_in(ReleaseState::Trial)?;
        let committed = self.store.release_in(ReleaseState::Committed)?;
        let health = trial
            .as_ref()
            .or(committed.as_ref())
            .and_then(|r| serde_json::from_str::<ReleaseDocument>(&r.document).ok())
            .and_then(|d| d.health);
        let mut metadata_expires = BTreeMap::new();
        for role in ["root", "timestamp", "snapshot", "targets"] {
            let path = self.state_dir.join("tuf").join(format!("{role}.json"));
            let expires = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|v| v["signed"]["expires"].as_str().map(str::to_owned));
            if let Some(expires) = expires {
                metadata_expires.insert(role.to_owned(), expires);
            }
        }
        let now = self.sync_time();
        let metadata_expired =
            metadata_expires.values().any(|e| e.parse::<jiff::Timestamp>().map_or(true, |t| t <= now));
        Ok(SyncStatus {
            url: state.settings.url.clone(),
            channel: state.settings.channel.clone(),
            ring: state.settings.ring,
            trial,
            committed,
            last_check: last.at,
            last_error: last.error,
            trial_progress: state.trial.lock().unwrap().clone(),
            trial_runs: state.settings.trial_runs,
            health,
            active_error: state.unusable.lock().unwrap().clone(),
            metadata_refreshed: last.refreshed,
            metadata_expires,
            metadata_expired,
            report: self.report_status()?,
        })
    }
}
