//! The runner daemon: jobs, triggers, supervision, shutdown and recovery.
//!
//! [`Daemon::serve`] takes the state directory's lock, marks runs a dead
//! process left `running` as `interrupted`, loads the jobs (config file and
//! database), and then runs three things side by side until SIGINT or
//! SIGTERM: the scheduler (interval and cron jobs, one run per misfire), the
//! control plane ([`control`]: JSON lines over a Unix socket, and optionally
//! the same over HTTP with a bearer token), and the webhook listener
//! ([`http`]). Every run goes through one path,
//! [`Daemon::trigger`]: concurrency limits, no overlap unless a job allows it,
//! retries with backoff, pausing after repeated failure, and cancellation by
//! run id. On a stop, triggers end, running runs get the grace period, and
//! the rest are cancelled and recorded `cancelled`.

pub mod config;
pub mod control;
pub mod http;
pub mod jobs;

use crate::bundle::Bundle;
use crate::bundle::signature::TrustPolicy;
use crate::egress::EgressPolicy;
use crate::outcome::{ErrorCode, RunReport, RunStatus, new_run_id};
use crate::sandbox::{EngineOptions, Grants, PoolingOptions, Sandbox};
use crate::store::{JobRecord, NewRun, StateWrites, Store, StoreError};
use crate::workflow::{Execution, LimitRequest, Workflow};
pub use config::{DaemonConfig, RetryPolicy};
use jobs::{JobSpec, Schedule, Trigger};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, Semaphore};

/// The socket of the control plane, in the state directory.
pub const SOCKET_NAME: &str = "wfrun.sock";
/// Held while a daemon runs on a state directory.
const LOCK_NAME: &str = "daemon.lock";

/// Why a daemon request was refused. `code` is stable, for scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct DaemonError {
    /// `not_found`, `invalid`, `busy`, `paused`, `shutting_down` or `internal`.
    pub code: &'static str,
    /// What happened, naming the job or run.
    pub message: String,
}

impl DaemonError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        DaemonError { code, message: message.into() }
    }
}

impl From<StoreError> for DaemonError {
    fn from(e: StoreError) -> Self {
        DaemonError::new("internal", e.to_string())
    }
}

/// A run in flight.
struct Running {
    job: String,
    cancel: Arc<Notify>,
    started: SystemTime,
}

/// The daemon's shared state.
pub struct Daemon {
    config: DaemonConfig,
    state_dir: PathBuf,
    sandbox: Arc<Sandbox>,
    store: Arc<Store>,
    trust: TrustPolicy,
    egress: Arc<EgressPolicy>,
    slots: Arc<Semaphore>,
    running: Mutex<BTreeMap<String, Running>>,
    /// Jobs with a trigger in flight (running or waiting to retry).
    busy: Mutex<BTreeMap<String, u32>>,
    next_due: Mutex<BTreeMap<String, SystemTime>>,
    schedule_changed: Notify,
    stopping: AtomicBool,
    stopped: Notify,
    became_idle: Notify,
    started: SystemTime,
    control_token: Option<String>,
    _lock: std::fs::File,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("state_dir", &self.state_dir).finish_non_exhaustive()
    }
}

impl Daemon {
    /// Opens the state directory (taking its lock), recovers interrupted
    /// runs, and stores the config file's jobs.
    pub fn open(config: DaemonConfig, state_dir: PathBuf) -> anyhow::Result<Arc<Daemon>> {
        use anyhow::Context;
        let store = Arc::new(Store::open(&state_dir)?);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join(LOCK_NAME))
            .with_context(|| format!("opening {}", state_dir.join(LOCK_NAME).display()))?;
        if lock.try_lock().is_err() {
            anyhow::bail!("another wfrun daemon is running on state directory {}", state_dir.display());
        }
        let recovered = store.recover_interrupted()?;
        if !recovered.is_empty() {
            tracing::warn!(
                "marked {} run(s) left running by a stopped process as interrupted: {}",
                recovered.len(),
                recovered.join(", ")
            );
        }
        let trust = crate::bundle::signature::trust_policy(&config.trusted_keys)
            .map_err(|e| anyhow::anyhow!("trust.trusted_keys: {e}"))?;
        for (name, spec) in &config.jobs {
            store.put_job(name, &serde_json::to_string(spec)?, "config")?;
        }
        // A job that an earlier config declared and this one does not is gone.
        for job in store.jobs()? {
            if job.source == "config" && !config.jobs.contains_key(&job.name) {
                store.remove_job(&job.name)?;
            }
        }
        let control_token = match &config.control_http_listen {
            Some(_) => Some(control_token(config.control_token_file.as_deref(), &state_dir)?),
            None => None,
        };
        let options = EngineOptions { cache_dir: Some(state_dir.join("cache")), ..EngineOptions::default() };
        // A long-lived host: instances come from pools reserved once. A
        // machine that cannot reserve that much address space (a 39-bit
        // arm64 kernel) runs with on-demand allocation instead.
        let pooled = EngineOptions {
            pooling: Some(PoolingOptions {
                concurrent_runs: (config.max_concurrent_runs * crate::workflow::DEFAULT_MAX_PARALLEL) as u32,
                max_memory_bytes: config.max_memory_bytes,
            }),
            ..options.clone()
        };
        let sandbox = match Sandbox::new(pooled) {
            Ok(sandbox) => sandbox,
            Err(e) => {
                tracing::warn!("the pooling allocator is not available ({e}); allocating per run");
                Sandbox::new(options)?
            }
        };
        Ok(Arc::new(Daemon {
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs)),
            egress: Arc::new(config.egress.clone()),
            config,
            state_dir,
            sandbox: Arc::new(sandbox),
            store,
            trust,
            running: Mutex::default(),
            busy: Mutex::default(),
            next_due: Mutex::default(),
            schedule_changed: Notify::new(),
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
            became_idle: Notify::new(),
            started: SystemTime::now(),
            control_token,
            _lock: lock,
        }))
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The run database.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs until SIGINT or SIGTERM (or [`Daemon::stop`]), then drains.
    pub async fn serve(self: &Arc<Self>) -> anyhow::Result<()> {
        let socket = control::listen(&self.state_dir.join(SOCKET_NAME))?;
        let control = tokio::spawn(control::serve(self.clone(), socket));
        let mut listeners = Vec::new();
        for (addr, routes) in [
            (self.config.webhook_listen, http::Routes::Webhooks),
            (self.config.control_http_listen, http::Routes::Control),
        ] {
            let Some(addr) = addr else { continue };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("{routes:?} listener on {addr}: {e}"))?;
            eprintln!("wfrun daemon: {routes:?} on http://{}", listener.local_addr()?);
            listeners.push(tokio::spawn(http::serve(self.clone(), listener, routes)));
        }
        let scheduler = tokio::spawn(self.clone().schedule());
        eprintln!(
            "wfrun daemon: state directory {}, control socket {}, {} job(s)",
            self.state_dir.display(),
            self.state_dir.join(SOCKET_NAME).display(),
            self.store.jobs()?.len()
        );

        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => eprintln!("wfrun daemon: interrupted; stopping"),
            _ = terminate.recv() => eprintln!("wfrun daemon: terminated; stopping"),
            () = self.stopped.notified() => eprintln!("wfrun daemon: stopping"),
        }
        self.stopping.store(true, Ordering::SeqCst);
        scheduler.abort();
        for listener in listeners {
            listener.abort();
        }
        self.drain().await;
        control.abort();
        let _ = std::fs::remove_file(self.state_dir.join(SOCKET_NAME));
        eprintln!("wfrun daemon: stopped");
        Ok(())
    }

    /// Asks the daemon to stop, as SIGTERM does.
    pub fn stop(&self) {
        self.stopped.notify_one();
    }

    /// Waits up to the grace period for running runs, then cancels the rest
    /// and waits for them to be recorded.
    async fn drain(&self) {
        let running = self.running.lock().unwrap().len();
        if running > 0 {
            eprintln!("wfrun daemon: waiting up to {:?} for {running} run(s)", self.config.grace_period);
        }
        if tokio::time::timeout(self.config.grace_period, self.idle()).await.is_ok() {
            return;
        }
        let cancels: Vec<Arc<Notify>> = self.running.lock().unwrap().values().map(|r| r.cancel.clone()).collect();
        eprintln!("wfrun daemon: cancelling {} run(s) still running", cancels.len());
        for cancel in cancels {
            cancel.notify_one();
        }
        // Cancelled runs stop within an epoch tick; this only bounds a stuck one.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.idle()).await;
    }

    /// Resolves when no trigger is in flight (running or waiting to retry).
    async fn idle(&self) {
        loop {
            let notified = self.became_idle.notified();
            if self.busy.lock().unwrap().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// The scheduler: sleeps until the next interval or cron job is due,
    /// triggers it, and computes its next time from now.
    async fn schedule(self: Arc<Self>) {
        loop {
            let changed = self.schedule_changed.notified();
            let now = SystemTime::now();
            let jobs = match self.store.jobs() {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!("reading jobs: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut due_now = Vec::new();
            let mut earliest: Option<SystemTime> = None;
            {
                let mut next_due = self.next_due.lock().unwrap();
                next_due.retain(|name, _| jobs.iter().any(|j| &j.name == name));
                for job in &jobs {
                    let Some(spec) = parse_spec(job) else { continue };
                    let Some(schedule) = Schedule::of(&spec) else {
                        next_due.remove(&job.name);
                        continue;
                    };
                    let due = *next_due.entry(job.name.clone()).or_insert_with(|| {
                        let last = job.last_run_at.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok());
                        schedule.first_due(last, now)
                    });
                    if due <= now {
                        if !job.paused {
                            due_now.push(job.name.clone());
                        }
                        // One run per due time, even if it was missed by far.
                        let next = schedule.next_after(now);
                        next_due.insert(job.name.clone(), next);
                        earliest = Some(earliest.map_or(next, |e| e.min(next)));
                    } else {
                        earliest = Some(earliest.map_or(due, |e| e.min(due)));
                    }
                }
            }
            for name in due_now {
                match self.trigger(&name, None) {
                    Ok(run_id) => tracing::info!("job {name}: started run {run_id} on schedule"),
                    Err(e) if e.code == "busy" => tracing::warn!("job {name}: due, but still running; skipped"),
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

    /// Starts job `name` now (with `input` instead of its own, if given).
    /// Returns the first run's id. Refused while stopping, for a paused job,
    /// and for a job already running unless it allows overlap.
    pub fn trigger(self: &Arc<Self>, name: &str, input: Option<String>) -> Result<String, DaemonError> {
        let job = self.job(name)?;
        if job.paused {
            let why = job.paused_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            return Err(DaemonError::new("paused", format!("job {name} is paused{why}; resume it first")));
        }
        let spec =
            parse_spec(&job).ok_or_else(|| DaemonError::new("internal", format!("job {name}: bad stored spec")))?;
        if let Some(input) = &input {
            serde_json::from_str::<serde::de::IgnoredAny>(input)
                .map_err(|e| DaemonError::new("invalid", format!("input for job {name} is not valid JSON: {e}")))?;
        }
        {
            let mut busy = self.busy.lock().unwrap();
            // Checked under the lock that `idle()` reads, so a stop cannot
            // slip between this check and the job counting as busy.
            if self.stopping.load(Ordering::SeqCst) {
                return Err(DaemonError::new("shutting_down", "the daemon is stopping; no new runs"));
            }
            let count = busy.entry(name.to_owned()).or_insert(0);
            if *count > 0 && !spec.allow_overlap {
                return Err(DaemonError::new("busy", format!("job {name} is already running (allow_overlap is off)")));
            }
            *count += 1;
        }
        let run_id = new_run_id();
        let cancel = Arc::new(Notify::new());
        self.register(&run_id, name, &cancel);
        let daemon = self.clone();
        let name = name.to_owned();
        let first = run_id.clone();
        tokio::spawn(async move {
            // Released however `supervise` ends, a panic included.
            let _busy = BusyGuard { daemon: daemon.clone(), name: name.clone() };
            daemon.supervise(&name, spec, input, first, cancel).await;
        });
        Ok(run_id)
    }

    /// Registers `run_id` as in flight for job `name`, so that `cancel` and
    /// `status` see it (also while it waits for a slot or a retry).
    fn register(&self, run_id: &str, name: &str, cancel: &Arc<Notify>) {
        self.running.lock().unwrap().insert(
            run_id.to_owned(),
            Running { job: name.to_owned(), cancel: cancel.clone(), started: SystemTime::now() },
        );
    }

    /// Runs a triggered job: attempts with backoff until one succeeds, one is
    /// cancelled, the attempts run out (then the job is paused) or the daemon
    /// stops.
    async fn supervise(&self, name: &str, spec: JobSpec, input: Option<String>, first: String, cancel: Arc<Notify>) {
        let retry = self.config.retry;
        let mut run_id = first;
        for attempt in 1..=retry.max_attempts {
            let report = {
                let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
                // A retry does not start once the daemon is stopping, nor
                // for a job paused or removed while it waited.
                let gone = attempt > 1
                    && (self.stopping.load(Ordering::SeqCst) || self.job(name).map_or(true, |job| job.paused));
                if gone {
                    self.running.lock().unwrap().remove(&run_id);
                    return;
                }
                self.run_once(name, &spec, input.clone(), &run_id, cancel.clone()).await
            };
            self.running.lock().unwrap().remove(&run_id);
            let status = match report.status {
                RunStatus::Succeeded => "succeeded",
                RunStatus::Failed => "failed",
                RunStatus::Cancelled => "cancelled",
            };
            let failures = match self.store.record_job_run(name, &run_id, status) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("job {name}: recording run {run_id}: {e}");
                    0
                }
            };
            if report.status != RunStatus::Failed || self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let why = report.error_code.map(|c| c.as_str()).unwrap_or("failed");
            if failures >= retry.max_attempts {
                let reason = format!("{failures} consecutive failed runs; the last ({run_id}) ended with {why}");
                tracing::warn!("job {name}: paused: {reason}");
                let _ = self.store.set_job_paused(name, true, Some(&reason));
                return;
            }
            if attempt == retry.max_attempts {
                return;
            }
            // The retry is in flight from now: `cancel` and `status` see it.
            run_id = new_run_id();
            self.register(&run_id, name, &cancel);
            let wait = retry.backoff(attempt);
            tracing::warn!("job {name}: run ended with {why}; retrying as run {run_id} in {wait:?}");
            let stop = tokio::select! {
                () = tokio::time::sleep(wait) => false,
                () = cancel.notified() => true,
                () = self.stopped_or_stopping() => true,
            };
            if stop {
                self.running.lock().unwrap().remove(&run_id);
                return;
            }
        }
    }

    async fn stopped_or_stopping(&self) {
        while !self.stopping.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One run of `spec`, recorded under `run_id`, whatever happens.
    async fn run_once(
        &self,
        name: &str,
        spec: &JobSpec,
        input: Option<String>,
        run_id: &str,
        cancel: Arc<Notify>,
    ) -> RunReport {
        let rejected = |code: ErrorCode, message: String, digest: Option<String>| {
            let mut report = RunReport::rejected(code, message);
            report.run_id = run_id.to_owned();
            report.bundle_digest = digest.clone();
            let new = NewRun {
                id: run_id.to_owned(),
                workflow: name.to_owned(),
                version: "-".to_owned(),
                bundle_path: spec.bundle.display().to_string(),
                bundle_digest: digest.unwrap_or_default(),
                kind: "-".to_owned(),
                job: Some(name.to_owned()),
            };
            if let Err(e) =
                self.store.begin_run(&new).and_then(|()| self.store.finish_run(name, &report, &StateWrites::new()))
            {
                tracing::error!("job {name}: recording rejected run {run_id}: {e}");
            }
            report
        };
        let bundle = match Bundle::read(&spec.bundle) {
            Ok(bundle) => bundle,
            Err(e) => return rejected(ErrorCode::InvalidBundle, e.to_string(), None),
        };
        let detached = crate::bundle::signature::read_detached(&spec.bundle);
        let verified = detached
            .map_err(|e| e.to_string())
            .and_then(|d| bundle.verify(d.as_ref(), &self.trust).map_err(|e| e.to_string()));
        if let Err(message) = verified {
            return rejected(ErrorCode::InvalidBundle, message, Some(bundle.digest()));
        }
        let workflow = match Workflow::load(&self.sandbox, &bundle) {
            Ok(workflow) => Arc::new(workflow),
            Err(e) => return rejected(ErrorCode::InvalidBundle, e.to_string(), Some(bundle.digest())),
        };
        let execution = Execution {
            input: input.unwrap_or_else(|| spec.input.clone()),
            args: spec.args.clone(),
            ceilings: LimitRequest {
                memory_bytes: Some(spec.memory_bytes.unwrap_or(self.config.max_memory_bytes)),
                timeout: spec.timeout,
                fuel: spec.fuel,
                ..LimitRequest::default()
            },
            grants: Grants { egress: Some(self.egress.clone()), ..Grants::default() },
            cancel: Some(cancel),
            run_id: Some(run_id.to_owned()),
            job: Some(name.to_owned()),
            ..Execution::default()
        };
        match workflow.run(&self.sandbox, Some(&self.store), execution).await {
            Ok(report) => report,
            Err(e) => {
                tracing::error!("job {name}: run {run_id} could not be recorded: {e}");
                RunReport::rejected(ErrorCode::InvalidInput, e.to_string())
            }
        }
    }

    /// Cancels run `run_id`; it is recorded `cancelled` within an epoch tick.
    pub fn cancel(&self, run_id: &str) -> Result<String, DaemonError> {
        let running = self.running.lock().unwrap();
        let run =
            running.get(run_id).ok_or_else(|| DaemonError::new("not_found", format!("no run {run_id} is running")))?;
        run.cancel.notify_one();
        Ok(run.job.clone())
    }

    fn job(&self, name: &str) -> Result<JobRecord, DaemonError> {
        self.store
            .jobs()?
            .into_iter()
            .find(|j| j.name == name)
            .ok_or_else(|| DaemonError::new("not_found", format!("no job named {name}")))
    }

    /// Adds or replaces a job from the control plane.
    pub fn add_job(&self, name: &str, spec: &JobSpec) -> Result<(), DaemonError> {
        spec.validate(name).map_err(|e| DaemonError::new("invalid", e))?;
        self.config.check_memory(name, spec).map_err(|e| DaemonError::new("invalid", e))?;
        if !spec.bundle.is_file() {
            return Err(DaemonError::new("invalid", format!("job {name}: no bundle at {}", spec.bundle.display())));
        }
        let text = serde_json::to_string(spec).map_err(|e| DaemonError::new("internal", e.to_string()))?;
        self.store.put_job(name, &text, "cli")?;
        self.next_due.lock().unwrap().remove(name);
        self.schedule_changed.notify_one();
        Ok(())
    }

    /// Removes a job; runs in flight finish.
    pub fn remove_job(&self, name: &str) -> Result<(), DaemonError> {
        if !self.store.remove_job(name)? {
            return Err(DaemonError::new("not_found", format!("no job named {name}")));
        }
        self.schedule_changed.notify_one();
        Ok(())
    }

    /// Pauses or resumes a job.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<(), DaemonError> {
        let reason = paused.then_some("paused by the operator");
        if !self.store.set_job_paused(name, paused, reason)? {
            return Err(DaemonError::new("not_found", format!("no job named {name}")));
        }
        self.schedule_changed.notify_one();
        Ok(())
    }

    /// What `wfrun status` shows.
    pub fn status(&self) -> Result<Status, DaemonError> {
        let next_due = self.next_due.lock().unwrap().clone();
        let jobs = self
            .store
            .jobs()?
            .into_iter()
            .map(|mut job| {
                let spec = parse_spec(&job);
                // The webhook secret never leaves the daemon.
                if let Some(spec) = spec.as_ref().filter(|s| s.webhook_secret.is_some()) {
                    let redacted = JobSpec { webhook_secret: Some("redacted".to_owned()), ..spec.clone() };
                    job.spec = serde_json::to_string(&redacted).unwrap_or_default();
                }
                JobStatus {
                    trigger: spec.as_ref().map(describe).unwrap_or_default(),
                    bundle: spec.as_ref().map(|s| s.bundle.display().to_string()).unwrap_or_default(),
                    next_due: next_due.get(&job.name).map(|t| humantime::format_rfc3339_seconds(*t).to_string()),
                    running: self.running.lock().unwrap().values().filter(|r| r.job == job.name).count(),
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
            version: env!("CARGO_PKG_VERSION"),
            state_dir: self.state_dir.display().to_string(),
            started_at: humantime::format_rfc3339_seconds(self.started).to_string(),
            uptime_s: self.started.elapsed().unwrap_or_default().as_secs(),
            max_concurrent_runs: self.config.max_concurrent_runs,
            stopping: self.stopping.load(Ordering::SeqCst),
            running,
            jobs,
        })
    }

    /// The control API's bearer token, if the HTTP control API is on.
    fn control_token(&self) -> Option<&str> {
        self.control_token.as_deref()
    }

    /// The spec of a webhook job, for the webhook listener.
    fn webhook_job(&self, name: &str) -> Result<JobSpec, DaemonError> {
        let job = self.job(name)?;
        let spec = parse_spec(&job).ok_or_else(|| DaemonError::new("internal", "bad stored spec"))?;
        if spec.trigger != Trigger::Webhook {
            return Err(DaemonError::new("not_found", format!("job {name} is not a webhook job")));
        }
        Ok(spec)
    }
}

/// Reads the control API's token from `file`, or from `<state-dir>/control.token`,
/// creating that one (0600, 32 random bytes in hex) the first time.
fn control_token(file: Option<&Path>, state_dir: &Path) -> anyhow::Result<String> {
    let read = |path: &Path| -> anyhow::Result<String> {
        let token = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("control token file {}: {e}", path.display()))?
            .trim()
            .to_owned();
        anyhow::ensure!(
            token.len() >= 32,
            "control token file {}: the token must be at least 32 characters",
            path.display()
        );
        Ok(token)
    };
    if let Some(file) = file {
        return read(file);
    }
    let path = state_dir.join("control.token");
    if !path.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the control token: {e}"))?;
        use std::io::Write;
        crate::files::create_private_file(&path, true)?.write_all(hex::encode(bytes).as_bytes())?;
    }
    read(&path)
}

/// After a failed accept (out of file descriptors, say): log, and wait a
/// moment rather than spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("accepting a connection: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Counts a job's trigger as finished when dropped, and wakes `idle()`.
struct BusyGuard {
    daemon: Arc<Daemon>,
    name: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut busy = self.daemon.busy.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = busy.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                busy.remove(&self.name);
            }
        }
        if busy.is_empty() {
            self.daemon.became_idle.notify_waiters();
        }
    }
}

fn parse_spec(job: &JobRecord) -> Option<JobSpec> {
    match serde_json::from_str(&job.spec) {
        Ok(spec) => Some(spec),
        Err(e) => {
            tracing::error!("job {}: stored definition does not parse: {e}", job.name);
            None
        }
    }
}

/// A job's trigger in words: `every 30s`, `cron "*/5 * * * *" (UTC)`,
/// `webhook`, `manual`.
pub fn describe(spec: &JobSpec) -> String {
    match &spec.trigger {
        Trigger::Every(d) => format!("every {}", humantime::format_duration(*d)),
        Trigger::Cron(expr) => format!("cron \"{expr}\" ({})", spec.timezone.as_deref().unwrap_or("UTC")),
        Trigger::Webhook => "webhook".to_owned(),
        Trigger::Manual => "manual".to_owned(),
    }
}

/// The daemon's state, as `status` returns it.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The daemon's process id.
    pub pid: u32,
    /// wfrun's version.
    pub version: &'static str,
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
    /// Runs in flight.
    pub running: Vec<RunningStatus>,
    /// Every job.
    pub jobs: Vec<JobStatus>,
}

/// A run in flight.
#[derive(Debug, Serialize)]
pub struct RunningStatus {
    /// Its id.
    pub run_id: String,
    /// Its job.
    pub job: String,
    /// When it started.
    pub started_at: String,
}

/// A job with its schedule.
#[derive(Debug, Serialize)]
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
