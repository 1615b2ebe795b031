//! The supervisor: what happens to a triggered job until it is done.
//!
//! [`Daemon::trigger`] is the one entry every trigger source goes through
//! ([`Source`]): it refuses a paused job, a job already running (unless it
//! allows overlap) and any trigger once the daemon is stopping, then starts
//! the job's first attempt, recorded `pending` before its id is handed
//! back. Each attempt waits for one of the daemon's run slots, takes the
//! job's prepared program from the [`ProgramCache`] (read, verified and
//! loaded only when the bundle file changed) and what the daemon's policy
//! with the job's ceilings grants it (the runs of one trigger look both up
//! once between them), and runs it through the [`Runner`]. A failed
//! attempt is retried with backoff; a job whose runs keep failing is
//! paused; a cancelled run is recorded `cancelled` and not retried.

use super::scheduler::Source;
use super::{Daemon, DaemonError};
use crate::limits::LimitRequest;
use crate::manifest::JobSpec;
use crate::outcome::{ErrorCode, RunReport, RunStatus, new_run_id};
use crate::policy::Admitted;
use crate::policy::Policy;
use crate::runner::{ProgramCache, Rejection, Runner};
use crate::workflow::{Execution, Slot};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// The most runs one [`Daemon::trigger_many`] starts.
pub const MAX_TRIGGER_COUNT: usize = 1000;

/// Keeps the run a supervisor is on in [`Daemon::settled`]'s unsettled
/// set until the supervisor moves on to a retry or returns (or panics).
struct Settling<'a> {
    daemon: &'a Daemon,
    run_id: String,
}

impl Settling<'_> {
    /// The supervisor moved on to `retry`, already in the set.
    fn moved_to(&mut self, retry: &str) {
        let done = std::mem::replace(&mut self.run_id, retry.to_owned());
        self.daemon.unsettled.lock().unwrap().remove(&done);
    }
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        self.daemon.unsettled.lock().unwrap().remove(&self.run_id);
    }
}

/// A run in flight.
pub(super) struct Running {
    pub(super) job: String,
    pub(super) cancel: Arc<Notify>,
    pub(super) started: SystemTime,
}

impl Daemon {
    /// Starts job `name` now (with `input` instead of its own, if given),
    /// on behalf of `source`. Returns the first run's id. Refused while
    /// stopping, for a paused job, and for a job already running unless it
    /// allows overlap.
    pub fn trigger(self: &Arc<Self>, name: &str, input: Option<String>, source: Source) -> Result<String, DaemonError> {
        let mut ids = self.trigger_many(name, input, 1, source)?;
        Ok(ids.remove(0))
    }

    /// Starts `count` runs of job `name` at once (at most
    /// [`MAX_TRIGGER_COUNT`]; more than one only for a job that allows
    /// overlap), all recorded `pending` in one write before their ids are
    /// returned. They wait for run slots like any others.
    pub fn trigger_many(
        self: &Arc<Self>,
        name: &str,
        input: Option<String>,
        count: usize,
        source: Source,
    ) -> Result<Vec<String>, DaemonError> {
        Ok(self.start_runs(name, input, count, source)?.into_iter().map(|(id, _)| id).collect())
    }

    /// [`Daemon::trigger_many`], with each run's supervisor: it ends with
    /// the run's last attempt's status.
    pub(super) fn start_runs(
        self: &Arc<Self>,
        name: &str,
        input: Option<String>,
        count: usize,
        source: Source,
    ) -> Result<Vec<(String, tokio::task::JoinHandle<RunStatus>)>, DaemonError> {
        let job = self.job(name)?;
        if job.paused {
            return Err(DaemonError::Paused { name: name.to_owned(), reason: job.paused_reason });
        }
        if count == 0 || count > MAX_TRIGGER_COUNT {
            return Err(DaemonError::InvalidRequest(format!("count must be 1 to {MAX_TRIGGER_COUNT}, not {count}")));
        }
        if count > 1 && !job.spec.allow_overlap {
            return Err(DaemonError::InvalidRequest(format!(
                "job {name} does not allow overlap: its runs are triggered one at a time"
            )));
        }
        if let Some(input) = &input {
            serde_json::from_str::<serde::de::IgnoredAny>(input)
                .map_err(|e| DaemonError::InvalidRequest(format!("input for job {name} is not valid JSON: {e}")))?;
        }
        {
            let mut busy = self.busy.lock().unwrap();
            // Checked under the lock that `idle()` reads, so a stop cannot
            // slip between this check and the job counting as busy.
            if self.stopping.load(Ordering::SeqCst) {
                return Err(DaemonError::ShuttingDown);
            }
            let running = busy.entry(name.to_owned()).or_insert(0);
            if *running > 0 && !job.spec.allow_overlap {
                return Err(DaemonError::Busy { name: name.to_owned() });
            }
            *running += count as u32;
        }
        // Released however the trigger ends: refused below, or when
        // `supervise` returns or panics.
        let busy: Vec<BusyGuard> =
            (0..count).map(|_| BusyGuard { daemon: self.clone(), name: name.to_owned() }).collect();
        let ids: Vec<String> = (0..count).map(|_| new_run_id()).collect();
        // The ids are acknowledged only once they name durable records.
        self.store.accept_runs(&ids, name, &job.spec.bundle.display().to_string())?;
        self.unsettled.lock().unwrap().extend(ids.iter().cloned());
        // The runs of one trigger look their program up once, as the first
        // of them starts: one check that the bundle is unchanged, not one
        // per run.
        let program: SharedProgram = Arc::default();
        let spec = Arc::new(job.spec);
        let mut started = Vec::with_capacity(count);
        for (run_id, busy) in ids.into_iter().zip(busy) {
            let run_id = run_id.as_str();
            let unfinished = Unfinished::new(&self.store, run_id);
            let cancel = Arc::new(Notify::new());
            self.register(run_id, name, &cancel);
            tracing::debug!("job {name}: run {run_id} triggered ({})", source.as_str());
            let daemon = self.clone();
            let name = name.to_owned();
            let spec = spec.clone();
            let input = input.clone();
            let program = program.clone();
            let supervisor = tokio::spawn(async move {
                let _busy = busy;
                daemon.supervise(&name, spec, input, unfinished, cancel, program).await
            });
            started.push((run_id.to_owned(), supervisor));
        }
        Ok(started)
    }

    fn register(&self, run_id: &str, name: &str, cancel: &Arc<Notify>) {
        self.running.lock().unwrap().insert(
            run_id.to_owned(),
            Running { job: name.to_owned(), cancel: cancel.clone(), started: SystemTime::now() },
        );
    }

    /// Runs a triggered job: attempts with backoff until one succeeds, one is
    /// cancelled, the attempts run out (then the job is paused) or the daemon
    /// stops.
    async fn supervise(
        &self,
        name: &str,
        spec: Arc<JobSpec>,
        input: Option<String>,
        first: Unfinished,
        cancel: Arc<Notify>,
        program: SharedProgram,
    ) -> RunStatus {
        let retry = self.policy.retry;
        let service = spec.trigger == crate::manifest::Trigger::Always;
        let mut last = RunStatus::Cancelled;
        let mut unfinished = first;
        let mut run_id = unfinished.run_id.clone();
        let mut settling = Settling { daemon: self, run_id: run_id.clone() };
        for attempt in 1..=retry.max_attempts {
            let report = {
                let slot = Slot::acquire(&self.slots).await;
                // A retry does not start once the daemon is stopping, nor
                // for a job paused or removed while it waited.
                // A release job replaced by another release is not retried.
                let gone = attempt > 1
                    && (self.stopping.load(Ordering::SeqCst)
                        || self.jobs.get(name).is_none_or(|job| job.paused || job.spec != *spec));
                if gone {
                    self.running.lock().unwrap().remove(&run_id);
                    unfinished.abandon(
                        RunStatus::Cancelled,
                        "not started: the daemon was stopping, or the job was paused, removed or replaced \
                         while the retry waited",
                    );
                    return last;
                }
                // A retry looks its program up afresh: the bundle may have
                // been fixed.
                let program = if attempt == 1 { program.clone() } else { SharedProgram::default() };
                let execution = Execution {
                    slot: Some(slot),
                    input: input.clone().unwrap_or_else(|| spec.input.clone()),
                    args: spec.args.clone(),
                    cancel: Some(cancel.clone()),
                    run_id: Some(run_id.clone()),
                    job: Some(name.to_owned()),
                    outputs: spec.outputs,
                    outputs_limit: self.config.outputs,
                    ..Execution::default()
                };
                // Boxed: a run waiting for its slot holds only this task's
                // small state, not the whole run's future.
                let tried = Box::pin(self.run_once(name, &spec, &run_id, execution, &program)).await;
                if tried.recorded {
                    unfinished.done();
                }
                tried.report
            };
            last = report.status;
            self.running.lock().unwrap().remove(&run_id);
            self.metrics.ended(name, &report);
            self.reports_written();
            let from_release = self.jobs.get(name).is_some_and(|job| job.source == crate::store::JobSource::Release);
            let failures = self.jobs.record_run(name, &run_id, report.status, report.error_code);
            // A failure in a release's trial rolls the release back; the job
            // now runs the last known good, with a clean slate.
            if from_release && self.after_release_run(name, &spec, report.status, report.error_code) {
                let _ = self.jobs.set_paused(name, false, None);
                return last;
            }
            // A service is restarted by its keeper (`services`), by its own
            // rules: not retried, not paused here.
            if service {
                return last;
            }
            if report.status != RunStatus::Failed || self.stopping.load(Ordering::SeqCst) {
                return last;
            }
            let why = report.error_code.map(|c| c.as_str()).unwrap_or("failed");
            if failures >= retry.max_attempts {
                let reason = format!("{failures} consecutive failed runs; the last ({run_id}) ended with {why}");
                tracing::warn!("job {name}: paused: {reason}");
                let _ = self.jobs.set_paused(name, true, Some(&reason));
                return last;
            }
            if attempt == retry.max_attempts {
                return last;
            }
            // A bundle refused as it is (a bad signature, a policy, not a
            // component) is refused again until it changes: no retry.
            if report.error_code == Some(crate::outcome::ErrorCode::InvalidBundle) {
                tracing::warn!("job {name}: run {run_id} refused with invalid_bundle; not retried");
                return last;
            }
            // The retry is in flight from now: `cancel`, `status` and
            // `runs` see it, and the failed run names it.
            self.metrics.retried(name);
            let failed = std::mem::replace(&mut run_id, new_run_id());
            self.unsettled.lock().unwrap().insert(run_id.clone());
            let accepted = self.store.accept_retry(&failed, &run_id, name, &spec.bundle.display().to_string());
            settling.moved_to(&run_id);
            if let Err(e) = accepted {
                tracing::error!("job {name}: recording retry {run_id}: {e}; not retried");
                return last;
            }
            unfinished = Unfinished::new(&self.store, &run_id);
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
                unfinished
                    .abandon(RunStatus::Cancelled, "not started: cancelled, or the daemon stopped, during the backoff");
                return RunStatus::Cancelled;
            }
        }
        last
    }

    /// Whether run `run_id`'s end is final: its supervisor will not retry
    /// it (or has, and the run names its retry in `retried_as`).
    pub fn settled(&self, run_id: &str) -> bool {
        !self.unsettled.lock().unwrap().contains(run_id)
    }

    async fn stopped_or_stopping(&self) {
        while !self.stopping.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon's policy with job `spec`'s ceilings: the job's own, else
    /// the daemon's (`[daemon] max_memory`), else the defaults.
    pub(super) fn job_policy(&self, spec: &JobSpec) -> Policy {
        // A service runs until it ends: no timeout or fuel budget unless
        // the job sets one (the longest timeout there is, and all the fuel).
        let service = spec.trigger == crate::manifest::Trigger::Always;
        let job = LimitRequest {
            memory_bytes: spec.memory_bytes,
            timeout: spec.timeout.or(service.then_some(crate::limits::Limits::MAX_TIMEOUT)),
            fuel: spec.fuel.or(service.then_some(u64::MAX)),
            ..LimitRequest::default()
        };
        Policy { ceilings: crate::settings::ceilings(&job, &self.policy.ceilings), ..self.policy.clone() }
    }

    /// One run of `spec` as `execution`, recorded under `run_id`, whatever
    /// happens (if recording fails, `recorded` says so).
    async fn run_once(
        &self,
        name: &str,
        spec: &JobSpec,
        run_id: &str,
        execution: Execution,
        program: &SharedProgram,
    ) -> Attempt {
        let admitted = program
            .get_or_init(|| async {
                let prepared = self.programs.prepare(&self.runner, &spec.bundle, &self.policy.trust)?;
                let admitted = Runner::admit(&prepared, &self.job_policy(spec))?;
                Ok((prepared, admitted))
            })
            .await;
        let recorded = match admitted {
            Ok((prepared, admitted)) => self.runner.run_admitted(prepared, admitted, execution).await,
            Err(rejection) => {
                tracing::warn!("job {name}: run {run_id} refused: {}", rejection.message);
                self.runner.reject(&spec.bundle, rejection, &execution)
            }
        };
        match recorded {
            Ok(report) => Attempt { report, recorded: true },
            Err(e) => {
                tracing::error!("job {name}: run {run_id} could not be recorded: {e}");
                let mut report = RunReport::rejected(ErrorCode::HostError, e.to_string());
                report.run_id = run_id.to_owned();
                Attempt { report, recorded: false }
            }
        }
    }

    /// Cancels run `run_id`; it is recorded `cancelled` within an epoch tick.
    pub fn cancel(&self, run_id: &str) -> Result<String, DaemonError> {
        let running = self.running.lock().unwrap();
        let run = running.get(run_id).ok_or_else(|| DaemonError::RunNotRunning { run_id: run_id.to_owned() })?;
        run.cancel.notify_one();
        Ok(run.job.clone())
    }

    /// Adds or replaces a job from the control plane.
    pub fn add_job(&self, name: &str, spec: &JobSpec) -> Result<(), DaemonError> {
        super::jobs::validate(name, spec, self.config.max_memory_bytes)?;
        if !spec.bundle.is_file() {
            return Err(super::JobError::NoBundle { name: name.to_owned(), path: spec.bundle.clone() }.into());
        }
        self.jobs.put(name, spec, crate::store::JobSource::Cli)?;
        self.reschedule(name);
        Ok(())
    }

    /// Removes a job; runs in flight finish.
    pub fn remove_job(&self, name: &str) -> Result<(), DaemonError> {
        if !self.jobs.remove(name)? {
            return Err(DaemonError::JobNotFound { name: name.to_owned() });
        }
        let bundles: Vec<_> = self.jobs.all().into_iter().map(|j| j.spec.bundle).collect();
        self.programs.retain(|path| bundles.iter().any(|b| b == path));
        self.reschedule(name);
        Ok(())
    }

    /// Pauses or resumes a job.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<(), DaemonError> {
        let reason = paused.then_some("paused by the operator");
        if !self.jobs.set_paused(name, paused, reason)? {
            return Err(DaemonError::JobNotFound { name: name.to_owned() });
        }
        if !paused {
            // A resumed service starts counting failures afresh.
            self.forget_service_failures(name);
        }
        self.schedule_changed.notify_one();
        self.services_changed.notify_one();
        Ok(())
    }

    /// The spec of a webhook job, for the webhook listener.
    pub(super) fn webhook_job(&self, name: &str) -> Result<JobSpec, DaemonError> {
        let job = self.job(name)?;
        if job.spec.trigger != crate::manifest::Trigger::Webhook {
            return Err(DaemonError::NotAWebhook { name: name.to_owned() });
        }
        Ok(job.spec)
    }

    /// The prepared-program cache.
    pub fn programs(&self) -> &ProgramCache {
        &self.programs
    }
}

/// The prepared program and what the job's policy grants it (or why it
/// cannot run) that the runs of one trigger share: looked up and admitted
/// by the first of them to start.
type SharedProgram = Arc<tokio::sync::OnceCell<Result<(Arc<crate::runner::Prepared>, Admitted), Rejection>>>;

/// What [`Daemon::run_once`] did.
struct Attempt {
    report: RunReport,
    /// Whether its end is in the run history.
    recorded: bool,
}

/// A run accepted (recorded `pending`) whose end is not recorded yet. Dropped
/// so (the supervisor panicked, or recording the end failed), it records the
/// run `failed` with `host_error`, so no acknowledged id stays `pending` or
/// `running` for as long as the daemon lives.
struct Unfinished {
    store: Arc<crate::store::Store>,
    run_id: String,
    armed: bool,
}

impl Unfinished {
    fn new(store: &Arc<crate::store::Store>, run_id: &str) -> Unfinished {
        Unfinished { store: store.clone(), run_id: run_id.to_owned(), armed: true }
    }

    /// Its end is recorded.
    fn done(&mut self) {
        self.armed = false;
    }

    /// Records it ended as `status` without having started.
    fn abandon(&mut self, status: RunStatus, message: &str) {
        self.armed = false;
        if let Err(e) = self.store.abandon_run(&self.run_id, status, None, message) {
            tracing::error!("run {}: recording that it did not start: {e}", self.run_id);
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let message = "wfrun failed to record how this run ended (see the daemon's log)";
        match self.store.abandon_run(&self.run_id, RunStatus::Failed, Some(ErrorCode::HostError), message) {
            Ok(true) => tracing::error!("run {}: recorded as failed with host_error", self.run_id),
            Ok(false) => {}
            Err(e) => tracing::error!("run {}: could not record it failed: {e}", self.run_id),
        }
    }
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
