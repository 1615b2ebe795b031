//! SQLite under the state directory: runs, jobs and durable workflow state.
//!
//! [`Store`] owns one connection to `<state-dir>/wfrun.db` (WAL journal,
//! busy timeout), so several `wfrun` processes can record runs at once
//! without losing or corrupting each other's rows. The schema is versioned
//! with `PRAGMA user_version` and brought up to date by numbered
//! [`migrations`] when the database is opened. The tables, by module:
//!
//! - [`runs`]: `runs` (one row per run), `run_transitions` (every status
//!   change with its time), `node_runs` (one row per node, with its
//!   execution trace as JSON); typed as [`RunRecord`]. Per-run log files
//!   live beside the database in `logs/<run-id>/<node>.log`.
//! - [`jobs`]: the daemon's jobs, with typed [`JobSpec`](crate::manifest::JobSpec)s,
//!   as [`JobRecord`].
//! - [`state`]: key-value pairs scoped to a workflow.
//! - [`releases`]: the device's id, each release's state (staged, trial,
//!   committed, rolled back) and its events, every transition durable.
//!
//! The store imports no layer above it: it records what it is given.

pub mod jobs;
pub mod migrations;
pub mod outbox;
pub mod releases;
pub mod retention;
pub mod runs;
pub mod state;

pub use jobs::{JobRecord, JobSource};
pub use outbox::{OutboxLimits, OutboxStatus, Queued, Report, Reporter};
pub use releases::{ReleaseEvent, ReleaseRecord, ReleaseState, TransitionError};
pub use retention::{Pruned, Retention};
pub use runs::{NewRun, RunRecord};
pub use state::StateWrites;

use rusqlite::{Connection, TransactionBehavior};
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
    /// The database was made by a newer wfrun, whose schema this one does
    /// not know.
    #[error(
        "run database {}: schema version {found} is newer than this wfrun knows ({known}); use a newer wfrun",
        path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: u32,
        /// The newest this wfrun knows.
        known: u32,
    },
    /// A state key the run read was changed by another run before it
    /// committed: nothing was written; the run may be run again.
    #[error("state key {key:?} of workflow {workflow:?} changed while the run used it")]
    StateConflict {
        /// The workflow.
        workflow: String,
        /// The key.
        key: String,
    },
    /// A stored value is not of the shape wfrun writes.
    #[error("{what}: {reason}")]
    Corrupt {
        /// Which value.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Now, as RFC 3339 with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The run history, jobs and state database of one state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
    reporter: std::sync::OnceLock<outbox::Reporter>,
}

/// The database's file name in the state directory.
pub const DB_NAME: &str = "wfrun.db";

impl Store {
    /// Opens the store in `dir` only if one exists there: for commands that
    /// only read, so that they create nothing.
    pub fn open_existing(dir: &Path) -> Result<Option<Store>, StoreError> {
        if dir.join(DB_NAME).exists() { Store::open(dir).map(Some) } else { Ok(None) }
    }

    /// Opens (creating if needed) the store in `dir` and migrates it. A
    /// directory it creates is private to the user (0700): it holds
    /// outputs, logs and state.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        crate::files::secure_state_dir(dir).map_err(|e| match e {
            crate::files::StateDirError::Io { path, source } => StoreError::Dir { path, source },
            not_owned => {
                StoreError::Dir { path: dir.to_path_buf(), source: std::io::Error::other(not_owned.to_string()) }
            }
        })?;
        let db_path = dir.join(DB_NAME);
        // 0600 whatever the umask; SQLite gives -wal and -shm the same mode.
        crate::files::ensure_private_file(&db_path)
            .map_err(|source| StoreError::Dir { path: db_path.clone(), source })?;
        let sqlite = |source| StoreError::Sqlite { path: db_path.clone(), source };
        let conn = Connection::open(&db_path).map_err(sqlite)?;
        // Several processes share the file: wait for each other's locks
        // rather than fail, and let readers run beside a writer.
        conn.busy_timeout(Duration::from_secs(30)).map_err(sqlite)?;
        enable_wal(&conn).map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sqlite)?;
        match migrations::migrate(&conn).map_err(sqlite)? {
            migrations::Outcome::Current => {}
            migrations::Outcome::TooNew { found } => {
                return Err(StoreError::TooNew { path: db_path, found, known: migrations::LATEST });
            }
        }
        Ok(Store { dir: dir.to_path_buf(), db_path, conn: Mutex::new(conn), reporter: std::sync::OnceLock::new() })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.db_path.clone(), source }
    }

    /// Runs `f` in one immediate transaction, committed if it succeeds.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.sqlite(e))?;
        let value = f(&tx).map_err(|e| self.sqlite(e))?;
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(value)
    }

    /// Runs `f` in one write transaction committed with `synchronous =
    /// FULL`: durable against power loss, not only against a crash. With
    /// reporting on, the release events the transaction recorded get their
    /// reports in it too.
    fn write_durably<T>(&self, f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| self.sqlite(e))?;
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            if let Some(reporter) = self.reporter.get() {
                reporter.enqueue_release_events(&tx)?;
            }
            tx.commit()?;
            Ok(value)
        })();
        let restored = conn.pragma_update(None, "synchronous", "NORMAL");
        let value = result.map_err(|e| self.sqlite(e))?;
        restored.map_err(|e| self.sqlite(e))?;
        Ok(value)
    }

    /// Runs `f` on the connection, for reads.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn).map_err(|e| self.sqlite(e))
    }
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
