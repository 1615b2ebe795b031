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
//!   execution trace as JSON), `run_logs` (each node's log up to 64 KiB,
//!   written with the run's end); typed as [`RunRecord`]. Larger logs are
//!   files beside the database, `logs/<run-id>/<node>.log`.
//! - [`jobs`]: the daemon's jobs, with typed [`JobSpec`](crate::manifest::JobSpec)s,
//!   as [`JobRecord`].
//! - [`state`]: key-value pairs scoped to a workflow.
//! - [`releases`]: the device's id, each release's state (staged, trial,
//!   committed, rolled back) and its events, every transition durable.
//!
//! The store imports no layer above it: it records what it is given.
//!
//! # Group commit
//!
//! Every write is acknowledged only once committed, but writers of one
//! process share commits: a write joins the open transaction (each one
//! after the group's first in a savepoint of its own), and the writer
//! commits unless others are already waiting for the connection, in which
//! case the last of them commits for all (at most 256 writes a group). A
//! write that fails undoes only itself (a failing first write rolls back
//! its group, which holds nothing else); a commit that fails fails every
//! write of its group. A group holding a
//! durable write (release transitions, runs with their reports) commits
//! with `synchronous = FULL`. The run-end writer's batches (many runs'
//! ends at once) are applied together without a savepoint each, and
//! undone and applied again one savepoint each only when one of them
//! fails: the same outcome, without the savepoints' page copies. A writer
//! that arrives meanwhile (a trigger's `pending` records) is handed the
//! open group at the next run end and commits it, rather than waiting for
//! the whole batch.
//!
//! # The WAL
//!
//! No connection checkpoints as it closes (a short-lived `exec` would fsync
//! at every exit); the automatic checkpoints of later commits fold the WAL
//! in. A short-lived process ([`Store::keep_wal_short`]) does checkpoint as
//! it closes once the WAL has passed [`SHORT_LIVED_WAL_BYTES`]: the next
//! process to open the database alone reads every frame of the WAL to
//! rebuild its index.

pub mod checkpoints;
pub mod jobs;
pub mod migrations;
pub mod outbox;
pub mod outputs;
pub mod releases;
pub mod retention;
pub mod runs;
pub mod state;

pub use jobs::{JobRecord, JobSource};
pub use outbox::{OutboxLimits, OutboxStatus, Queued, Report, Reporter};
pub use outputs::OutputFile;
pub use releases::{ReleaseEvent, ReleaseRecord, ReleaseState, TransitionError};
pub use retention::{Pruned, Retention};
pub(crate) use runs::release_free_heap;
pub use runs::{NewRun, RunEnd, RunRecord};
pub use state::StateWrites;

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
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
    writer: Mutex<Writer>,
    /// Signalled each time a group of writes ends.
    ended: Condvar,
    /// Writers waiting for the connection.
    arriving: AtomicUsize,
    reporter: std::sync::OnceLock<outbox::Reporter>,
    /// The run-end writer's queue, once started (`None`: it could not be).
    end_writer: std::sync::OnceLock<Option<Mutex<std::sync::mpsc::Sender<runs::WaitingEnd>>>>,
    /// How many times the run-end writer has found the host idle and
    /// trimmed the heap.
    heap_trims: AtomicUsize,
    /// Checkpoint a long WAL on close ([`Store::keep_wal_short`]).
    short_lived: AtomicBool,
    /// The thread that checkpoints the WAL, once started
    /// ([`Store::checkpoint_in_background`]).
    checkpointer: std::sync::OnceLock<checkpoints::Checkpointer>,
}

impl Drop for Store {
    fn drop(&mut self) {
        if !self.short_lived.load(Ordering::Relaxed) {
            return;
        }
        let mut wal = self.db_path.clone().into_os_string();
        wal.push("-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() >= SHORT_LIVED_WAL_BYTES) {
            let writer = self.writer.get_mut().unwrap_or_else(|p| p.into_inner());
            let _ = writer.conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false);
        }
    }
}

/// The WAL size past which a short-lived process checkpoints as it closes
/// ([`Store::keep_wal_short`]): 128 frames (a 4,096-byte page and its
/// 24-byte header each), about 14 `exec` runs.
pub const SHORT_LIVED_WAL_BYTES: u64 = 128 * (4096 + 24);

/// The database's file name in the state directory.
pub const DB_NAME: &str = "wfrun.db";

impl Store {
    /// Opens the store in `dir` only if one exists there: for commands that
    /// only read, so that they create nothing.
    pub fn open_existing(dir: &Path) -> Result<Option<Store>, StoreError> {
        if dir.join(DB_NAME).exists() { Store::open(dir).map(Some) } else { Ok(None) }
    }

    /// Keeps the WAL short, for a process that opens the database for one
    /// run and exits (`wfrun exec`): when this store closes and the WAL
    /// file has grown past [`SHORT_LIVED_WAL_BYTES`], its connection folds
    /// the WAL into the database and removes it as it closes (if it is the
    /// last connection; otherwise the process still open does it).
    ///
    /// The first connection a process opens to a database no other process
    /// has open rebuilds the WAL's index by reading and checksumming every
    /// frame of it, and closing without a checkpoint leaves the frames for
    /// the next process: each `exec` read the WAL of all the runs since the
    /// last checkpoint, megabytes, a quarter of its time (`perf`). With
    /// this, at most half a MiB, and every fourteenth `exec` or so pays for
    /// the checkpoint (its page copies and two fsyncs).
    pub fn keep_wal_short(&self) {
        self.short_lived.store(true, Ordering::Relaxed);
    }

    /// Makes `dir` fit to hold a store, as [`Store::open`] does first:
    /// created private (0700) if missing, refused if another user owns it
    /// ([`crate::files::secure_state_dir`]). For a caller that reads other
    /// things from the directory (the artifact cache) while the database
    /// opens.
    pub fn secure_dir(dir: &Path) -> Result<(), StoreError> {
        crate::files::secure_state_dir(dir).map_err(|e| match e {
            crate::files::StateDirError::Io { path, source } => StoreError::Dir { path, source },
            not_owned => {
                StoreError::Dir { path: dir.to_path_buf(), source: std::io::Error::other(not_owned.to_string()) }
            }
        })
    }

    /// Opens (creating if needed) the store in `dir` and migrates it. A
    /// directory it creates is private to the user (0700): it holds
    /// outputs, logs and state.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::secure_dir(dir)?;
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
        // Each write of a group keeps, in its savepoint's journal, the pages
        // it changes: in memory, not spilled to a temporary file once a
        // group's journal passes 64 KiB.
        conn.pragma_update(None, "temp_store", "MEMORY").map_err(sqlite)?;
        // The hot writes (a run's start and end, its transitions) reuse
        // their prepared statements, and keep their plans whatever values
        // are bound: without the query planner stability guarantee, a
        // statement whose plan might depend on a bound value is compiled
        // again at every new binding (a tenth of the daemon's CPU).
        conn.set_prepared_statement_cache_capacity(64);
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(sqlite)?;
        // A short-lived process (`wfrun exec`) does not copy the WAL into
        // the database and fsync it as it closes: what it committed is in
        // the WAL, which the next writer's automatic checkpoints fold in, or
        // a short-lived process's close once the WAL is long
        // (`keep_wal_short`).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map_err(sqlite)?;
        match migrations::migrate(&conn).map_err(sqlite)? {
            migrations::Outcome::Current => {}
            migrations::Outcome::TooNew { found } => {
                return Err(StoreError::TooNew { path: db_path, found, known: migrations::LATEST });
            }
        }
        let writer = Writer {
            conn,
            open: false,
            durable: false,
            writes: 0,
            groups: 0,
            failed: std::collections::VecDeque::new(),
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            db_path,
            writer: Mutex::new(writer),
            ended: Condvar::new(),
            arriving: AtomicUsize::new(0),
            reporter: std::sync::OnceLock::new(),
            end_writer: std::sync::OnceLock::new(),
            heap_trims: AtomicUsize::new(0),
            short_lived: AtomicBool::new(false),
            checkpointer: std::sync::OnceLock::new(),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.db_path.clone(), source }
    }

    /// Runs `f` as one write, committed before this returns: all of `f`'s
    /// changes or none of them. Writes from several threads at once share a
    /// commit ([group commit](Store#group-commit)).
    fn write<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.grouped(false, f)
    }

    /// Like [`Store::write`], committed with `synchronous = FULL`: durable
    /// against power loss, not only against a crash. With reporting on, the
    /// release events the write recorded get their reports in it too.
    fn write_durably<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.grouped(true, |conn| {
            let value = f(conn)?;
            if let Some(reporter) = self.reporter.get() {
                reporter.enqueue_release_events(conn)?;
            }
            Ok(value)
        })
    }

    /// One write in the group being formed: `f` runs in its own savepoint
    /// inside the group's transaction (so a failing write undoes only
    /// itself), then either this thread commits the group, or, when more
    /// writers are already waiting for the connection, it leaves the
    /// transaction open for them and waits until the last of them commits.
    fn grouped<T>(&self, durable: bool, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        let mut writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.arriving.fetch_sub(1, Ordering::SeqCst);
        let group = self.open_group(&mut writer, durable)?;
        let value = match self.apply(&mut writer, f) {
            Ok(value) => value,
            Err(panic) => {
                // The write undid itself; the group's others still commit.
                if writer.open {
                    let _ = writer.commit();
                }
                self.ended.notify_all();
                drop(writer);
                std::panic::resume_unwind(panic);
            }
        };
        if !writer.open {
            // It failed as the group's first write: the group is over.
            self.ended.notify_all();
            return value;
        }
        if self.arriving.load(Ordering::SeqCst) > 0 && writer.writes < MAX_GROUP {
            // A writer that is on its way commits this write with its own.
            while writer.groups == group {
                writer = self.ended.wait(writer).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if let Some(failure) = writer.failed.iter().find(|(g, _)| *g == group) {
                return Err(self.commit_failed(failure.1.clone()));
            }
            return value;
        }
        let committed = writer.commit();
        self.ended.notify_all();
        committed.map_err(|e| self.sqlite(e))?;
        value
    }

    /// Several writes as one or more groups (at most [`MAX_GROUP`] writes
    /// each), committed before this returns: each write's result, in
    /// order. As with [`Store::grouped`], a failing write undoes only
    /// itself, and a commit that fails fails every write of its group. For
    /// a caller that gathers writes from many tasks (the run-end writer of
    /// a long-lived host), so that they share commits without as many
    /// threads waiting for them.
    ///
    /// The writes are first tried together, without a savepoint each
    /// ([`Store::apply_all`]); only if one of them fails are they undone
    /// and applied again one savepoint each, so the failure undoes only its
    /// own write. Each savepoint copied every page its write touched into
    /// the savepoint's journal: a sixth of the run-end writer's time.
    ///
    /// A writer that arrives while the batch is being applied (a trigger
    /// recording its runs `pending`) does not wait for the whole batch: at
    /// the next write's end, the open group is handed to it, it joins and
    /// commits the group, and the batch goes on in a new one. Otherwise a
    /// trigger waited behind a whole batch of run ends, and the run slots
    /// stood empty for want of accepted runs (a sixth of the time, at
    /// 19,000 runs a second).
    fn grouped_batch<T, F>(&self, durable: bool, writes: Vec<F>) -> Vec<Result<T, StoreError>>
    where
        F: Fn(&Connection) -> rusqlite::Result<T>,
    {
        let mut writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut results: Vec<(Option<u64>, Result<T, StoreError>)> = Vec::with_capacity(writes.len());
        let mut rest = &writes[..];
        while !rest.is_empty() {
            let Some((group, values)) = self.apply_all(&mut writer, durable, rest) else {
                self.apply_each(&mut writer, durable, rest, &mut results);
                break;
            };
            rest = &rest[values.len()..];
            results.extend(values.into_iter().map(|value| (Some(group), Ok(value))));
            if !rest.is_empty() && writer.open && self.arriving.load(Ordering::SeqCst) > 0 {
                // Writers are waiting for the connection: the last of them
                // commits the group.
                while writer.groups == group {
                    writer = self.ended.wait(writer).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
        if writer.open {
            let _ = writer.commit();
        }
        self.ended.notify_all();
        let failed = writer.failed.clone();
        drop(writer);
        results
            .into_iter()
            .map(|(group, value)| match group.and_then(|g| failed.iter().find(|(f, _)| *f == g)) {
                Some((_, failure)) => Err(self.commit_failed(failure.clone())),
                None => value,
            })
            .collect()
    }

    /// Applies `writes` one at a time, each in a savepoint of its own (as
    /// [`Store::apply`] does), pushing each one's group (if it joined one)
    /// and result onto `results`: a failing write undoes only itself.
    fn apply_each<T, F>(
        &self,
        writer: &mut Writer,
        durable: bool,
        writes: &[F],
        results: &mut Vec<(Option<u64>, Result<T, StoreError>)>,
    ) where
        F: Fn(&Connection) -> rusqlite::Result<T>,
    {
        for f in writes {
            if writer.open && writer.writes >= MAX_GROUP {
                let _ = writer.commit();
            }
            let group = match self.open_group(writer, durable) {
                Ok(group) => group,
                Err(e) => {
                    results.push((None, Err(e)));
                    continue;
                }
            };
            let value = match self.apply(writer, f) {
                Ok(value) => value,
                // The write undid itself (or its group, if it was the
                // first); the others go on.
                Err(_) => Err(self.sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
                    Some("the write panicked".to_owned()),
                ))),
            };
            let joined = (writer.open && value.is_ok()).then_some(group);
            results.push((joined, value));
        }
    }

    /// Applies `writes`, from the first, to one group as a whole, up to the
    /// first write's end at which another writer is waiting for the
    /// connection: the values of those applied and the group's number if
    /// every one succeeded, else `None` with none of them applied (and any
    /// earlier writes of the group kept). A new group needs no savepoint
    /// (it is rolled back whole); a group that holds earlier writes gets
    /// one savepoint for all of these.
    fn apply_all<T, F>(&self, writer: &mut Writer, durable: bool, writes: &[F]) -> Option<(u64, Vec<T>)>
    where
        F: Fn(&Connection) -> rusqlite::Result<T>,
    {
        if writer.open && writer.writes >= MAX_GROUP {
            let _ = writer.commit();
        }
        let room = (MAX_GROUP - if writer.open { writer.writes } else { 0 }) as usize;
        let group = self.open_group(writer, durable).ok()?;
        let whole = writer.writes == 0;
        if !whole && writer.conn.execute_batch("SAVEPOINT wfrun_batch").is_err() {
            return None;
        }
        let conn = &writer.conn;
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut values = Vec::with_capacity(writes.len().min(room));
            for f in writes.iter().take(room) {
                values.push(f(conn)?);
                if self.arriving.load(Ordering::SeqCst) > 0 {
                    break;
                }
            }
            Ok::<_, rusqlite::Error>(values)
        }));
        match applied {
            Ok(Ok(values)) if whole || writer.conn.execute_batch("RELEASE wfrun_batch").is_ok() => {
                writer.writes += values.len() as u32;
                Some((group, values))
            }
            _ if whole => {
                writer.rollback();
                None
            }
            _ => {
                if let Err(e) = writer.conn.execute_batch("ROLLBACK TO wfrun_batch; RELEASE wfrun_batch") {
                    // The group's earlier writes cannot be told apart from
                    // these any more: the group is over, and fails.
                    tracing::warn!("run database: undoing a batch of writes: {e}");
                    writer.rollback();
                    writer.note_failure(group, format!("undoing a batch of writes: {e}"));
                }
                None
            }
        }
    }

    /// Makes sure a group is open for a write (`durable`: one that must
    /// survive power loss); its number.
    fn open_group(&self, writer: &mut Writer, durable: bool) -> Result<u64, StoreError> {
        // SQLite fixes a commit's durability when its transaction begins: a
        // durable write does not join a group that began without it.
        if writer.open && durable && !writer.durable {
            let _ = writer.commit();
            self.ended.notify_all();
        }
        if !writer.open {
            writer.begin(durable).map_err(|e| self.sqlite(e))?;
        }
        Ok(writer.groups)
    }

    /// Runs `f` as a write of the open group: in a savepoint of its own,
    /// except as the group's first write, which needs none (if it fails,
    /// the group, which holds nothing else, is rolled back and ended). A
    /// panic is handed back once the write is undone.
    fn apply<T>(
        &self,
        writer: &mut Writer,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<Result<T, StoreError>, Box<dyn std::any::Any + Send>> {
        let first = writer.writes == 0;
        let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if first {
                return f(&writer.conn);
            }
            let savepoint = writer.conn.savepoint()?;
            let value = f(&savepoint)?;
            savepoint.commit()?;
            Ok(value)
        }));
        if first && !matches!(value, Ok(Ok(_))) {
            writer.rollback();
        } else {
            writer.writes += 1;
        }
        value.map(|value| value.map_err(|e| self.sqlite(e)))
    }

    /// The error of a write whose group's commit failed with `failure`.
    fn commit_failed(&self, failure: String) -> StoreError {
        self.sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some(failure),
        ))
    }

    /// Runs `f` on the connection, for reads.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&writer.conn).map_err(|e| self.sqlite(e))
    }
}

/// The most writes one group commit holds, so that a steady stream of
/// writers still sees commits.
const MAX_GROUP: u32 = 256;

/// The connection, and the group of writes its open transaction holds.
#[derive(Debug)]
struct Writer {
    conn: Connection,
    /// A transaction is open (`BEGIN IMMEDIATE`), holding one group.
    open: bool,
    /// A write of the group must survive power loss.
    durable: bool,
    /// Writes in the group.
    writes: u32,
    /// Groups ended so far (committed or failed); the open one's number.
    groups: u64,
    /// The last groups whose commit failed, with SQLite's message.
    failed: std::collections::VecDeque<(u64, String)>,
}

impl Writer {
    /// Opens a group: `synchronous = FULL` first if it is `durable`.
    fn begin(&mut self, durable: bool) -> rusqlite::Result<()> {
        if durable {
            self.conn.pragma_update(None, "synchronous", "FULL")?;
        }
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            if durable {
                let _ = self.conn.pragma_update(None, "synchronous", "NORMAL");
            }
            return Err(e);
        }
        self.open = true;
        self.durable = durable;
        self.writes = 0;
        Ok(())
    }

    /// Notes that group `group` failed, with `message`, for its writers to
    /// find (the last 64 failures are kept).
    fn note_failure(&mut self, group: u64, message: String) {
        self.failed.push_back((group, message));
        if self.failed.len() > 64 {
            self.failed.pop_front();
        }
    }

    /// Rolls the open group back and ends it.
    fn rollback(&mut self) {
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            tracing::warn!("run database: rolling back a failed write: {e}");
        }
        if self.durable
            && let Err(e) = self.conn.pragma_update(None, "synchronous", "NORMAL")
        {
            tracing::warn!("run database: restoring synchronous = NORMAL: {e}");
        }
        self.open = false;
        self.groups += 1;
    }

    /// Commits the open group, or rolls it back if the commit fails, and
    /// ends it.
    fn commit(&mut self) -> rusqlite::Result<()> {
        let result = self.conn.execute_batch("COMMIT");
        if result.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        if self.durable
            && let Err(e) = self.conn.pragma_update(None, "synchronous", "NORMAL")
        {
            tracing::warn!("run database: restoring synchronous = NORMAL: {e}");
        }
        if let Err(e) = &result {
            self.note_failure(self.groups, e.to_string());
        }
        self.open = false;
        self.groups += 1;
        result
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_writers_share_commits_and_a_failing_write_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut kept = 0;
                    for i in 0..200 {
                        let key = format!("{t}-{i}");
                        let write = |tx: &Connection| {
                            tx.execute("INSERT INTO state VALUES ('w', ?1, x'00')", [&key])?;
                            // Every tenth write fails after its insert.
                            if i % 10 == 0 { Err(rusqlite::Error::QueryReturnedNoRows) } else { Ok(()) }
                        };
                        let result = if t % 2 == 0 { store.write(write) } else { store.write_durably(write) };
                        assert_eq!(result.is_ok(), i % 10 != 0, "{key}");
                        kept += usize::from(result.is_ok());
                    }
                    kept
                })
            })
            .collect();
        let kept: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(kept, 8 * 180);
        let writer = store.writer.lock().unwrap();
        assert!(!writer.open, "no group is left open");
        assert!(writer.groups <= 8 * 200);
        drop(writer);
        // What each write was told is what another connection reads.
        let other = Connection::open(dir.path().join(DB_NAME)).unwrap();
        let rows: i64 = other.query_row("SELECT COUNT(*) FROM state WHERE workflow = 'w'", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, kept as i64);
        // The failed writes are those whose key ends in 0.
        let failed: i64 = other.query_row("SELECT COUNT(*) FROM state WHERE key LIKE '%0'", [], |r| r.get(0)).unwrap();
        assert_eq!(failed, 0, "no failed write left a row");
    }

    #[test]
    fn the_ends_of_many_runs_share_commits_through_the_run_end_writer_and_a_conflict_fails_only_its_run() {
        use crate::outcome::{ErrorCode, RunReport, RunStatus};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        const RUNS: usize = 200;
        let ids: Vec<String> = (0..RUNS).map(|i| format!("run-{i:03}")).collect();
        store.accept_runs(&ids, "job", "x.wasm").unwrap();
        // Run 7 read a state key that has changed since.
        store.write(|tx| tx.execute("INSERT INTO state VALUES ('w', 'k', x'02')", []).map(|_| ())).unwrap();
        let groups_before = store.writer.lock().unwrap().groups;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let results: Vec<(String, Result<(), StoreError>)> = runtime.block_on(async {
            let tasks: Vec<_> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let store = store.clone();
                    let conflicted = i == 7;
                    let end = RunEnd {
                        workflow: "w".into(),
                        report: RunReport {
                            run_id: id.clone(),
                            status: RunStatus::Succeeded,
                            error_code: None,
                            ..RunReport::rejected(ErrorCode::Trap, String::new())
                        },
                        state: if conflicted { [("k".to_owned(), Some(vec![3]))].into() } else { StateWrites::new() },
                        reads: if conflicted { [("k".to_owned(), Some(vec![1]))].into() } else { StateWrites::new() },
                        unbegun: None,
                        logs: vec![("main".into(), format!("log of {id}"))],
                    };
                    tokio::spawn(async move {
                        let (end, result) = store.finish_run_shared(end).await;
                        (end.report.run_id, result)
                    })
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap());
            }
            results
        });
        for (id, result) in &results {
            if id == "run-007" {
                assert!(matches!(result, Err(StoreError::StateConflict { key, .. }) if key == "k"), "{result:?}");
            } else {
                assert!(result.is_ok(), "{id}: {result:?}");
            }
        }
        // Acknowledged means committed: another connection reads them all.
        let other = Connection::open(dir.path().join(DB_NAME)).unwrap();
        let count = |sql: &str| -> i64 { other.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM runs WHERE status = 'succeeded'"), RUNS as i64 - 1);
        assert_eq!(count("SELECT COUNT(*) FROM run_logs"), RUNS as i64 - 1);
        assert_eq!(count("SELECT COUNT(*) FROM runs WHERE id = 'run-007' AND status = 'pending'"), 1);
        assert_eq!(
            count("SELECT COUNT(*) FROM state WHERE CAST(value AS BLOB) = x'02'"),
            1,
            "the conflict wrote nothing"
        );
        let groups = store.writer.lock().unwrap().groups - groups_before;
        assert!(groups < RUNS as u64, "{RUNS} run ends took {groups} commits");
    }

    #[test]
    fn a_short_lived_store_folds_a_long_wal_into_the_database_as_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join(format!("{DB_NAME}-wal"));
        let wal_len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let write = |store: &Store, from: usize, rows: usize| {
            for i in from..from + rows {
                store
                    .write(|tx| {
                        tx.execute("INSERT INTO state VALUES ('w', ?1, zeroblob(3000))", [format!("k{i}")]).map(|_| ())
                    })
                    .unwrap();
            }
        };
        // A long-lived store leaves its WAL as it closes, however long.
        let store = Store::open(dir.path()).unwrap();
        write(&store, 0, 200);
        drop(store);
        assert!(wal_len() >= SHORT_LIVED_WAL_BYTES, "{} bytes of WAL", wal_len());
        // A short-lived one finding it long folds it into the database and
        // removes it as it closes.
        let store = Store::open(dir.path()).unwrap();
        store.keep_wal_short();
        drop(store);
        assert_eq!(wal_len(), 0, "the WAL is still there");
        // One whose WAL stays short leaves it for the next.
        let store = Store::open(dir.path()).unwrap();
        store.keep_wal_short();
        write(&store, 200, 5);
        drop(store);
        assert!(wal_len() > 0 && wal_len() < SHORT_LIVED_WAL_BYTES, "{} bytes of WAL", wal_len());
        // Nothing was lost on the way.
        let db = Connection::open(dir.path().join(DB_NAME)).unwrap();
        let rows: i64 = db.query_row("SELECT COUNT(*) FROM state", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 205);
    }

    #[test]
    fn a_batch_whose_write_fails_or_panics_midway_keeps_every_other_write_and_none_of_the_failing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let count = |store: &Store, sql: &str| -> i64 { store.read(|c| c.query_row(sql, [], |r| r.get(0))).unwrap() };
        // Write `i` inserts two rows; 3 fails after its first, 5 panics
        // after its first.
        let writes: Vec<_> = (0..8)
            .map(|i| {
                move |tx: &Connection| -> rusqlite::Result<usize> {
                    tx.execute("INSERT INTO state VALUES ('w', ?1, x'00')", [format!("{i}-a")])?;
                    if i == 3 {
                        tx.execute("INSERT INTO state VALUES ('w', '0-a', x'00')", [])?;
                    }
                    if i == 5 {
                        panic!("write 5 panics halfway");
                    }
                    tx.execute("INSERT INTO state VALUES ('w', ?1, x'00')", [format!("{i}-b")])?;
                    Ok(i)
                }
            })
            .collect();
        // Once as a group of its own, once joining a group another write
        // already holds (left open, as for writers on their way).
        for joined in [false, true] {
            store.write(|tx| tx.execute("DELETE FROM state", []).map(|_| ())).unwrap();
            if joined {
                let mut writer = store.writer.lock().unwrap();
                store.open_group(&mut writer, false).unwrap();
                let earlier =
                    store.apply(&mut writer, |tx| tx.execute("INSERT INTO state VALUES ('w', 'earlier', x'00')", []));
                assert!(matches!(earlier, Ok(Ok(1))));
                assert!(writer.open);
            }
            let results = store.grouped_batch(false, writes.iter().collect::<Vec<_>>());
            for (i, result) in results.iter().enumerate() {
                match i {
                    3 | 5 => assert!(result.is_err(), "write {i}: {result:?}"),
                    _ => assert_eq!(result.as_ref().ok(), Some(&i), "write {i}: {result:?}"),
                }
            }
            assert!(!store.writer.lock().unwrap().open, "the batch commits what it holds");
            // Another connection sees each good write whole, nothing of the
            // failing ones, and the group's earlier write.
            let other = Connection::open(dir.path().join(DB_NAME)).unwrap();
            let keys: Vec<String> = other
                .prepare("SELECT key FROM state ORDER BY key")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let mut expected: Vec<String> =
                [0, 1, 2, 4, 6, 7].iter().flat_map(|i| [format!("{i}-a"), format!("{i}-b")]).collect();
            if joined {
                expected.push("earlier".to_owned());
            }
            expected.sort();
            assert_eq!(keys, expected, "joined: {joined}");
        }
        assert_eq!(count(&store, "SELECT COUNT(*) FROM state"), 13);
    }

    #[test]
    fn a_writer_arriving_during_a_batch_commits_at_the_next_write_not_after_the_whole_batch() {
        use std::sync::atomic::AtomicBool;
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let db = dir.path().join(DB_NAME);
        let committed = Arc::new(move |key: &str| -> bool {
            let other = Connection::open(&db).unwrap();
            other.query_row("SELECT COUNT(*) FROM state WHERE key = ?1", [key], |r| r.get::<_, i64>(0)).unwrap() == 1
        });
        let arrived = Arc::new(AtomicBool::new(false));
        let seen_during_batch = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let batch = {
            let (store, arrived, seen, committed) =
                (store.clone(), arrived.clone(), seen_during_batch.clone(), committed.clone());
            std::thread::spawn(move || {
                type Write<'a> = Box<dyn Fn(&Connection) -> rusqlite::Result<()> + 'a>;
                let writes: Vec<Write> = vec![
                    // The first write brings another writer (a trigger) to
                    // the connection, and ends once it waits there.
                    Box::new(|tx: &Connection| {
                        tx.execute("INSERT INTO state VALUES ('w', 'end-0', x'00')", [])?;
                        let (writer, arrived) = (store.clone(), arrived.clone());
                        std::thread::spawn(move || {
                            writer
                                .write(|tx| tx.execute("INSERT INTO state VALUES ('w', 'trigger', x'00')", []))
                                .unwrap();
                            arrived.store(true, Ordering::SeqCst);
                        });
                        let waiting = Instant::now();
                        while store.arriving.load(Ordering::SeqCst) == 0 {
                            assert!(waiting.elapsed() < Duration::from_secs(10), "the other writer never arrived");
                            std::thread::yield_now();
                        }
                        Ok(())
                    }),
                    // The next one finds the trigger's write, and the end
                    // before it, already committed.
                    Box::new(|tx: &Connection| {
                        seen.store(committed("trigger") && committed("end-0"), Ordering::SeqCst);
                        tx.execute("INSERT INTO state VALUES ('w', 'end-1', x'00')", []).map(|_| ())
                    }),
                ];
                let results = store.grouped_batch(false, writes);
                done_tx.send(results.iter().all(Result::is_ok)).unwrap();
            })
        };
        let all_ok = done_rx.recv_timeout(Duration::from_secs(30)).expect("the batch finished");
        batch.join().unwrap();
        assert!(all_ok);
        assert!(seen_during_batch.load(Ordering::SeqCst), "the arriving write was committed within the batch");
        let waiting = Instant::now();
        while !arrived.load(Ordering::SeqCst) {
            assert!(waiting.elapsed() < Duration::from_secs(10), "the arriving write returned");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(committed("end-1"));
    }

    #[test]
    fn the_run_end_writer_trims_the_heap_once_when_the_runs_stop() {
        use crate::outcome::{ErrorCode, RunReport};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let trims = || store.heap_trims.load(Ordering::SeqCst);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
        let end = |i: usize| RunEnd {
            workflow: "w".into(),
            report: RunReport { run_id: format!("run-{i}"), ..RunReport::rejected(ErrorCode::Trap, String::new()) },
            state: StateWrites::new(),
            reads: StateWrites::new(),
            unbegun: None,
            logs: Vec::new(),
        };
        let ids: Vec<String> = (0..100).map(|i| format!("run-{i}")).collect();
        store.accept_runs(&ids, "job", "x.wasm").unwrap();
        // Ends arriving closer together than the idle time: no trim
        // while they come.
        runtime.block_on(async {
            for i in 0..20 {
                let (_, result) = store.finish_run_shared(end(i)).await;
                result.unwrap();
                assert_eq!(trims(), 0, "trimmed while runs were still being recorded");
                tokio::time::sleep(runs::IDLE / 4).await;
            }
        });
        // Then one trim once they stop, and no more while idle.
        let stopped = std::time::Instant::now();
        while trims() == 0 {
            assert!(stopped.elapsed() < std::time::Duration::from_secs(10), "no trim after the runs stopped");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(runs::IDLE * 4);
        assert_eq!(trims(), 1);
        // A later burst earns another.
        runtime.block_on(async { store.finish_run_shared(end(99)).await.1.unwrap() });
        std::thread::sleep(runs::IDLE * 4);
        assert_eq!(trims(), 2);
    }
}
