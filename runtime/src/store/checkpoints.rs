//! The WAL's checkpoints on a thread of their own, for a long-lived host.
//!
//! By default SQLite checkpoints in the connection that commits, once the
//! WAL has passed 1,000 frames: that commit copies the WAL's pages into the
//! database and fsyncs both files, and every other writer of the process
//! waits for the connection meanwhile. In the daemon that was a trigger's
//! `pending` write waiting up to 10 ms behind a run end's commit, a lone
//! trigger's p99 of 4.5 ms instead of 1 ms, and a tenth of the run-end
//! writer's time. [`Store::checkpoint_in_background`] hands the checkpoints
//! to a thread with a connection of its own, which SQLite lets copy the
//! WAL while the writer goes on appending to it (a `PASSIVE` checkpoint).
//!
//! The WAL starts over only when a write begins with every frame of it
//! copied, which a writer that never pauses does not let happen. So once
//! the WAL has passed [`RESTART_FRAMES`], the thread, right after a
//! checkpoint, holds the process's writes (the store's connection) while
//! it copies the frames appended meanwhile, and the next write starts the
//! WAL over. That copy is of few frames, but its two `fsync`s are what the
//! writes wait for (the same copy made by the writing connection took
//! 10.7 ms median on this project's machine), once every 8,000 frames
//! rather than at every checkpoint. Past [`MAX_FRAMES`] (the thread
//! has fallen behind, or never found the connection free) the writing
//! connection checkpoints whatever is left, as SQLite's own checkpoint
//! would.

use super::{Store, StoreError};
use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Frames appended to the WAL since its last checkpoint after which the
/// next one starts: SQLite's own automatic checkpoint's.
pub const CHECKPOINT_FRAMES: i32 = 1000;

/// The WAL's length, in frames, past which the thread, after a checkpoint,
/// copies the frames appended meanwhile with the process's writes held, so
/// that the WAL starts over.
pub const RESTART_FRAMES: i32 = 8 * CHECKPOINT_FRAMES;

/// The WAL's length, in frames, past which the writing connection
/// checkpoints whatever the thread has left.
pub const MAX_FRAMES: i32 = 4 * RESTART_FRAMES;

/// The checkpointer, as its store holds it: dropping it stops the thread.
#[derive(Debug)]
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Checkpoints the thread made so far.
    done: AtomicUsize,
    /// Checkpoints the thread made with the writes held, to start a long
    /// WAL over.
    finishes: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    /// The WAL's frames after the last commit.
    frames: i32,
    /// The WAL's frames already copied into the database.
    copied: i32,
    stop: bool,
}

impl State {
    fn due(&self) -> bool {
        self.frames - self.copied >= CHECKPOINT_FRAMES
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        self.shared.wake.notify_one();
    }
}

impl Store {
    /// Moves the WAL's checkpoints off the connection that writes, onto a
    /// thread with a connection of its own (see [the module](crate::store::checkpoints)):
    /// for a long-lived process (the daemon). Once is enough; a store that
    /// already has the thread keeps it.
    pub fn checkpoint_in_background(self: &Arc<Self>) -> Result<(), StoreError> {
        if self.checkpointer.get().is_some() {
            return Ok(());
        }
        let sqlite = |source| StoreError::Sqlite { path: self.db_path.clone(), source };
        let conn = Connection::open(&self.db_path).map_err(sqlite)?;
        // A connection opens the WAL with its first read; until then a
        // checkpoint on it does nothing.
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(sqlite(rusqlite::Error::InvalidQuery));
        }
        // As the writing connection: the process does not fsync at exit.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map_err(sqlite)?;
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            wake: Condvar::new(),
            done: AtomicUsize::new(0),
            finishes: AtomicUsize::new(0),
        });
        let thread = {
            let shared = shared.clone();
            let store = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("wfrun-checkpoint".into())
                .spawn(move || checkpoint(&conn, &shared, &store))
        };
        thread.map_err(|source| StoreError::Dir { path: self.dir.clone(), source })?;
        let hook = shared.clone();
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Replaces SQLite's automatic checkpoint, which is a WAL hook too.
        let installed = writer.conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
            let mut state = hook.state.lock().unwrap_or_else(|p| p.into_inner());
            if frames < state.frames {
                // The WAL started over.
                state.copied = 0;
            }
            state.frames = frames;
            if frames >= MAX_FRAMES {
                drop(state);
                // SQLITE_BUSY (the thread is at it) leaves the frames to
                // the next commit.
                if let Ok((_, copied)) = wal.checkpoint_v2(CheckpointMode::PASSIVE)
                    && copied >= 0
                {
                    let mut state = hook.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.copied = state.copied.max(copied);
                }
            } else if state.due() {
                hook.wake.notify_one();
            }
            Ok(())
        }));
        if let Err(e) = installed {
            // Stops the thread.
            drop(Checkpointer { shared });
            return Err(sqlite(e));
        }
        let _ = self.checkpointer.set(Checkpointer { shared });
        Ok(())
    }
}

/// The checkpointer's loop: a checkpoint each time the WAL has grown by
/// [`CHECKPOINT_FRAMES`], until the store is dropped.
fn checkpoint(conn: &Connection, shared: &Shared, store: &std::sync::Weak<Store>) {
    let passive = |frames| match conn.wal_checkpoint_v2(Some(rusqlite::MAIN_DB), CheckpointMode::PASSIVE) {
        Ok((_, copied)) if copied >= 0 => copied,
        // SQLITE_BUSY (the writing connection is at it) or a failure: not
        // again until the WAL has grown further.
        Ok(_) | Err(_) => frames,
    };
    loop {
        let frames = {
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            while !state.stop && !state.due() {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.stop {
                return;
            }
            state.frames
        };
        let mut copied = passive(frames);
        shared.done.fetch_add(1, Ordering::Relaxed);
        let frames = shared.state.lock().unwrap_or_else(|p| p.into_inner()).frames;
        if frames >= RESTART_FRAMES
            && let Some(store) = store.upgrade()
        {
            let writer = store.writer.lock().unwrap_or_else(|p| p.into_inner());
            // Not while a group of writes is open (its writers wait for
            // another to commit it): the WAL would not start over.
            if !writer.open {
                copied = passive(frames);
                shared.finishes.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        // A commit since may have started the WAL over: then what this
        // copied is of the old one.
        if state.frames >= copied {
            state.copied = state.copied.max(copied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME_BYTES: u64 = 4096 + 24;

    #[test]
    fn a_steady_writer_leaves_checkpoints_to_the_thread_and_its_wal_still_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store.checkpoint_in_background().unwrap();
        let wal = dir.path().join(format!("{}-wal", super::super::DB_NAME));
        // Three times the length at which the WAL starts over, each write
        // about four frames, with never a pause long enough for a
        // checkpoint to finish between two writes (a few milliseconds).
        let writes = 3 * RESTART_FRAMES / 4;
        let mut longest = 0;
        for i in 0..writes {
            store
                .write(|tx| {
                    tx.execute("INSERT INTO state VALUES ('w', ?1, zeroblob(15000))", [i.to_string()]).map(|_| ())
                })
                .unwrap();
            longest = longest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
        let shared = &store.checkpointer.get().unwrap().shared;
        let (by_thread, started_over) = (shared.done.load(Ordering::Relaxed), shared.finishes.load(Ordering::Relaxed));
        assert!(by_thread > 0, "the thread made no checkpoint");
        // Without starting over, the WAL would hold every write's frames;
        // it did, before reaching the bound at which the writer checkpoints
        // whatever the thread has left.
        assert!(started_over > 0, "the WAL never started over before {MAX_FRAMES} frames");
        assert!(
            longest < (MAX_FRAMES + CHECKPOINT_FRAMES) as u64 * FRAME_BYTES,
            "the WAL grew to {} frames",
            longest / FRAME_BYTES
        );
        // Everything written is there, for another connection too.
        let other = Connection::open(dir.path().join(super::super::DB_NAME)).unwrap();
        let count: i64 = other.query_row("SELECT COUNT(*) FROM state", [], |r| r.get(0)).unwrap();
        assert_eq!(count, i64::from(writes));
    }

    #[test]
    fn the_thread_stops_when_its_store_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store.checkpoint_in_background().unwrap();
        // The thread and the commit hook each hold the shared state.
        let shared = Arc::downgrade(&store.checkpointer.get().unwrap().shared);
        drop(store);
        let started = std::time::Instant::now();
        while shared.upgrade().is_some() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "the checkpointer outlived its store");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
