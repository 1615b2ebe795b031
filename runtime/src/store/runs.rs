//! Run history: each run's status transitions, outcome and node records.
//!
//! A run is recorded when it starts ([`Store::begin_run`]: `pending`, then
//! `running`, with the owning process and boot) and when it ends
//! ([`Store::finish_run`]: outcome, node records and, for a success, the
//! workflow's state writes, in one transaction). A run refused before it
//! started is recorded whole by [`Store::record_rejected`]. The daemon
//! records a triggered run `pending` before it acknowledges the trigger
//! ([`Store::accept_runs`]); `begin_run` and `record_rejected` then complete
//! that row, and [`Store::abandon_run`] ends one that never started.
//! [`Store::recover_interrupted`] marks runs whose process is gone, left
//! `pending` or `running`, `interrupted`. [`RunRecord`] is a run as read back, typed.

use super::{StateWrites, Store, StoreError, now};
use crate::outcome::{ErrorCode, GuestKind, NodeRecord, PolicyViolation, RunReport, RunStatus};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest node log kept in the database with its run; a larger one is
/// a file in the run's log directory.
pub const INLINE_LOG_MAX: usize = 64 * 1024;

/// How a run ended, for [`Store::finish_run`]: its report, and what is
/// recorded with it.
#[derive(Debug)]
pub struct RunEnd {
    /// The workflow's name (its state's scope).
    pub workflow: String,
    /// The run's report.
    pub report: RunReport,
    /// The state writes of a run that succeeded.
    pub state: StateWrites,
    /// Each state key the run read, with the value it saw.
    pub reads: StateWrites,
    /// The run and the time it started, if [`Store::begin_run`] has not
    /// recorded its start.
    pub unbegun: Option<(NewRun, String)>,
    /// Node logs kept in the database, as (node, text).
    pub logs: Vec<(String, String)>,
}

/// A run end waiting for the run-end writer, and where its answer goes.
pub(super) type WaitingEnd = (RunEnd, tokio::sync::oneshot::Sender<(RunEnd, Result<(), StoreError>)>);

/// The most run ends the run-end writer records at once. A commit writes
/// every page its group changed, and the runs of a batch share most of
/// theirs: 128 rather than 32 took the writer from about 28 to 24 µs a
/// run. A trigger's own write does not wait behind the batch: it joins
/// and commits the group at the next run end ([`Store::grouped_batch`]).
const END_BATCH: usize = 128;

/// The run-end writer's loop: every end waiting (up to [`END_BATCH`]) is
/// recorded together, and each answered; once no end has come for
/// [`IDLE`], the heap is trimmed ([`release_free_heap`]). Ends when the store
/// is dropped.
fn end_writer(store: &std::sync::Weak<Store>, ends: &std::sync::mpsc::Receiver<WaitingEnd>) {
    use std::sync::mpsc::RecvTimeoutError;
    // Whether ends were recorded since the heap was last trimmed.
    let mut worked = false;
    loop {
        let next = match worked {
            true => ends.recv_timeout(IDLE),
            false => ends.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let first = match next {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                release_free_heap();
                if let Some(store) = store.upgrade() {
                    store.heap_trims.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                worked = false;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        worked = true;
        let mut batch = vec![first];
        while batch.len() < END_BATCH
            && let Ok(next) = ends.try_recv()
        {
            batch.push(next);
        }
        let (ends_now, answers): (Vec<RunEnd>, Vec<_>) = batch.into_iter().unzip();
        // The store is let go before the answers go out: the task that
        // drops the last other handle then closes the store itself (a
        // short-lived `exec` folds its WAL in as it closes), rather than
        // this thread, perhaps as the process exits.
        let Some(results) = store.upgrade().map(|store| store.finish_runs(&ends_now)) else { return };
        for ((end, answer), result) in ends_now.into_iter().zip(answers).zip(results) {
            // A task that stopped waiting still has its run recorded.
            let _ = answer.send((end, result));
        }
    }
}

/// How long the run-end writer waits, after recording ends, for another
/// before it counts the host idle and trims the heap.
pub(super) const IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Gives the heap's free memory back to the system (glibc's
/// `malloc_trim`). A burst of runs leaves freed memory in the allocator's
/// per-thread arenas, scattered between live allocations where no arena
/// ever shrinks; without this, a daemon's resident memory after a burst
/// stays at its busiest (44.5 MiB after 1,000 `hello` runs, 34.7 MiB once
/// trimmed; docs/performance.md). The run-end writer calls it once no run
/// has ended for [`IDLE`]: it walks every arena (3 ms for a daemon of 45
/// MiB, measured with a uprobe), so a run that ends meanwhile waits that
/// long for its record at most. A long-lived host's program cache calls it
/// too, after loading a bundle ([`crate::runner::ProgramCache`]). Does
/// nothing on other C libraries.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` takes the arenas' locks itself and
        // only releases memory no allocation holds; any thread may call it.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Writes `end` in the open transaction at time `at`; a state key it read
/// that changed since is put in `conflict` (and nothing is written).
fn finish_in(
    tx: &Connection,
    end: &RunEnd,
    at: &str,
    conflict: &std::cell::RefCell<Option<String>>,
) -> rusqlite::Result<()> {
    let RunEnd { workflow, report, state, reads, unbegun, logs } = end;
    if report.status == RunStatus::Succeeded && !state.is_empty() {
        for (key, seen) in reads {
            let now: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT CAST(value AS BLOB) FROM state WHERE workflow = ?1 AND key = ?2",
                    params![workflow, key],
                    |r| r.get(0),
                )
                .optional()?;
            if &now != seen {
                *conflict.borrow_mut() = Some(key.clone());
                return Err(rusqlite::Error::QueryReturnedNoRows);
            }
        }
    }
    match unbegun {
        Some((run, started)) => insert_finished(tx, run, started, report, at)?,
        None => update_finished(tx, report, at)?,
    }
    let mut log = tx.prepare_cached(INSERT_LOG)?;
    for (node, text) in logs {
        log.execute(params![report.run_id, node, text])?;
    }
    if report.status == RunStatus::Succeeded {
        super::state::apply(tx, workflow, state)?;
    }
    Ok(())
}

/// What is known when a run starts.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The run id (UUIDv7).
    pub id: String,
    /// The workflow name (a plain component's file stem).
    pub workflow: String,
    /// The workflow version (`-` for a plain component).
    pub version: String,
    /// The bundle path as given.
    pub bundle_path: String,
    /// `sha256:<hex>` of the bundle (empty if it could not be read).
    pub bundle_digest: String,
    /// Workflow, node or job; `None` for a bundle refused before loading.
    pub kind: Option<GuestKind>,
    /// The daemon job that started it, if any.
    pub job: Option<String>,
}

/// One run as `wfrun runs list/show` present it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// The workflow name.
    pub workflow: String,
    /// The workflow version.
    pub version: String,
    /// Workflow, node or job; `None` for a bundle refused before loading.
    pub kind: Option<GuestKind>,
    /// The bundle path as given.
    pub bundle_path: String,
    /// `sha256:<hex>` of the bundle.
    pub bundle_digest: String,
    /// The daemon job that started it, if any.
    pub job: Option<String>,
    /// The current status.
    pub status: RunStatus,
    /// Why it failed.
    pub error_code: Option<ErrorCode>,
    /// The finer reason under `error_code`, e.g. `signature_invalid`.
    pub error_detail: Option<String>,
    /// The explanation.
    pub error_message: Option<String>,
    /// The node that failed the run.
    pub failed_node: Option<String>,
    /// The run's output JSON text.
    pub output: Option<String>,
    /// A job's exit status.
    pub exit_code: Option<i32>,
    /// When the run was recorded (RFC 3339).
    pub created_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Wall time.
    pub duration_ms: Option<f64>,
    /// Fuel over all nodes.
    pub fuel_consumed: Option<u64>,
    /// Largest linear memory of any node.
    pub peak_memory_bytes: Option<u64>,
    /// Requests and connections the egress policy refused.
    pub policy_violations: Vec<PolicyViolation>,
    /// Every status change, oldest first: (status, time).
    pub transitions: Vec<(RunStatus, String)>,
    /// Node records, in the order they were recorded.
    pub nodes: Vec<NodeRecord>,
    /// The run this one was retried as, when it failed and the daemon
    /// tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_as: Option<String>,
    /// The files the run left in its `/outputs`, if it had one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<super::OutputFile>,
    /// What the guest recorded through the `metrics` import.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metrics: std::collections::BTreeMap<String, crate::outcome::Metric>,
}

impl Store {
    /// Records runs `ids`, triggered for daemon job `job` on `bundle_path`,
    /// as `pending`, in one write: durable before the trigger is
    /// acknowledged, so an id handed out always names a record. What is learnt on loading the
    /// bundle is filled in by [`Store::begin_run`] or
    /// [`Store::record_rejected`].
    pub fn accept_runs(&self, ids: &[String], job: &str, bundle_path: &str) -> Result<(), StoreError> {
        let at = now();
        let owner = owner_token();
        let pid = std::process::id();
        self.write(|tx| {
            // Many rows to a statement: a trigger's 100 runs cost two
            // statements rather than 200.
            for ids in ids.chunks(ACCEPT_CHUNK) {
                let shared: [&dyn rusqlite::ToSql; 5] = [&job, &bundle_path, &at, &pid, &owner];
                let values: Vec<&dyn rusqlite::ToSql> =
                    shared.into_iter().chain(ids.iter().map(|id| id as &dyn rusqlite::ToSql)).collect();
                tx.prepare_cached(&accept_sql(ids.len()))?.execute(&values[..])?;
                let values: Vec<&dyn rusqlite::ToSql> =
                    std::iter::once(&at as &dyn rusqlite::ToSql).chain(ids.iter().map(|id| id as _)).collect();
                tx.prepare_cached(&accept_transitions_sql(ids.len()))?.execute(&values[..])?;
            }
            Ok(())
        })
    }

    /// Records `retry` as `pending`, the retry of failed run `failed`, and
    /// links the two (`retried_as`), in one write.
    pub fn accept_retry(&self, failed: &str, retry: &str, job: &str, bundle_path: &str) -> Result<(), StoreError> {
        let at = now();
        let owner = owner_token();
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO runs (id, workflow, version, kind, bundle_path, bundle_digest, status, created_at,
                                   owner_pid, job, owner_boot)
                 VALUES (?1, ?2, '-', '-', ?3, '', 'pending', ?4, ?5, ?2, ?6)",
            )?
            .execute(params![retry, job, bundle_path, at, std::process::id(), owner])?;
            tx.prepare_cached("INSERT INTO run_transitions VALUES (?1, 0, 'pending', ?2)")?
                .execute(params![retry, at])?;
            tx.prepare_cached("UPDATE runs SET retried_as = ?2 WHERE id = ?1")?.execute(params![failed, retry])?;
            Ok(())
        })
    }

    /// Ends run `run_id` as `status` (with `code` and `message`) if it has
    /// not ended yet: for a run accepted but never started (its job was
    /// removed or paused while it waited, the daemon stopped), or one whose
    /// supervisor failed before recording its end. Returns whether it did.
    pub fn abandon_run(
        &self,
        run_id: &str,
        status: RunStatus,
        code: Option<ErrorCode>,
        message: &str,
    ) -> Result<bool, StoreError> {
        let at = now();
        let ids = self.write_run(|tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE runs SET status = ?2, error_code = ?3, error_message = ?4, finished_at = ?5
                 WHERE id = ?1 AND status IN ('pending', 'running')",
                )?
                .execute(params![run_id, status.as_str(), code.map(|c| c.as_str()), message, at])?;
            if changed == 0 {
                return Ok(Vec::new());
            }
            add_transition(tx, run_id, status, &at)?;
            Ok(vec![run_id.to_owned()])
        })?;
        Ok(!ids.is_empty())
    }

    /// Records a new run as `pending`, then `running` at `at` (completing
    /// the row [`Store::accept_runs`] made, if there is one).
    pub fn begin_run(&self, run: &NewRun, at: &str) -> Result<(), StoreError> {
        self.write(|tx| insert_run(tx, run, at))
    }

    /// Records how run `report.run_id` ended, its node records and, for a
    /// run that succeeded, its state writes to `workflow`: all in one
    /// transaction.
    ///
    /// `reads` holds each key the run read from the store with the value it
    /// saw. A run that succeeded commits only if every one is unchanged
    /// (checked in the same write transaction); otherwise nothing is
    /// written and [`StoreError::StateConflict`] says which key moved.
    ///
    /// `unbegun` is the run and the time it started, for a run whose start
    /// [`Store::begin_run`] has not recorded: its start is written with its
    /// end. `logs` are node logs small enough to keep in the database
    /// ([`INLINE_LOG_MAX`]), as (node, text).
    pub fn finish_run(&self, end: &RunEnd) -> Result<(), StoreError> {
        self.finish_runs(std::slice::from_ref(end)).remove(0)
    }

    /// Compiles the statements that record a run's end, and reads this
    /// process's owner token, ahead of the first end: for a process that
    /// records one run (`wfrun exec`), on another thread while its run goes
    /// on (two tenths of a millisecond of SQL parsing and a
    /// `/proc/self/stat` read taken off the end of the run). Holds the
    /// connection meanwhile; a failure here is met again at the real write.
    pub fn prepare_run_end(&self) {
        let _ = owner_token();
        let writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for sql in [
            COMPLETE_PENDING,
            INSERT_FINISHED,
            INSERT_PENDING_TRANSITION,
            INSERT_TRANSITION,
            INSERT_NODE_RECORD,
            INSERT_LOG,
        ] {
            let _ = writer.conn.prepare_cached(sql);
        }
    }

    /// [`Store::finish_run`] for several runs at once, sharing commits:
    /// each one's result, in order. One run's failure (a state conflict)
    /// leaves the others' records whole.
    pub fn finish_runs(&self, ends: &[RunEnd]) -> Vec<Result<(), StoreError>> {
        let at = now();
        let reporter = self.reporter();
        let conflicts: Vec<std::cell::RefCell<Option<String>>> = ends.iter().map(|_| Default::default()).collect();
        let writes: Vec<_> = ends
            .iter()
            .zip(&conflicts)
            .map(|(end, conflict)| {
                let at = at.as_str();
                move |tx: &Connection| {
                    // Set anew each time: the write may be tried twice.
                    conflict.replace(None);
                    finish_in(tx, end, at, conflict)?;
                    // With reporting on, the run's report is queued in the
                    // same write, and the write is durable. (Release events
                    // get theirs in the writes that record them.)
                    if let Some(reporter) = reporter {
                        reporter.enqueue_run(tx, &end.report.run_id)?;
                    }
                    Ok(())
                }
            })
            .collect();
        let results = self.grouped_batch(reporter.is_some(), writes);
        results
            .into_iter()
            .zip(ends.iter().zip(conflicts))
            .map(|(result, (end, conflict))| match conflict.into_inner() {
                Some(key) => Err(StoreError::StateConflict { workflow: end.workflow.clone(), key }),
                None => result,
            })
            .collect()
    }

    /// [`Store::finish_run`] by this store's run-end writer, a thread of
    /// its own (started with the first call) that takes the run ends
    /// waiting and records them together ([`Store::finish_runs`]): the
    /// ends of many runs share a commit, and the tasks waiting for it hold
    /// no thread. Gives `end` back with the result once it is committed.
    pub async fn finish_run_shared(self: &Arc<Self>, end: RunEnd) -> (RunEnd, Result<(), StoreError>) {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let queue = self.end_writer.get_or_init(|| {
            let (queue, ends) = std::sync::mpsc::channel();
            let store = Arc::downgrade(self);
            let started =
                std::thread::Builder::new().name("wfrun-records".into()).spawn(move || end_writer(&store, &ends));
            started.ok().map(|_| std::sync::Mutex::new(queue))
        });
        let sent = match queue {
            Some(queue) => queue.lock().unwrap_or_else(|p| p.into_inner()).send((end, answer)).map_err(|e| e.0),
            None => Err((end, answer)),
        };
        match sent {
            Ok(()) => match answered.await {
                Ok(done) => done,
                // Only a panic on the writer's thread drops an answer: the
                // run's guard records it as a host error.
                Err(_) => panic!("the run-end writer stopped before answering"),
            },
            // No writer thread: record it here.
            Err((end, _)) => {
                let result = self.finish_run(&end);
                (end, result)
            }
        }
    }

    /// Records a run that was refused before its guest started (a bundle
    /// that does not read, verify, load or pass the policy; unusable input):
    /// begun and finished in one transaction.
    pub fn record_rejected(&self, run: &NewRun, report: &RunReport) -> Result<(), StoreError> {
        let at = now();
        self.write_run(|tx| {
            insert_finished(tx, run, &at, report, &at)?;
            Ok(vec![run.id.clone()])
        })?;
        Ok(())
    }

    /// Marks every run left `pending` or `running` by a process that is gone (a crash, a
    /// kill -9, a reboot) as `interrupted` (error code `interrupted`). Runs
    /// of processes still alive in this boot (another `wfrun exec`) are left
    /// alone. Returns the ids.
    pub fn recover_interrupted(&self) -> Result<Vec<String>, StoreError> {
        let at = now();
        self.write_run(|tx| {
            let mut stmt =
                tx.prepare("SELECT id, owner_pid, owner_boot FROM runs WHERE status IN ('pending', 'running')")?;
            let running: Vec<(String, Option<u32>, Option<String>)> =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
            drop(stmt);
            let boot = boot_id();
            let mut recovered = Vec::new();
            for (id, pid, owner) in running {
                // `owner_boot` is `BOOT_ID/START_TIME`: a process id from
                // before a reboot, or reused since by another process (its
                // start time differs), is not the run's owner.
                let (owner_boot, started) = match owner.as_deref().map(|o| o.split_once('/')) {
                    Some(Some((boot, started))) => (Some(boot.to_owned()), started.parse::<u64>().ok()),
                    _ => (owner.clone(), None),
                };
                let same_boot = owner_boot.is_none() || owner_boot == boot;
                let alive = |pid: u32| match started {
                    Some(started) => process_start_time(pid) == Some(started),
                    None => process_alive(pid),
                };
                if same_boot && pid.is_some_and(|pid| pid != std::process::id() && alive(pid)) {
                    continue;
                }
                tx.prepare_cached(
                    "UPDATE runs SET status = 'interrupted', error_code = 'interrupted', finished_at = ?2,
                     error_message = 'wfrun stopped before the run finished (a crash, a kill or a power loss)'
                     WHERE id = ?1",
                )?
                .execute(params![id, at])?;
                add_transition(tx, &id, RunStatus::Interrupted, &at)?;
                recovered.push(id);
            }
            Ok(recovered)
        })
    }

    /// Writes finished runs: `f` returns their ids. With reporting on, each
    /// gets its report in the same transaction, committed durably.
    fn write_run(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<Vec<String>>,
    ) -> Result<Vec<String>, StoreError> {
        match self.reporter() {
            None => self.write(f),
            Some(reporter) => self.write_durably(|tx| {
                let ids = f(tx)?;
                for id in &ids {
                    reporter.enqueue_run(tx, id)?;
                }
                Ok(ids)
            }),
        }
    }

    /// Runs, newest first, optionally only those in `status`.
    pub fn list_runs(&self, status: Option<RunStatus>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare("SELECT id FROM runs WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT ?2")?;
            let ids: Vec<String> = stmt
                .query_map(params![status.map(|s| s.as_str()), limit as i64], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            drop(stmt);
            let mut runs = Vec::with_capacity(ids.len());
            for id in ids {
                runs.extend(load_run(conn, &id)?);
            }
            Ok(runs)
        })
    }

    /// One run with its transitions, node records and outputs.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let mut run = self.read(|conn| load_run(conn, run_id))?;
        // Only an ended run's: a running guest may still be changing them
        // (swapping a directory for a link while it is walked).
        if let Some(run) = &mut run
            && !matches!(run.status, RunStatus::Pending | RunStatus::Running)
        {
            run.outputs = self.outputs(run_id);
        }
        Ok(run)
    }

    /// Run `run_id`'s logs kept in the database, as (node, text), by node.
    pub fn inline_logs(&self, run_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT node, text FROM run_logs WHERE run_id = ?1 ORDER BY node")?;
            stmt.query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
    }

    /// Run `run_id`'s logs, as (node, text) by node: the small ones from
    /// the database, the large ones from their files.
    pub fn logs(&self, run_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut logs = self.inline_logs(run_id)?;
        let dir = self.log_dir(run_id);
        let mut files: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        for file in files {
            let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = std::fs::read(&file).map_err(|e| StoreError::Dir { path: file.clone(), source: e })?;
            logs.push((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
        logs.sort();
        Ok(logs)
    }

    /// The directory holding run `run_id`'s log files (logs larger than
    /// [`INLINE_LOG_MAX`]).
    pub fn log_dir(&self, run_id: &str) -> PathBuf {
        self.dir.join("logs").join(run_id)
    }
}

// The statements that record a run's end (`finish_in`), by name so that
// `Store::prepare_run_end` can compile them ahead.
const INSERT_RUN: &str =
    "INSERT INTO runs (id, workflow, version, kind, bundle_path, bundle_digest, status, created_at,
                          owner_pid, job, owner_boot)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?8, ?9, ?10)
     ON CONFLICT (id) DO UPDATE SET workflow = excluded.workflow, version = excluded.version,
         kind = excluded.kind, bundle_path = excluded.bundle_path, bundle_digest = excluded.bundle_digest,
         status = 'running', owner_pid = excluded.owner_pid, job = excluded.job,
         owner_boot = excluded.owner_boot
     WHERE runs.status = 'pending'";
const INSERT_PENDING_TRANSITION: &str = "INSERT OR IGNORE INTO run_transitions VALUES (?1, 0, 'pending', ?2)";
const ADD_TRANSITION: &str = "INSERT INTO run_transitions
     SELECT ?1, COALESCE(MAX(seq), -1) + 1, ?2, ?3 FROM run_transitions WHERE run_id = ?1";
const UPDATE_FINISHED: &str = "UPDATE runs SET status = ?2, error_code = ?3, error_message = ?4, failed_node = ?5,
     output = ?6, exit_code = ?7, finished_at = ?8, duration_ms = ?9, fuel_consumed = ?10, peak_memory_bytes = ?11,
     policy_violations = ?12, error_detail = ?13, metrics = ?14
     WHERE id = ?1";
/// A run's start and end in one statement: a new row, or the `pending`
/// row [`Store::accept_runs`] made (keeping its creation time). A row in
/// any other state is left alone.
const INSERT_FINISHED: &str = "INSERT INTO runs (id, status, error_code, error_message, failed_node, output, exit_code,
         finished_at, duration_ms, fuel_consumed, peak_memory_bytes, policy_violations, error_detail, metrics,
         workflow, version, kind, bundle_path, bundle_digest, owner_pid, job, owner_boot, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)
     ON CONFLICT (id) DO UPDATE SET status = excluded.status, error_code = excluded.error_code,
         error_message = excluded.error_message, failed_node = excluded.failed_node, output = excluded.output,
         exit_code = excluded.exit_code, finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
         fuel_consumed = excluded.fuel_consumed, peak_memory_bytes = excluded.peak_memory_bytes,
         policy_violations = excluded.policy_violations, error_detail = excluded.error_detail,
         metrics = excluded.metrics, workflow = excluded.workflow, version = excluded.version, kind = excluded.kind,
         bundle_path = excluded.bundle_path, bundle_digest = excluded.bundle_digest, owner_pid = excluded.owner_pid,
         job = excluded.job, owner_boot = excluded.owner_boot
     WHERE runs.status = 'pending'";
/// [`INSERT_FINISHED`] for a run whose `pending` row exists: the same
/// columns set, `?1` to `?22` (not its creation time, `?23`).
const COMPLETE_PENDING: &str = "UPDATE runs SET status = ?2, error_code = ?3, error_message = ?4, failed_node = ?5,
     output = ?6, exit_code = ?7, finished_at = ?8, duration_ms = ?9, fuel_consumed = ?10, peak_memory_bytes = ?11,
     policy_violations = ?12, error_detail = ?13, metrics = ?14, workflow = ?15, version = ?16, kind = ?17,
     bundle_path = ?18, bundle_digest = ?19, owner_pid = ?20, job = ?21, owner_boot = ?22
     WHERE id = ?1 AND status = 'pending'";
/// The most runs [`Store::accept_runs`] writes with one statement.
const ACCEPT_CHUNK: usize = 100;

/// The statement that records `n` runs `pending`: `?1` the job, `?2` the
/// bundle path, `?3` the time, `?4` the process, `?5` its owner token, then
/// the `n` ids.
fn accept_sql(n: usize) -> String {
    let rows: Vec<String> =
        (0..n).map(|i| format!("(?{}, ?1, '-', '-', ?2, '', 'pending', ?3, ?4, ?1, ?5)", i + 6)).collect();
    format!(
        "INSERT INTO runs (id, workflow, version, kind, bundle_path, bundle_digest, status, created_at,
                           owner_pid, job, owner_boot) VALUES {}",
        rows.join(", ")
    )
}

/// The statement that records the `pending` transitions of `n` runs: `?1`
/// the time, then the `n` ids.
fn accept_transitions_sql(n: usize) -> String {
    let rows: Vec<String> = (0..n).map(|i| format!("(?{}, 0, 'pending', ?1)", i + 2)).collect();
    format!("INSERT INTO run_transitions VALUES {}", rows.join(", "))
}

/// One transition of a run whose other transitions are known: `?1` the run,
/// `?2` its place, `?3` the status, `?4` the time. One row to a statement:
/// a statement that writes several rows inside the batch's transaction
/// keeps a journal of its own of every page it changes, so that it can be
/// undone alone (a twelfth of the run-end writer's time, when a run's
/// `running` and end went in together).
const INSERT_TRANSITION: &str = "INSERT INTO run_transitions VALUES (?1, ?2, ?3, ?4)";
const INSERT_NODE_RECORD: &str = "INSERT INTO node_runs VALUES (?1, ?2, ?3, ?4)";
const INSERT_LOG: &str = "INSERT OR REPLACE INTO run_logs VALUES (?1, ?2, ?3)";

/// Inserts run `run` as `running`, or completes the `pending` row
/// [`Store::accept_runs`] made for it (keeping its creation time and its
/// `pending` transition). A row in any other state is an error.
fn insert_run(tx: &Connection, run: &NewRun, at: &str) -> rusqlite::Result<()> {
    let written = tx.prepare_cached(INSERT_RUN)?.execute(params![
        run.id,
        run.workflow,
        run.version,
        run.kind.map_or("-", GuestKind::as_str),
        run.bundle_path,
        run.bundle_digest,
        at,
        std::process::id(),
        run.job,
        owner_token()
    ])?;
    if written == 0 {
        return Err(rusqlite::Error::StatementChangedRows(0));
    }
    tx.prepare_cached(INSERT_PENDING_TRANSITION)?.execute(params![run.id, at])?;
    add_transition(tx, &run.id, RunStatus::Running, at)
}

/// The values of a run's end, `?1` to `?14` of [`UPDATE_FINISHED`] and
/// [`INSERT_FINISHED`].
struct EndValues<'a> {
    report: &'a RunReport,
    at: &'a str,
    status: &'static str,
    error_code: Option<&'static str>,
    output: Option<&'a str>,
    fuel_consumed: i64,
    peak_memory_bytes: i64,
    policy_violations: Option<String>,
    metrics: Option<String>,
}

impl<'a> EndValues<'a> {
    fn of(report: &'a RunReport, at: &'a str) -> Self {
        EndValues {
            report,
            at,
            status: report.status.as_str(),
            error_code: report.error_code.map(|c| c.as_str()),
            output: report.output.as_ref().map(|o| o.get()),
            fuel_consumed: report.fuel_consumed as i64,
            peak_memory_bytes: report.peak_memory_bytes as i64,
            policy_violations: (!report.policy_violations.is_empty())
                .then(|| serde_json::to_string(&report.policy_violations).expect("violations serialise")),
            metrics: (!report.metrics.is_empty())
                .then(|| serde_json::to_string(&report.metrics).expect("metrics serialise")),
        }
    }

    fn params(&self) -> [&dyn rusqlite::ToSql; 14] {
        let report = self.report;
        [
            &report.run_id,
            &self.status,
            &self.error_code,
            &report.error_message,
            &report.failed_node,
            &self.output,
            &report.exit_code,
            &self.at,
            &report.duration_ms,
            &self.fuel_consumed,
            &self.peak_memory_bytes,
            &self.policy_violations,
            &report.error_detail,
            &self.metrics,
        ]
    }
}

/// Records the end of a run whose start is recorded (`running`).
fn update_finished(tx: &Connection, report: &RunReport, at: &str) -> rusqlite::Result<()> {
    let values = EndValues::of(report, at);
    tx.prepare_cached(UPDATE_FINISHED)?.execute(&values.params()[..])?;
    add_transition(tx, &report.run_id, report.status, at)?;
    after_finished(tx, report, at, None)
}

/// Records run `run`, started at `started`, and its end at `at` at once:
/// as a new row, or completing its `pending` row. A row in any other state
/// is an error.
fn insert_finished(tx: &Connection, run: &NewRun, started: &str, report: &RunReport, at: &str) -> rusqlite::Result<()> {
    let values = EndValues::of(report, at);
    let end = values.params();
    let kind = run.kind.map_or("-", GuestKind::as_str);
    let (pid, owner) = (std::process::id(), owner_token());
    let start: [&dyn rusqlite::ToSql; 9] =
        [&run.workflow, &run.version, &kind, &run.bundle_path, &run.bundle_digest, &pid, &run.job, &owner, &started];
    let all: Vec<&dyn rusqlite::ToSql> = end.iter().chain(start.iter()).copied().collect();
    // The `pending` row of a run the daemon accepted is completed in place
    // (without the upsert's first try at an insert); any other run is
    // inserted, or refused if its row is in another state.
    let completed = tx.prepare_cached(COMPLETE_PENDING)?.execute(&all[..22])? == 1;
    if !completed && tx.prepare_cached(INSERT_FINISHED)?.execute(&all[..])? == 0 {
        return Err(rusqlite::Error::StatementChangedRows(0));
    }
    // Its transitions: `pending` (a completed row has it already),
    // `running` and its end.
    if !completed {
        tx.prepare_cached(INSERT_PENDING_TRANSITION)?.execute(params![report.run_id, started])?;
    }
    let mut transition = tx.prepare_cached(INSERT_TRANSITION)?;
    transition.execute(params![report.run_id, 1, RunStatus::Running.as_str(), started])?;
    transition.execute(params![report.run_id, 2, values.status, at])?;
    drop(transition);
    after_finished(tx, report, at, Some(run.job.as_deref()))
}

/// What every run's end writes besides its row: its job's last run, and
/// its node records. `job`: the run's job (`Some(None)` for a run of no
/// job), if known; else it is read from the run's row.
fn after_finished(tx: &Connection, report: &RunReport, at: &str, job: Option<Option<&str>>) -> rusqlite::Result<()> {
    let run_id = &report.run_id;
    super::jobs::note_run(tx, run_id, job, report.status, report.error_code, at)?;
    for (seq, node) in report.nodes.iter().enumerate() {
        let record = serde_json::to_string(node).expect("node records serialise");
        tx.prepare_cached(INSERT_NODE_RECORD)?.execute(params![run_id, seq as i64, node.node, record])?;
    }
    Ok(())
}

fn add_transition(tx: &Connection, run_id: &str, status: RunStatus, at: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(ADD_TRANSITION)?.execute(params![run_id, status.as_str(), at])?;
    Ok(())
}

/// A stored text that must be one of a type's values; anything else is a
/// corrupt row, reported as such rather than guessed at.
fn parsed<T>(column: usize, text: String, parse: impl Fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("unknown stored value {text:?}").into(),
        )
    })
}

pub(super) fn load_run(conn: &Connection, run_id: &str) -> rusqlite::Result<Option<RunRecord>> {
    let run = conn
        .query_row(
            "SELECT id, workflow, version, kind, bundle_path, bundle_digest, status, error_code, error_message,
                    failed_node, output, exit_code, created_at, finished_at, duration_ms, fuel_consumed, peak_memory_bytes,
                    policy_violations, job, error_detail, retried_as, metrics
             FROM runs WHERE id = ?1",
            params![run_id],
            |r| {
                Ok(RunRecord {
                    run_id: r.get(0)?,
                    workflow: r.get(1)?,
                    version: r.get(2)?,
                    kind: GuestKind::parse(&r.get::<_, String>(3)?),
                    bundle_path: r.get(4)?,
                    bundle_digest: r.get(5)?,
                    status: parsed(6, r.get(6)?, RunStatus::parse)?,
                    error_code: r.get::<_, Option<String>>(7)?.map(|c| parsed(7, c, ErrorCode::parse)).transpose()?,
                    error_message: r.get(8)?,
                    failed_node: r.get(9)?,
                    output: r.get(10)?,
                    exit_code: r.get(11)?,
                    created_at: r.get(12)?,
                    finished_at: r.get(13)?,
                    duration_ms: r.get(14)?,
                    fuel_consumed: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
                    peak_memory_bytes: r.get::<_, Option<i64>>(16)?.map(|v| v as u64),
                    policy_violations: r
                        .get::<_, Option<String>>(17)?
                        .and_then(|text| serde_json::from_str(&text).ok())
                        .unwrap_or_default(),
                    job: r.get(18)?,
                    error_detail: r.get(19)?,
                    retried_as: r.get(20)?,
                    outputs: Vec::new(),
                    metrics: r
                        .get::<_, Option<String>>(21)?
                        .and_then(|text| serde_json::from_str(&text).ok())
                        .unwrap_or_default(),
                    transitions: Vec::new(),
                    nodes: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut run) = run else { return Ok(None) };
    let mut stmt = conn.prepare("SELECT status, at FROM run_transitions WHERE run_id = ?1 ORDER BY seq")?;
    run.transitions = stmt
        .query_map(params![run_id], |r| Ok((parsed(0, r.get(0)?, RunStatus::parse)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare("SELECT record FROM node_runs WHERE run_id = ?1 ORDER BY seq")?;
    let records: Vec<String> = stmt.query_map(params![run_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
    run.nodes = records.iter().filter_map(|text| serde_json::from_str(text).ok()).collect();
    Ok(Some(run))
}

/// This boot of the machine (Linux: `/proc/sys/kernel/random/boot_id`), so
/// that a process id recorded before a reboot is not taken for a live one.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|id| id.trim().to_owned())
}

/// This process as a run's owner: `BOOT_ID/START_TIME`. Read once: neither
/// changes while the process lives, and every run's record carries it.
fn owner_token() -> Option<&'static str> {
    static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let boot = boot_id()?;
            Some(match process_start_time(std::process::id()) {
                Some(started) => format!("{boot}/{started}"),
                None => boot,
            })
        })
        .as_deref()
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), if it exists.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // after its closing one (field 3, the state, is the first there).
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` exists (Linux: `/proc/<pid>`). Elsewhere every
/// process counts as gone, which at worst marks a live `exec` run interrupted.
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::JobSpec;
    use crate::store::{JobSource, StateWrites};

    fn end(id: &str, status: RunStatus, unbegun: Option<(NewRun, String)>) -> RunEnd {
        RunEnd {
            workflow: "tick".into(),
            report: RunReport {
                run_id: id.into(),
                status,
                error_code: (status == RunStatus::Failed).then_some(ErrorCode::Trap),
                exit_code: Some(3),
                fuel_consumed: 42,
                ..RunReport::rejected(ErrorCode::Trap, "trapped")
            },
            state: StateWrites::new(),
            reads: StateWrites::new(),
            unbegun,
            logs: Vec::new(),
        }
    }

    fn new_run(id: &str, job: Option<&str>) -> NewRun {
        NewRun {
            id: id.into(),
            workflow: "tick".into(),
            version: "-".into(),
            bundle_path: "tick.wasm".into(),
            bundle_digest: "sha256:ab".into(),
            kind: Some(GuestKind::Job),
            job: job.map(str::to_owned),
        }
    }

    #[test]
    fn a_short_run_is_recorded_start_and_end_in_one_write_without_overwriting_a_run_that_already_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_job("tick", &JobSpec::manual("tick.wasm"), JobSource::Config).unwrap();
        let ids = ["accepted".to_owned(), "abandoned".to_owned()];
        store.accept_runs(&ids, "tick", "tick.wasm").unwrap();
        let accepted_at = store.run("accepted").unwrap().unwrap().created_at;
        let started = "2999-01-01T00:00:00.000Z".to_owned();

        // A run the daemon accepted: its `pending` row is completed.
        let run = new_run("accepted", Some("tick"));
        store.finish_run(&end("accepted", RunStatus::Failed, Some((run, started.clone())))).unwrap();
        let record = store.run("accepted").unwrap().unwrap();
        assert_eq!(record.status, RunStatus::Failed);
        assert_eq!(
            (record.error_code, record.exit_code, record.fuel_consumed),
            (Some(ErrorCode::Trap), Some(3), Some(42))
        );
        assert_eq!((record.kind, record.bundle_digest.as_str()), (Some(GuestKind::Job), "sha256:ab"));
        assert_eq!(record.created_at, accepted_at, "the row keeps the time it was accepted");
        let finished = record.finished_at.clone().unwrap();
        assert_eq!(
            record.transitions,
            [(RunStatus::Pending, accepted_at), (RunStatus::Running, started.clone()), (RunStatus::Failed, finished)]
        );
        let job = store.job("tick").unwrap().unwrap();
        assert_eq!((job.last_run_id.as_deref(), job.last_status), (Some("accepted"), Some(RunStatus::Failed)));
        assert_eq!(job.consecutive_failures, 1);

        // A run that was never accepted (`wfrun exec`): a new row.
        store.finish_run(&end("new", RunStatus::Succeeded, Some((new_run("new", None), started.clone())))).unwrap();
        let record = store.run("new").unwrap().unwrap();
        assert_eq!((record.status, record.created_at.as_str()), (RunStatus::Succeeded, started.as_str()));
        let states: Vec<RunStatus> = record.transitions.iter().map(|t| t.0).collect();
        assert_eq!(states, [RunStatus::Pending, RunStatus::Running, RunStatus::Succeeded]);

        // A run ended meanwhile (cancelled while it waited) keeps its end:
        // the late record fails and writes nothing.
        assert!(store.abandon_run("abandoned", RunStatus::Cancelled, None, "cancelled").unwrap());
        let late = end("abandoned", RunStatus::Succeeded, Some((new_run("abandoned", Some("tick")), started)));
        assert!(store.finish_run(&late).is_err());
        let record = store.run("abandoned").unwrap().unwrap();
        assert_eq!(record.status, RunStatus::Cancelled);
        let states: Vec<RunStatus> = record.transitions.iter().map(|t| t.0).collect();
        assert_eq!(states, [RunStatus::Pending, RunStatus::Cancelled]);
        let job = store.job("tick").unwrap().unwrap();
        assert_eq!(job.last_run_id.as_deref(), Some("accepted"), "the failed record did not count");
    }

    #[test]
    fn a_trigger_of_many_runs_records_every_one_pending_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_job("tick", &JobSpec::manual("tick.wasm"), JobSource::Config).unwrap();
        // More than two statements' worth, and not a multiple of one.
        let ids: Vec<String> = (0..ACCEPT_CHUNK * 2 + 7).map(|i| format!("run-{i:04}")).collect();
        store.accept_runs(&ids, "tick", "tick.wasm").unwrap();
        let first = store.run(&ids[0]).unwrap().unwrap();
        for id in &ids {
            let record = store.run(id).unwrap().unwrap();
            assert_eq!((record.status, record.job.as_deref()), (RunStatus::Pending, Some("tick")), "{id}");
            assert_eq!(record.bundle_path, "tick.wasm");
            assert_eq!(record.transitions, [(RunStatus::Pending, first.created_at.clone())], "{id}");
        }

        // One id already taken: the trigger records none of its runs.
        let clash: Vec<String> = ["fresh-1", "run-0150", "fresh-2"].map(str::to_owned).to_vec();
        assert!(store.accept_runs(&clash, "tick", "tick.wasm").is_err());
        assert!(store.run("fresh-1").unwrap().is_none());
        assert!(store.run("fresh-2").unwrap().is_none());
        assert_eq!(store.run("run-0150").unwrap().unwrap().status, RunStatus::Pending);
    }
}
