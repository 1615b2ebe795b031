//! SQLite: run history and durable workflow state, under the state directory.
//!
//! [`Store`] owns one connection to `<state-dir>/wfrun.db` (WAL journal,
//! busy timeout), so several `wfrun` processes can record runs at once without
//! losing or corrupting each other's rows. Tables: `runs` (one row per run),
//! `run_transitions` (every status change with its time), `node_runs` (one
//! row per node, with its execution trace as JSON) and `state` (key-value
//! pairs scoped to a workflow). Per-run log files live beside the database
//! in `logs/<run-id>/<node>.log`. [`state_dir`] resolves where that is.

use crate::files::create_private_dir;
use crate::outcome::{NodeRecord, PolicyViolation, RunReport, RunStatus};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created or written.
    #[error("state directory {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("run database {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

/// Resolves the state directory: `flag` if given, else `WFRUN_DIR`, else
/// `$XDG_STATE_HOME/wfrun`, else `$HOME/.local/state/wfrun`, else `.wfrun`.
pub fn state_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env("WFRUN_DIR") {
        return dir;
    }
    if let Some(dir) = env("XDG_STATE_HOME") {
        return dir.join("wfrun");
    }
    if let Some(home) = env("HOME") {
        return home.join(".local").join("state").join("wfrun");
    }
    PathBuf::from(".wfrun")
}

/// The life of a run: `pending` → `running` → `succeeded` | `failed` | `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Recorded, not started.
    Pending,
    /// Started.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error code.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl RunState {
    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored or user-given state.
    pub fn parse(text: &str) -> Option<RunState> {
        [RunState::Pending, RunState::Running, RunState::Succeeded, RunState::Failed, RunState::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
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
    /// `sha256:<hex>` of the bundle.
    pub bundle_digest: String,
    /// `workflow`, `node` or `job`.
    pub kind: String,
    /// The daemon job that started it, if any.
    pub job: Option<String>,
}

/// State writes to apply when a run succeeds: key → value, or `None` to delete.
pub type StateWrites = BTreeMap<String, Option<Vec<u8>>>;

/// One run as `wfrun runs list/show` present it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// The workflow name.
    pub workflow: String,
    /// The workflow version.
    pub version: String,
    /// `workflow`, `node` or `job`.
    pub kind: String,
    /// The bundle path as given.
    pub bundle_path: String,
    /// `sha256:<hex>` of the bundle.
    pub bundle_digest: String,
    /// The current state.
    pub status: String,
    /// Why it failed.
    pub error_code: Option<String>,
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
    pub transitions: Vec<(String, String)>,
    /// Node records, in the order they were recorded.
    pub nodes: Vec<NodeRecord>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    bundle_path TEXT NOT NULL,
    bundle_digest TEXT NOT NULL,
    status TEXT NOT NULL,
    error_code TEXT,
    error_message TEXT,
    failed_node TEXT,
    output TEXT,
    exit_code INTEGER,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    duration_ms REAL,
    fuel_consumed INTEGER,
    peak_memory_bytes INTEGER,
    policy_violations TEXT,
    owner_pid INTEGER,
    job TEXT,
    owner_boot TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, id);
CREATE TABLE IF NOT EXISTS run_transitions (
    run_id TEXT NOT NULL REFERENCES runs (id),
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS node_runs (
    run_id TEXT NOT NULL REFERENCES runs (id),
    seq INTEGER NOT NULL,
    node TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    source TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    paused_reason TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_run_at TEXT,
    last_run_id TEXT,
    last_status TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    workflow TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (workflow, key)
);
";

/// Now, as RFC 3339 with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The run history and state database of one state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens the store in `dir` only if one exists there: for commands that
    /// only read, so that they create nothing.
    pub fn open_existing(dir: &Path) -> Result<Option<Store>, StoreError> {
        if dir.join("wfrun.db").exists() { Store::open(dir).map(Some) } else { Ok(None) }
    }

    /// Opens (creating if needed) the store in `dir`. A directory it creates
    /// is private to the user (0700): it holds outputs, logs and state.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(dir).map_err(|source| StoreError::Dir { path: dir.to_path_buf(), source })?;
        let db_path = dir.join("wfrun.db");
        let sqlite = |source| StoreError::Sqlite { path: db_path.clone(), source };
        let conn = Connection::open(&db_path).map_err(sqlite)?;
        // Several processes share the file: wait for each other's locks
        // rather than fail, and let readers run beside a writer.
        conn.busy_timeout(Duration::from_secs(30)).map_err(sqlite)?;
        enable_wal(&conn).map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        migrate(&conn).map_err(sqlite)?;
        Ok(Store { dir: dir.to_path_buf(), db_path, conn: Mutex::new(conn) })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.db_path.clone(), source }
    }

    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.sqlite(e))?;
        let value = f(&tx).map_err(|e| self.sqlite(e))?;
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(value)
    }

    /// Records a new run as `pending`, then `running`.
    pub fn begin_run(&self, run: &NewRun) -> Result<(), StoreError> {
        let at = now();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO runs (id, workflow, version, kind, bundle_path, bundle_digest, status, created_at, owner_pid, job,
                                   owner_boot)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?8, ?9, ?10)",
                params![
                    run.id,
                    run.workflow,
                    run.version,
                    run.kind,
                    run.bundle_path,
                    run.bundle_digest,
                    at,
                    std::process::id(),
                    run.job,
                    boot_id()
                ],
            )?;
            tx.execute("INSERT INTO run_transitions VALUES (?1, 0, 'pending', ?2)", params![run.id, at])?;
            tx.execute("INSERT INTO run_transitions VALUES (?1, 1, 'running', ?2)", params![run.id, at])?;
            Ok(())
        })
    }

    /// Records how run `report.run_id` ended, its node records and, for a
    /// run that succeeded, its state writes to `workflow`: all in one
    /// transaction.
    pub fn finish_run(&self, workflow: &str, report: &RunReport, state: &StateWrites) -> Result<(), StoreError> {
        let at = now();
        let end = match report.status {
            RunStatus::Succeeded => RunState::Succeeded,
            RunStatus::Failed => RunState::Failed,
            RunStatus::Cancelled => RunState::Cancelled,
        };
        let run_id = &report.run_id;
        self.write(|tx| {
            tx.execute(
                "UPDATE runs SET status = ?2, error_code = ?3, error_message = ?4, failed_node = ?5, output = ?6,
                 exit_code = ?7, finished_at = ?8, duration_ms = ?9, fuel_consumed = ?10, peak_memory_bytes = ?11,
                 policy_violations = ?12
                 WHERE id = ?1",
                params![
                    run_id,
                    end.as_str(),
                    report.error_code.map(|c| c.as_str()),
                    report.error_message,
                    report.failed_node,
                    report.output.as_ref().map(|o| o.get()),
                    report.exit_code,
                    at,
                    report.duration_ms,
                    report.fuel_consumed as i64,
                    report.peak_memory_bytes as i64,
                    (!report.policy_violations.is_empty())
                        .then(|| serde_json::to_string(&report.policy_violations).expect("violations serialise")),
                ],
            )?;
            tx.execute(
                "INSERT INTO run_transitions
                 SELECT ?1, COALESCE(MAX(seq), -1) + 1, ?2, ?3 FROM run_transitions WHERE run_id = ?1",
                params![run_id, end.as_str(), at],
            )?;
            for (seq, node) in report.nodes.iter().enumerate() {
                let record = serde_json::to_string(node).expect("node records serialise");
                tx.execute(
                    "INSERT INTO node_runs VALUES (?1, ?2, ?3, ?4)",
                    params![run_id, seq as i64, node.node, record],
                )?;
            }
            if end == RunState::Succeeded {
                for (key, value) in state {
                    match value {
                        Some(value) => tx.execute(
                            "INSERT INTO state (workflow, key, value) VALUES (?1, ?2, ?3)
                             ON CONFLICT (workflow, key) DO UPDATE SET value = excluded.value",
                            params![workflow, key, value],
                        )?,
                        None => {
                            tx.execute("DELETE FROM state WHERE workflow = ?1 AND key = ?2", params![workflow, key])?
                        }
                    };
                }
            }
            Ok(())
        })
    }

    /// Marks every run left `running` by a process that is gone (a crash, a
    /// kill -9, a reboot) as `failed` with error code `interrupted`. Runs of
    /// processes still alive in this boot (another `wfrun exec`) are left
    /// alone. Returns the ids.
    pub fn recover_interrupted(&self) -> Result<Vec<String>, StoreError> {
        let at = now();
        self.write(|tx| {
            let mut stmt = tx.prepare("SELECT id, owner_pid, owner_boot FROM runs WHERE status = 'running'")?;
            let running: Vec<(String, Option<u32>, Option<String>)> =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
            drop(stmt);
            let boot = boot_id();
            let mut recovered = Vec::new();
            for (id, pid, owner_boot) in running {
                // A process id from before a reboot may belong to anything now.
                let same_boot = owner_boot.is_none() || owner_boot == boot;
                if same_boot && pid.is_some_and(|pid| pid != std::process::id() && process_alive(pid)) {
                    continue;
                }
                tx.execute(
                    "UPDATE runs SET status = 'failed', error_code = 'interrupted', finished_at = ?2,
                     error_message = 'wfrun stopped before the run finished (a crash, a kill or a power loss)'
                     WHERE id = ?1",
                    params![id, at],
                )?;
                tx.execute(
                    "INSERT INTO run_transitions
                     SELECT ?1, COALESCE(MAX(seq), -1) + 1, 'failed', ?2 FROM run_transitions WHERE run_id = ?1",
                    params![id, at],
                )?;
                recovered.push(id);
            }
            Ok(recovered)
        })
    }

    /// Stores (or replaces) job `name`'s definition, keeping its run state.
    pub fn put_job(&self, name: &str, spec: &str, source: &str) -> Result<(), StoreError> {
        let at = now();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO jobs (name, spec, source, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, source = excluded.source",
                params![name, spec, source, at],
            )?;
            Ok(())
        })
    }

    /// Removes job `name`; false if there was none.
    pub fn remove_job(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM jobs WHERE name = ?1", params![name])? > 0))
    }

    /// Pauses (with a reason) or resumes job `name`; false if there is none.
    /// Resuming clears the failure count.
    pub fn set_job_paused(&self, name: &str, paused: bool, reason: Option<&str>) -> Result<bool, StoreError> {
        self.write(|tx| {
            let changed = if paused {
                tx.execute("UPDATE jobs SET paused = 1, paused_reason = ?2 WHERE name = ?1", params![name, reason])?
            } else {
                tx.execute(
                    "UPDATE jobs SET paused = 0, paused_reason = NULL, consecutive_failures = 0 WHERE name = ?1",
                    params![name],
                )?
            };
            Ok(changed > 0)
        })
    }

    /// Records how a job's run ended; returns its consecutive failures (a
    /// success clears them, a cancelled run leaves them as they are).
    pub fn record_job_run(&self, name: &str, run_id: &str, status: &str) -> Result<u32, StoreError> {
        let at = now();
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET last_run_at = ?2, last_run_id = ?3, last_status = ?4,
                 consecutive_failures = CASE ?4 WHEN 'succeeded' THEN 0 WHEN 'failed' THEN consecutive_failures + 1
                                        ELSE consecutive_failures END
                 WHERE name = ?1",
                params![name, at, run_id, status],
            )?;
            tx.query_row("SELECT consecutive_failures FROM jobs WHERE name = ?1", params![name], |r| r.get(0))
                .optional()
                .map(|n| n.unwrap_or(0))
        })
    }

    /// Every job, by name.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT name, spec, source, paused, paused_reason, consecutive_failures, last_run_at, last_run_id,
                        last_status, created_at FROM jobs ORDER BY name",
            )
            .map_err(|e| self.sqlite(e))?;
        stmt.query_map([], |r| {
            Ok(JobRecord {
                name: r.get(0)?,
                spec: r.get(1)?,
                source: r.get(2)?,
                paused: r.get::<_, i64>(3)? != 0,
                paused_reason: r.get(4)?,
                consecutive_failures: r.get(5)?,
                last_run_at: r.get(6)?,
                last_run_id: r.get(7)?,
                last_status: r.get(8)?,
                created_at: r.get(9)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.sqlite(e))
    }

    /// Runs, newest first, optionally only those in `status`.
    pub fn list_runs(&self, status: Option<RunState>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            .prepare("SELECT id FROM runs WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT ?2")
            .map_err(|e| self.sqlite(e))?;
        let ids: Vec<String> = stmt
            .query_map(params![status.map(|s| s.as_str()), limit as i64], |row| row.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sqlite(e))?;
        drop(stmt);
        ids.iter().map(|id| load_run(&conn, id).map_err(|e| self.sqlite(e))).filter_map(|r| r.transpose()).collect()
    }

    /// One run with its transitions and node records.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let conn = self.conn.lock().unwrap();
        load_run(&conn, run_id).map_err(|e| self.sqlite(e))
    }

    /// The value of `key` in `workflow`'s state.
    pub fn state_get(&self, workflow: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.conn.lock().unwrap();
        conn.query_row("SELECT value FROM state WHERE workflow = ?1 AND key = ?2", params![workflow, key], |r| r.get(0))
            .optional()
            .map_err(|e| self.sqlite(e))
    }

    /// Every key of `workflow`'s state with its stored size (key + value).
    pub fn state_sizes(&self, workflow: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            // Bytes, not characters: a TEXT key's length() counts characters.
            .prepare("SELECT key, length(CAST(key AS BLOB)) + length(value) FROM state WHERE workflow = ?1")
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![workflow], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sqlite(e))?;
        Ok(rows)
    }

    /// The directory holding run `run_id`'s log files.
    pub fn log_dir(&self, run_id: &str) -> PathBuf {
        self.dir.join("logs").join(run_id)
    }
}

/// A job as stored: its definition (JSON) and its run state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// The job's name.
    pub name: String,
    /// The definition, as JSON.
    pub spec: String,
    /// `config` (declared in the config file) or `cli` (added at run time).
    pub source: String,
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
    pub last_status: Option<String>,
    /// When it was first stored.
    pub created_at: String,
}

/// This boot of the machine (Linux: `/proc/sys/kernel/random/boot_id`), so
/// that a process id recorded before a reboot is not taken for a live one.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|id| id.trim().to_owned())
}

/// Whether process `pid` exists (Linux: `/proc/<pid>`). Elsewhere every
/// process counts as gone, which at worst marks a live `exec` run interrupted.
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Switches the database to WAL. The switch needs a moment of exclusive
/// access, which SQLite does not wait for under its busy timeout, so several
/// processes opening a new state directory at once retry it.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let mut attempt = 0;
    loop {
        let mode = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0));
        match mode {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if attempt < 200
                    && matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(10 + attempt));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Columns added to `runs` since the first schema, with their types. Older
/// databases get them (empty) when opened.
const ADDED_RUN_COLUMNS: [(&str, &str); 4] =
    [("policy_violations", "TEXT"), ("owner_pid", "INTEGER"), ("job", "TEXT"), ("owner_boot", "TEXT")];

/// Brings a database made by an older wfrun up to [`SCHEMA`]. Idempotent,
/// and safe beside other processes doing the same.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let missing = |conn: &Connection| -> rusqlite::Result<Vec<(&str, &str)>> {
        let mut stmt = conn.prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = ?1")?;
        let mut missing = Vec::new();
        for (column, kind) in ADDED_RUN_COLUMNS {
            if !stmt.exists(params![column])? {
                missing.push((column, kind));
            }
        }
        Ok(missing)
    };
    if missing(conn)?.is_empty() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let added = (|| {
        for (column, kind) in missing(conn)? {
            conn.execute_batch(&format!("ALTER TABLE runs ADD COLUMN {column} {kind}"))?;
        }
        Ok(())
    })();
    conn.execute_batch(if added.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    added
}

fn load_run(conn: &Connection, run_id: &str) -> rusqlite::Result<Option<RunRecord>> {
    let run = conn
        .query_row(
            "SELECT id, workflow, version, kind, bundle_path, bundle_digest, status, error_code, error_message,
                    failed_node, output, exit_code, created_at, finished_at, duration_ms, fuel_consumed, peak_memory_bytes,
                    policy_violations
             FROM runs WHERE id = ?1",
            params![run_id],
            |r| {
                Ok(RunRecord {
                    run_id: r.get(0)?,
                    workflow: r.get(1)?,
                    version: r.get(2)?,
                    kind: r.get(3)?,
                    bundle_path: r.get(4)?,
                    bundle_digest: r.get(5)?,
                    status: r.get(6)?,
                    error_code: r.get(7)?,
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
                    transitions: Vec::new(),
                    nodes: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut run) = run else { return Ok(None) };
    let mut stmt = conn.prepare("SELECT status, at FROM run_transitions WHERE run_id = ?1 ORDER BY seq")?;
    run.transitions = stmt.query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare("SELECT record FROM node_runs WHERE run_id = ?1 ORDER BY seq")?;
    let records: Vec<String> = stmt.query_map(params![run_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
    run.nodes = records.iter().filter_map(|text| serde_json::from_str(text).ok()).collect();
    Ok(Some(run))
}
