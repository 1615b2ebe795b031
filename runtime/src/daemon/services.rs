//! Services: jobs with `always = true`, kept running.
//!
//! [`run`] keeps one keeper task per service that is not paused: started
//! with the daemon, when a service is added or resumed, and when a release
//! brings one. A keeper starts the service's run through
//! `Daemon::start_runs` (so it is recorded, limited and cancelled like any
//! run), waits for it to end, and starts it again after a backoff from the
//! `[service]` table: the initial wait after a success or a cancel, doubled
//! for each failure in a row up to the maximum. `max_failures` failures in
//! a row, within `failure_window` of each other, pause the service with the
//! reason, as the retry policy pauses a job; `wfrun jobs resume` starts it
//! again with a clean count. Pausing, removing or replacing a service
//! cancels its run. A service's run has no timeout and no fuel budget
//! unless its job sets one. When the daemon stops, the run is cancelled
//! after the grace period, like any run, and recorded `cancelled`.

use super::Daemon;
use super::scheduler::Source;
use crate::manifest::{JobSpec, Trigger};
use crate::outcome::RunStatus;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// How often a keeper looks whether its service was paused, removed or
/// replaced while its run goes on, and the manager for new services.
const LOOK: Duration = Duration::from_millis(250);

/// What a service is doing, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Its run is running (or waiting for a run slot).
    Running,
    /// Waiting out the backoff before its next start.
    Backoff,
    /// Paused (by the operator, or after too many failures).
    Paused,
}

/// One service in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The job.
    pub name: String,
    /// What it is doing.
    pub state: ServiceState,
    /// Its current run, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Restarts since this daemon started.
    pub restarts: u64,
    /// Failed runs in a row.
    pub consecutive_failures: u32,
    /// Seconds its current run has been up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    /// When it starts next, in backoff (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start: Option<String>,
    /// How its last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<RunStatus>,
}

/// A service's bookkeeping, kept across its keepers.
#[derive(Debug, Default)]
pub(super) struct Keeping {
    /// A keeper task is on it.
    alive: bool,
    run_id: Option<String>,
    up_since: Option<SystemTime>,
    next_start: Option<SystemTime>,
    restarts: u64,
    failures: VecDeque<SystemTime>,
    last_status: Option<RunStatus>,
}

/// The services' bookkeeping, by job.
pub(super) type Services = std::sync::Mutex<BTreeMap<String, Keeping>>;

/// Keeps every service running until the daemon stops.
pub async fn run(daemon: Arc<Daemon>) {
    while !daemon.stopping.load(Ordering::SeqCst) {
        let changed = daemon.services_changed.notified();
        for job in daemon.jobs.all() {
            if job.spec.trigger != Trigger::Always || job.paused {
                continue;
            }
            let start = {
                let mut services = daemon.services.lock().unwrap();
                let keeping = services.entry(job.name.clone()).or_default();
                !std::mem::replace(&mut keeping.alive, true)
            };
            if start {
                tokio::spawn(keep(daemon.clone(), job.name.clone(), job.spec.clone()));
            }
        }
        let known: Vec<String> = daemon.jobs.all().into_iter().map(|j| j.name).collect();
        daemon.services.lock().unwrap().retain(|name, keeping| keeping.alive || known.contains(name));
        tokio::select! {
            () = tokio::time::sleep(LOOK * 4) => {}
            () = changed => {}
        }
    }
}

/// Whether service `name` still is `spec`, not paused, and the daemon runs.
fn wanted(daemon: &Daemon, name: &str, spec: &JobSpec) -> bool {
    !daemon.stopping.load(Ordering::SeqCst) && daemon.jobs.get(name).is_some_and(|job| !job.paused && job.spec == *spec)
}

/// Keeps service `name` (as `spec`) running while it is wanted.
async fn keep(daemon: Arc<Daemon>, name: String, spec: JobSpec) {
    let policy = daemon.config.service;
    let edit = |f: &mut dyn FnMut(&mut Keeping)| {
        if let Some(keeping) = daemon.services.lock().unwrap().get_mut(&name) {
            f(keeping);
        }
    };
    while wanted(&daemon, &name, &spec) {
        let started = match daemon.start_runs(&name, None, 1, Source::Service) {
            Ok(mut started) => started.pop(),
            // A run someone triggered by hand is in flight: the service
            // starts once it ends, and nothing failed.
            Err(super::DaemonError::Busy { .. }) => {
                tokio::time::sleep(LOOK).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("service {name}: not started: {e}");
                None
            }
        };
        let status = match started {
            Some((run_id, mut supervisor)) => {
                edit(&mut |k| {
                    k.run_id = Some(run_id.clone());
                    k.up_since = Some(SystemTime::now());
                    k.next_start = None;
                });
                tracing::info!("service {name}: started run {run_id}");
                let mut cancelled = false;
                let status = loop {
                    tokio::select! {
                        ended = &mut supervisor => break ended.unwrap_or(RunStatus::Failed),
                        () = tokio::time::sleep(LOOK) => {
                            if !cancelled && !daemon.stopping.load(Ordering::SeqCst) && !wanted(&daemon, &name, &spec) {
                                tracing::info!("service {name}: paused, removed or replaced; cancelling run {run_id}");
                                let _ = daemon.cancel(&run_id);
                                cancelled = true;
                            }
                        }
                    }
                };
                edit(&mut |k| {
                    k.run_id = None;
                    k.up_since = None;
                    k.last_status = Some(status);
                });
                Some(status)
            }
            None => None,
        };
        if !wanted(&daemon, &name, &spec) {
            break;
        }
        let now = SystemTime::now();
        let mut failures = 0;
        let mut give_up = None;
        edit(&mut |k| {
            match status {
                Some(RunStatus::Succeeded | RunStatus::Cancelled) => k.failures.clear(),
                _ => {
                    k.failures.push_back(now);
                    while k
                        .failures
                        .front()
                        .is_some_and(|first| now.duration_since(*first).unwrap_or_default() > policy.failure_window)
                    {
                        k.failures.pop_front();
                    }
                }
            }
            failures = k.failures.len() as u32;
            if failures >= policy.max_failures {
                give_up = Some(failures);
                k.failures.clear();
            }
        });
        if let Some(failures) = give_up {
            let reason = format!(
                "service: {failures} failed runs in a row within {}; resume it with `wfrun jobs resume {name}`",
                humantime::format_duration(policy.failure_window)
            );
            tracing::warn!("service {name}: paused: {reason}");
            let _ = daemon.jobs.set_paused(&name, true, Some(&reason));
            break;
        }
        let wait = if failures == 0 { policy.initial_backoff } else { policy.backoff(failures - 1) };
        edit(&mut |k| {
            k.restarts += 1;
            k.next_start = Some(now + wait);
        });
        tracing::info!("service {name}: run ended ({status:?}); restarting in {wait:?}");
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline && wanted(&daemon, &name, &spec) {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + LOOK)).await;
        }
    }
    // Paused, removed, replaced or stopping: the next keeper (after a
    // resume, say) starts with a clean count.
    edit(&mut |k| {
        k.alive = false;
        k.next_start = None;
        k.failures.clear();
    });
    // A resumed or replaced service gets its next keeper without waiting.
    daemon.services_changed.notify_one();
}

impl Daemon {
    /// Clears service `name`'s failures in a row (it was resumed).
    pub(super) fn forget_service_failures(&self, name: &str) {
        if let Some(keeping) = self.services.lock().unwrap().get_mut(name) {
            keeping.failures.clear();
        }
    }

    /// The services and what each is doing.
    pub fn services_status(&self) -> Vec<ServiceStatus> {
        let services = self.services.lock().unwrap();
        self.jobs
            .all()
            .into_iter()
            .filter(|job| job.spec.trigger == Trigger::Always)
            .map(|job| {
                let keeping = services.get(&job.name);
                let state = match keeping {
                    _ if job.paused => ServiceState::Paused,
                    Some(k) if k.run_id.is_some() => ServiceState::Running,
                    _ => ServiceState::Backoff,
                };
                ServiceStatus {
                    name: job.name.clone(),
                    state,
                    run_id: keeping.and_then(|k| k.run_id.clone()),
                    restarts: keeping.map_or(0, |k| k.restarts),
                    consecutive_failures: keeping.map_or(0, |k| k.failures.len() as u32),
                    uptime_s: keeping
                        .and_then(|k| k.up_since)
                        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default().as_secs()),
                    next_start: keeping
                        .and_then(|k| k.next_start)
                        .filter(|_| state == ServiceState::Backoff)
                        .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    last_status: keeping.and_then(|k| k.last_status),
                }
            })
            .collect()
    }
}
