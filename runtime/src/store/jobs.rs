//! The daemon's jobs: each one's definition and its run state.
//!
//! A job's [`JobSpec`] is stored as JSON and parsed once, when read: the
//! daemon keeps the typed records in memory and writes each change through.
//! A row whose definition no longer parses is skipped with an error logged,
//! never a failure of every job.

use super::{Store, StoreError, now};
use crate::manifest::JobSpec;
use crate::outcome::RunStatus;
use rusqlite::params;
use serde::{Deserialize, Serialize};

/// Where a job came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSource {
    /// Declared in the config file (`[jobs.NAME]`); removed when the file
    /// no longer declares it.
    Config,
    /// Added at run time (`wfrun jobs add`).
    Cli,
    /// From the active release; replaced when another release activates.
    Release,
}

impl JobSource {
    fn as_str(self) -> &'static str {
        match self {
            JobSource::Config => "config",
            JobSource::Cli => "cli",
            JobSource::Release => "release",
        }
    }
}

/// A job as stored: its definition and its run state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's name.
    pub name: String,
    /// The definition.
    pub spec: JobSpec,
    /// The config file or the CLI.
    pub source: JobSource,
    /// Whether triggers are held.
    pub paused: bool,
    /// Why, when the daemon paused it.
    pub paused_reason: Option<String>,
    /// Failed runs since the last success.
    pub consecutive_failures: u32,
    /// When its last run ended.
    pub last_run_at: Option<String>,
    /// Its last run.
    pub last_run_id: Option<String>,
    /// How its last run ended.
    pub last_status: Option<RunStatus>,
    /// When it was first stored.
    pub created_at: String,
}

impl Store {
    /// Stores (or replaces) job `name`'s definition, keeping its run state.
    pub fn put_job(&self, name: &str, spec: &JobSpec, source: JobSource) -> Result<(), StoreError> {
        let at = now();
        let text = serde_json::to_string(spec).expect("job specs serialise");
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO jobs (name, spec, source, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, source = excluded.source",
            )?
            .execute(params![name, text, source.as_str(), at])?;
            Ok(())
        })
    }

    /// Removes job `name`; false if there was none.
    pub fn remove_job(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.prepare_cached("DELETE FROM jobs WHERE name = ?1")?.execute(params![name])? > 0))
    }

    /// Pauses (with a reason) or resumes job `name`; false if there is none.
    /// Resuming clears the failure count.
    pub fn set_job_paused(&self, name: &str, paused: bool, reason: Option<&str>) -> Result<bool, StoreError> {
        self.write(|tx| {
            let changed = if paused {
                tx.prepare_cached("UPDATE jobs SET paused = 1, paused_reason = ?2 WHERE name = ?1")?
                    .execute(params![name, reason])?
            } else {
                tx.prepare_cached(
                    "UPDATE jobs SET paused = 0, paused_reason = NULL, consecutive_failures = 0 WHERE name = ?1",
                )?
                .execute(params![name])?
            };
            Ok(changed > 0)
        })
    }

    /// Every job, by name. Rows that no longer parse are skipped (and logged).
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, spec, source, paused, paused_reason, consecutive_failures, last_run_at, last_run_id,
                        last_status, created_at FROM jobs ORDER BY name",
            )?;
            stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)? != 0,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, String>(9)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()
        })?;
        let mut jobs = Vec::with_capacity(rows.len());
        for (name, spec, source, paused, paused_reason, failures, last_run_at, last_run_id, last_status, created_at) in
            rows
        {
            let spec = match serde_json::from_str::<JobSpec>(&spec) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!("job {name}: the stored definition does not parse ({e}); skipped");
                    continue;
                }
            };
            jobs.push(JobRecord {
                name,
                spec,
                source: match source.as_str() {
                    "config" => JobSource::Config,
                    "release" => JobSource::Release,
                    _ => JobSource::Cli,
                },
                paused,
                paused_reason,
                consecutive_failures: failures,
                last_run_at,
                last_run_id,
                last_status: last_status.as_deref().and_then(RunStatus::parse),
                created_at,
            });
        }
        Ok(jobs)
    }

    /// Job `name`, if there is one.
    pub fn job(&self, name: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.jobs()?.into_iter().find(|j| j.name == name))
    }
}

/// A job's consecutive failures after one of its runs ended `status` with
/// `code`: a success clears them, a failure adds one, anything else leaves
/// them. A host error is not the job's failure: it never counts. (The
/// daemon keeps the count in memory by this rule; `note_run` keeps the
/// job's row by the same.)
pub fn failures_after(failures: u32, status: RunStatus, code: Option<crate::outcome::ErrorCode>) -> u32 {
    match status {
        RunStatus::Succeeded => 0,
        RunStatus::Failed if code != Some(crate::outcome::ErrorCode::HostError) => failures.saturating_add(1),
        _ => failures,
    }
}

/// Notes, in the write that records run `run_id`'s end, how it ended on
/// the row of the job it belongs to (none for a run of `wfrun exec`), as
/// [`failures_after`] counts. `job`: the run's job if the caller knows it
/// (`Some(None)`: it has none), else it is read from the run's row.
pub(super) fn note_run(
    tx: &rusqlite::Connection,
    run_id: &str,
    job: Option<Option<&str>>,
    status: RunStatus,
    code: Option<crate::outcome::ErrorCode>,
    at: &str,
) -> rusqlite::Result<()> {
    let counts = code != Some(crate::outcome::ErrorCode::HostError);
    match job {
        Some(None) => {}
        Some(Some(job)) => {
            tx.prepare_cached(NOTE_RUN_OF_JOB)?.execute(params![run_id, at, status.as_str(), counts, job])?;
        }
        None => {
            tx.prepare_cached(NOTE_RUN_OF_ROW)?.execute(params![run_id, at, status.as_str(), counts])?;
        }
    }
    Ok(())
}

/// [`note_run`]'s statement, for the job named by `$job`.
macro_rules! note_run_sql {
    ($job:literal) => {
        concat!(
            "UPDATE jobs SET last_run_at = ?2, last_run_id = ?1, last_status = ?3,
             consecutive_failures = CASE WHEN ?3 = 'succeeded' THEN 0
                                         WHEN ?3 = 'failed' AND ?4 THEN consecutive_failures + 1
                                         ELSE consecutive_failures END
             WHERE name = ",
            $job
        )
    };
}

/// [`note_run`]'s statement for a job named by the caller (`?5`).
const NOTE_RUN_OF_JOB: &str = note_run_sql!("?5");
/// [`note_run`]'s statement for the job named on the run's row.
const NOTE_RUN_OF_ROW: &str = note_run_sql!("(SELECT job FROM runs WHERE id = ?1)");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{ErrorCode, RunReport};
    use crate::store::NewRun;

    #[test]
    fn a_runs_end_counts_toward_its_jobs_pausing_but_the_hosts_own_errors_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_job("tick", &JobSpec::manual("x.wasm"), JobSource::Config).unwrap();
        let mut counted = 0;
        let ends = [
            (RunStatus::Failed, Some(ErrorCode::Trap), 1),
            (RunStatus::Failed, Some(ErrorCode::InvalidBundle), 2),
            (RunStatus::Failed, Some(ErrorCode::HostError), 2),
            (RunStatus::Cancelled, None, 2),
            (RunStatus::Succeeded, None, 0),
        ];
        let run = |id: &str, job: Option<&str>| NewRun {
            id: id.to_owned(),
            workflow: "tick".into(),
            version: "-".into(),
            bundle_path: "x.wasm".into(),
            bundle_digest: String::new(),
            kind: None,
            job: job.map(str::to_owned),
        };
        for (i, (status, code, expected)) in ends.into_iter().enumerate() {
            let run = run(&format!("run-{i}"), Some("tick"));
            let report = RunReport {
                run_id: run.id.clone(),
                status,
                error_code: code,
                ..RunReport::rejected(ErrorCode::Trap, String::new())
            };
            store.record_rejected(&run, &report).unwrap();
            counted = failures_after(counted, status, code);
            let job = store.job("tick").unwrap().unwrap();
            assert_eq!((job.consecutive_failures, counted), (expected, expected), "after {status:?} {code:?}");
            assert_eq!((job.last_run_id.as_deref(), job.last_status), (Some(run.id.as_str()), Some(status)));
        }
        // A run of no job (`wfrun exec`) touches no job.
        let run = run("exec", None);
        let report = RunReport { run_id: run.id.clone(), ..RunReport::rejected(ErrorCode::Trap, String::new()) };
        store.record_rejected(&run, &report).unwrap();
        assert_eq!(store.job("tick").unwrap().unwrap().last_run_id.as_deref(), Some("run-4"));
    }
}
