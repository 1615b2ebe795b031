//! Retention: what a long-running host keeps of its run history.
//!
//! [`Store::prune`] removes finished runs (their records, transitions, node
//! records and log directories) that are older than `max_age` or beyond the
//! newest `max_runs`. It then removes the log directories of the oldest
//! finished runs while all logs together are over `max_log_bytes`; those
//! runs keep their records. A run still `pending` or `running` is never
//! touched, and neither is a run whose report is still in the outbox: the
//! operator has not heard of it yet. The daemon prunes at start and every
//! hour (`[retention]`); `wfrun runs prune` does it by hand.

use super::{Store, StoreError};
use rusqlite::params;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished runs older than this go.
    pub max_age: Duration,
    /// At most this many runs are kept (the newest).
    pub max_runs: u64,
    /// All run logs together stay under this many bytes.
    pub max_log_bytes: u64,
}

impl Default for Retention {
    /// 30 days, 100,000 runs, 1 GiB of logs.
    fn default() -> Self {
        Retention { max_age: Duration::from_secs(30 * 24 * 3600), max_runs: 100_000, max_log_bytes: 1 << 30 }
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Run records removed.
    pub runs: u64,
    /// Log directories removed (of removed runs, and for the size cap).
    pub log_dirs: u64,
    /// Bytes of logs removed.
    pub log_bytes: u64,
    /// Run directories (outputs) removed with their runs.
    pub run_dirs: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

impl Store {
    /// Prunes the run history under `retention`.
    pub fn prune(&self, retention: &Retention) -> Result<Pruned, StoreError> {
        let cutoff = humantime::format_rfc3339_millis(SystemTime::now() - retention.max_age).to_string();
        let removed: Vec<String> = self.write(|tx| {
            let mut stmt = tx.prepare(
                "SELECT id FROM runs
                 WHERE status NOT IN ('pending', 'running')
                   AND (created_at < ?1 OR id NOT IN (SELECT id FROM runs ORDER BY id DESC LIMIT ?2))
                   AND id NOT IN (SELECT json_extract(body, '$.run.execution_id') FROM outbox
                                  WHERE kind = 'run' AND json_valid(body))",
            )?;
            let ids: Vec<String> = stmt
                .query_map(params![cutoff, retention.max_runs as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            drop(stmt);
            for id in &ids {
                tx.execute("DELETE FROM node_runs WHERE run_id = ?1", params![id])?;
                tx.execute("DELETE FROM run_logs WHERE run_id = ?1", params![id])?;
                tx.execute("DELETE FROM run_transitions WHERE run_id = ?1", params![id])?;
                tx.execute("DELETE FROM runs WHERE id = ?1", params![id])?;
            }
            Ok(ids)
        })?;
        let mut pruned = Pruned { runs: removed.len() as u64, ..Pruned::default() };
        for id in &removed {
            let run_dir = self.run_dir(id);
            if run_dir.is_dir() && std::fs::remove_dir_all(&run_dir).is_ok() {
                pruned.run_dirs += 1;
            }
            let dir = self.log_dir(id);
            if dir.is_dir() {
                pruned.log_bytes += dir_bytes(&dir);
                if std::fs::remove_dir_all(&dir).is_ok() {
                    pruned.log_dirs += 1;
                }
            }
        }

        // The size cap: oldest logs first (run ids are UUIDv7, so their
        // order is their age), never a run still going.
        let logs = self.dir().join("logs");
        let mut dirs: Vec<(String, u64)> = std::fs::read_dir(&logs)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), dir_bytes(&e.path())))
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        let mut total: u64 = dirs.iter().map(|(_, bytes)| bytes).sum();
        for (id, bytes) in dirs {
            if total <= retention.max_log_bytes {
                break;
            }
            let going = self.run(&id)?.is_some_and(|r| !r.status.is_finished());
            if going {
                continue;
            }
            if std::fs::remove_dir_all(logs.join(&id)).is_ok() {
                total -= bytes;
                pruned.log_dirs += 1;
                pruned.log_bytes += bytes;
            }
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{ErrorCode, RunReport};
    use crate::store::{NewRun, OutboxLimits, Reporter};

    fn rejected(store: &Store) -> String {
        let report = RunReport::rejected_with(ErrorCode::InvalidBundle, "missing", "gone");
        let new = NewRun {
            id: report.run_id.clone(),
            workflow: "w".into(),
            version: "-".into(),
            bundle_path: "b".into(),
            bundle_digest: "d".into(),
            kind: None,
            job: None,
        };
        store.record_rejected(&new, &report).unwrap();
        report.run_id
    }

    #[test]
    fn old_and_surplus_runs_go_but_never_a_running_one_nor_one_still_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old: Vec<String> = (0..5).map(|_| rejected(&store)).collect();
        store.write(|tx| tx.execute("UPDATE runs SET created_at = '2020-01-01T00:00:00.000Z'", [])).unwrap();
        let running = NewRun {
            id: "01000000-0000-7000-8000-000000000000".into(),
            workflow: "w".into(),
            version: "1".into(),
            bundle_path: "b".into(),
            bundle_digest: "d".into(),
            kind: None,
            job: None,
        };
        store.begin_run(&running, &crate::store::now()).unwrap();
        store.write(|tx| tx.execute("UPDATE runs SET created_at = '2020-01-01T00:00:00.000Z'", [])).unwrap();
        let fresh: Vec<String> = (0..4).map(|_| rejected(&store)).collect();
        std::fs::create_dir_all(store.log_dir(&old[0])).unwrap();
        std::fs::write(store.log_dir(&old[0]).join("main.log"), "x".repeat(100)).unwrap();

        let pruned = store.prune(&Retention { max_runs: 3, ..Retention::default() }).unwrap();
        assert_eq!((pruned.runs, pruned.log_dirs, pruned.log_bytes), (6, 1, 100));
        let left: Vec<String> = store.list_runs(None, 100).unwrap().into_iter().map(|r| r.run_id).collect();
        assert!(left.contains(&running.id), "a running run stays, however old");
        assert_eq!(left.len(), 4, "the newest three finished runs, and the running one: {left:?}");
        assert!(fresh[1..].iter().all(|id| left.contains(id)));
        assert!(!store.log_dir(&old[0]).exists());

        // A run whose report has not been delivered stays.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .enable_outbox(Reporter {
                device_id: "d".into(),
                runner_version: "0".into(),
                limits: OutboxLimits::default(),
            })
            .unwrap();
        let owed = rejected(&store);
        let pruned = store.prune(&Retention { max_runs: 0, ..Retention::default() }).unwrap();
        assert_eq!(pruned.runs, 0);
        assert!(store.run(&owed).unwrap().is_some());
    }

    #[test]
    fn logs_over_the_size_cap_go_oldest_first_and_their_runs_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..4).map(|_| rejected(&store)).collect();
        for id in &ids {
            std::fs::create_dir_all(store.log_dir(id)).unwrap();
            std::fs::write(store.log_dir(id).join("main.log"), vec![b'x'; 1000]).unwrap();
        }
        let pruned = store.prune(&Retention { max_log_bytes: 2500, ..Retention::default() }).unwrap();
        assert_eq!((pruned.runs, pruned.log_dirs, pruned.log_bytes), (0, 2, 2000));
        assert!(!store.log_dir(&ids[0]).exists() && !store.log_dir(&ids[1]).exists());
        assert!(store.log_dir(&ids[2]).exists() && store.log_dir(&ids[3]).exists());
        assert_eq!(store.list_runs(None, 100).unwrap().len(), 4);
    }
}
