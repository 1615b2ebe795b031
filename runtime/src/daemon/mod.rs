//! The runner daemon: wiring, the state directory's lock, and shutdown.
//!
//! [`Daemon::open`] takes the state directory's lock, marks runs a dead
//! process left `running` as `interrupted`, stores the config file's jobs
//! and loads every job into memory. [`Daemon::serve`] then runs, side by
//! side until SIGINT or SIGTERM: the [`scheduler`] (interval and cron jobs),
//! the [`control`] plane (dispatch, over a Unix socket and optionally HTTP
//! with a bearer token, beside the webhook listener), and, for each trigger,
//! the [`supervisor`] (slots, no overlap unless allowed, retries with
//! backoff, pausing after repeated failure, cancellation, and the
//! prepared-program cache that runs go through, via the one
//! [`Runner`]). On a stop, triggers end, running runs
//! get the grace period, and the rest are cancelled and recorded
//! `cancelled`. [`status`] is what `wfrun status` shows. Errors a request
//! can meet are a [`DaemonError`], each with a stable code.

pub mod config;
pub mod control;
pub mod jobs;
pub mod metrics;
pub mod releases;
pub mod scheduler;
pub mod services;
pub mod status;
pub mod supervisor;

pub use config::{ConfigError, ConfigProblem, DaemonConfig};
pub use jobs::JobError;
pub use status::{JobStatus, RunningStatus, Status, TrustStatus};

use crate::policy::{Policy, TrustMode};
use crate::runner::{ProgramCache, Runner};
use crate::sandbox::{EngineOptions, PoolingOptions, Sandbox};
use crate::store::{JobRecord, JobSource, Store, StoreError};
use jobs::JobTable;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use supervisor::Running;
use tokio::sync::{Notify, Semaphore};

/// The socket of the control plane, in the state directory.
pub const SOCKET_NAME: &str = "wfrun.sock";
/// Held while a daemon runs on a state directory.
const LOCK_NAME: &str = "daemon.lock";

/// Why a daemon request was refused. [`DaemonError::code`] is stable, for
/// scripts: `not_found`, `invalid`, `busy`, `paused`, `shutting_down` or
/// `internal`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaemonError {
    /// No job by that name.
    #[error("no job named {name}")]
    JobNotFound {
        /// The name asked for.
        name: String,
    },
    /// The job exists but is not a webhook job.
    #[error("job {name} is not a webhook job")]
    NotAWebhook {
        /// The job.
        name: String,
    },
    /// No run by that id is in flight.
    #[error("no run {run_id} is running")]
    RunNotRunning {
        /// The id asked for.
        run_id: String,
    },
    /// No run by that id is recorded.
    #[error("no run {run_id}")]
    RunNotFound {
        /// The id asked for.
        run_id: String,
    },
    /// The job is paused.
    #[error("job {name} is paused{}; resume it first", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Paused {
        /// The job.
        name: String,
        /// Why, when the daemon paused it.
        reason: Option<String>,
    },
    /// The job is running and does not allow overlap.
    #[error("job {name} is already running (allow_overlap is off)")]
    Busy {
        /// The job.
        name: String,
    },
    /// The daemon is stopping.
    #[error("the daemon is stopping; no new runs")]
    ShuttingDown,
    /// A job definition that does not validate.
    #[error(transparent)]
    InvalidJob(#[from] JobError),
    /// A request that is malformed: unknown method, bad parameters, input
    /// that is not JSON.
    #[error("{0}")]
    InvalidRequest(String),
    /// The daemon failed (its database): not the request's fault.
    #[error("{0}")]
    Internal(String),
}

impl DaemonError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            DaemonError::JobNotFound { .. }
            | DaemonError::NotAWebhook { .. }
            | DaemonError::RunNotRunning { .. }
            | DaemonError::RunNotFound { .. } => "not_found",
            DaemonError::Paused { .. } => "paused",
            DaemonError::Busy { .. } => "busy",
            DaemonError::ShuttingDown => "shutting_down",
            DaemonError::InvalidJob(_) | DaemonError::InvalidRequest(_) => "invalid",
            DaemonError::Internal(_) => "internal",
        }
    }

    /// A finer stable code where there is one (for an invalid job: which
    /// check it failed, e.g. `bad_cron`).
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            DaemonError::InvalidJob(e) => Some(e.detail()),
            _ => None,
        }
    }
}

impl From<StoreError> for DaemonError {
    fn from(e: StoreError) -> Self {
        DaemonError::Internal(e.to_string())
    }
}

/// The daemon's shared state.
pub struct Daemon {
    config: DaemonConfig,
    state_dir: PathBuf,
    store: Arc<Store>,
    runner: Runner,
    programs: ProgramCache,
    policy: Policy,
    jobs: JobTable,
    slots: Arc<Semaphore>,
    running: Mutex<BTreeMap<String, Running>>,
    /// Jobs with a trigger in flight (running or waiting to retry).
    busy: Mutex<BTreeMap<String, u32>>,
    /// Runs whose supervisor has not decided yet whether it retries them:
    /// a waiting client takes a run's end as final only once it is not here.
    unsettled: Mutex<std::collections::HashSet<String>>,
    /// What `/metrics` shows.
    metrics: metrics::Metrics,
    /// The services' keepers and bookkeeping.
    services: services::Services,
    /// Wakes the services' manager: a job was added, removed, paused or resumed.
    services_changed: Notify,
    /// Each time-triggered job's next due time, as the scheduler last set it.
    next_due: Mutex<BTreeMap<String, SystemTime>>,
    /// Jobs whose schedule the scheduler must compute again.
    schedule_forget: Mutex<Vec<String>>,
    schedule_changed: Notify,
    stopping: AtomicBool,
    stopped: Notify,
    became_idle: Notify,
    started: SystemTime,
    control_token: Option<String>,
    /// The control API's TLS, when `[control_http]` has a certificate.
    control_tls: Option<tokio_rustls::TlsAcceptor>,
    /// Pulling releases, with a `[sync]` table.
    sync: Option<releases::SyncState>,
    /// This device's id (`[device] id`, or the one made once).
    device_id: String,
    /// Sending reports and heartbeats, with a `[report]` table.
    uploader: Option<Arc<crate::report::uploader::Uploader>>,
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
        // Configuration first: a daemon that cannot enforce its trust
        // settings must not start.
        let policy = config.policy().context("trust")?;
        let store = Arc::new(Store::open(&state_dir)?);
        let lock = crate::files::ensure_private_file(&state_dir.join(LOCK_NAME))
            .and_then(|()| std::fs::OpenOptions::new().write(true).open(state_dir.join(LOCK_NAME)))
            .with_context(|| format!("opening {}", state_dir.join(LOCK_NAME).display()))?;
        if lock.try_lock().is_err() {
            anyhow::bail!("another wfrun daemon is running on state directory {}", state_dir.display());
        }
        // Checkpoints on a thread of their own: a commit does not copy the
        // WAL and fsync while triggers wait for the connection.
        if let Err(e) = store.checkpoint_in_background() {
            tracing::warn!("run database: checkpoints stay with the writes: {e}");
        }
        let device_id = match &config.device_id {
            Some(id) => id.clone(),
            None => store.device_id()?,
        };
        // Reporting on before anything is recorded, the interrupted runs
        // found below included.
        let uploader = match &config.report {
            Some(settings) => {
                store.enable_outbox(crate::store::Reporter {
                    device_id: device_id.clone(),
                    runner_version: env!("CARGO_PKG_VERSION").to_owned(),
                    limits: settings.outbox,
                })?;
                let uploader =
                    crate::report::uploader::Uploader::new(store.clone(), settings.clone(), device_id.clone())
                        .context("[report]")?;
                Some(Arc::new(uploader))
            }
            None => None,
        };
        let recovered = store.recover_interrupted()?;
        if !recovered.is_empty() {
            tracing::warn!(
                "marked {} run(s) left running by a stopped process as interrupted: {}",
                recovered.len(),
                recovered.join(", ")
            );
        }
        for (name, spec) in &config.jobs {
            store.put_job(name, spec, JobSource::Config)?;
        }
        // A job that an earlier config declared and this one does not is gone.
        for job in store.jobs()? {
            if job.source == JobSource::Config && !config.jobs.contains_key(&job.name) {
                store.remove_job(&job.name)?;
            }
        }
        let jobs = JobTable::load(store.clone())?;
        let sync = config.sync.clone().map(releases::SyncState::new).transpose()?;
        if policy.trust.mode() == TrustMode::UnsignedAllowed {
            tracing::warn!(
                trust_mode = "unsigned_allowed",
                "no trusted keys are configured: this daemon runs unsigned bundles; set [trust] trusted_keys \
                 and require_signed = true to run only signed ones"
            );
        }
        let control_token = match &config.control_http_listen {
            Some(_) => Some(control_token(config.control_token_file.as_deref(), &state_dir)?),
            None => None,
        };
        let control_tls = config.control_tls.as_ref().map(control::http::tls_acceptor).transpose()?;
        let options = EngineOptions { cache_dir: Some(state_dir.join("cache")), ..EngineOptions::default() };
        // A long-lived host: instances come from pools reserved once. A
        // machine that cannot reserve that much address space (a 39-bit
        // arm64 kernel) runs with on-demand allocation instead.
        let pooled = EngineOptions {
            pooling: Some(PoolingOptions {
                spares: config.spare_instances,
                ..PoolingOptions::new(
                    (config.max_concurrent_runs * crate::workflow::DEFAULT_MAX_PARALLEL) as u32,
                    config.max_memory_bytes,
                )
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
        let daemon = Arc::new(Daemon {
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs)),
            runner: Runner::new(Arc::new(sandbox), Some(store.clone())),
            programs: ProgramCache::default(),
            policy,
            jobs,
            config,
            state_dir,
            store,
            running: Mutex::default(),
            busy: Mutex::default(),
            unsettled: Mutex::default(),
            metrics: metrics::Metrics::default(),
            services: services::Services::default(),
            services_changed: Notify::new(),
            next_due: Mutex::default(),
            schedule_forget: Mutex::default(),
            schedule_changed: Notify::new(),
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
            became_idle: Notify::new(),
            started: SystemTime::now(),
            control_token,
            control_tls,
            sync,
            device_id,
            uploader,
            _lock: lock,
        });
        daemon.check_trial_restarts();
        daemon.resume_release();
        Ok(daemon)
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
        let socket = control::unix::listen(&self.state_dir.join(SOCKET_NAME))?;
        let control = tokio::spawn(control::unix::serve(self.clone(), socket));
        let mut listeners = Vec::new();
        for (addr, routes) in [
            (self.config.webhook_listen, control::http::Routes::Webhooks),
            (self.config.control_http_listen, control::http::Routes::Control),
        ] {
            let Some(addr) = addr else { continue };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("{routes:?} listener on {addr}: {e}"))?;
            let scheme =
                if routes == control::http::Routes::Control && self.control_tls.is_some() { "https" } else { "http" };
            eprintln!("wfrun daemon: {routes:?} on {scheme}://{}", listener.local_addr()?);
            listeners.push(tokio::spawn(control::http::serve(self.clone(), listener, routes)));
        }
        // Retention: at start, then hourly.
        let retention = {
            let daemon = self.clone();
            tokio::spawn(async move {
                loop {
                    match daemon.store.prune(&daemon.config.retention) {
                        Ok(p) if p.runs + p.log_dirs > 0 => tracing::info!(
                            "retention: removed {} run(s), {} log director(ies), {} bytes",
                            p.runs,
                            p.log_dirs,
                            p.log_bytes
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("retention: {e}"),
                    }
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            })
        };
        let scheduler = tokio::spawn(scheduler::run(self.clone()));
        let services = tokio::spawn(services::run(self.clone()));
        let sync = tokio::spawn(self.clone().sync_loop());
        let uploader = self.uploader.clone().map(|uploader| {
            let daemon = self.clone();
            tokio::spawn(uploader.run(move || daemon.heartbeat()))
        });
        eprintln!(
            "wfrun daemon: state directory {}, control socket {}, {} job(s)",
            self.state_dir.display(),
            self.state_dir.join(SOCKET_NAME).display(),
            self.jobs.len()
        );

        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => eprintln!("wfrun daemon: interrupted; stopping"),
            _ = terminate.recv() => eprintln!("wfrun daemon: terminated; stopping"),
            () = self.stopped.notified() => eprintln!("wfrun daemon: stopping"),
        }
        self.stopping.store(true, Ordering::SeqCst);
        scheduler.abort();
        services.abort();
        retention.abort();
        sync.abort();
        if let Some(uploader) = uploader {
            uploader.abort();
        }
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

    /// Job `name`, or `not_found`.
    fn job(&self, name: &str) -> Result<JobRecord, DaemonError> {
        self.jobs.get(name).ok_or_else(|| DaemonError::JobNotFound { name: name.to_owned() })
    }

    /// Called by the scheduler with every time-triggered job's next time.
    fn publish_next_due(&self, next: BTreeMap<String, SystemTime>) {
        *self.next_due.lock().unwrap() = next;
    }

    /// Makes the scheduler compute `name`'s schedule again, now.
    fn reschedule(&self, name: &str) {
        self.schedule_forget.lock().unwrap().push(name.to_owned());
        self.schedule_changed.notify_one();
        self.services_changed.notify_one();
    }

    /// The control API's bearer token, if the HTTP control API is on.
    fn control_token(&self) -> Option<&str> {
        self.control_token.as_deref()
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
