//! The database schema, one numbered migration at a time.
//!
//! `PRAGMA user_version` records how many of `MIGRATIONS` a database has
//! had. [`migrate`] applies the missing ones, each in the same immediate
//! transaction as the version bump, so a crash leaves a database at one
//! version or the next, and several processes opening it at once apply each
//! migration exactly once (the version is read again under the write lock).
//! A database newer than this wfrun is left alone and reported.
//!
//! Migration 1 is the schema wfrun used before versioning, including the
//! columns it once added by probing (`policy_violations`, `owner_pid`,
//! `job`, `owner_boot`), so a database made by any earlier wfrun arrives at
//! version 1 whole.

use rusqlite::{Connection, params};

/// One step of the schema.
struct Migration {
    /// What it changes, for the record.
    #[allow(dead_code)]
    what: &'static str,
    apply: fn(&Connection) -> rusqlite::Result<()>,
}

/// Every migration, in order: migration `n` (1-based) brings a database
/// from version `n - 1` to `n`.
const MIGRATIONS: &[Migration] = &[
    Migration { what: "the schema before versioning", apply: baseline },
    Migration { what: "runs.error_detail; the `interrupted` status", apply: error_detail_and_interrupted },
    Migration { what: "device, releases and release_events", apply: releases },
    Migration { what: "the report outbox and its dead letters", apply: outbox },
    Migration { what: "run_logs: small node logs kept in the database", apply: run_logs },
    Migration { what: "runs.retried_as: the run a failed run was retried as", apply: retried_as },
    Migration { what: "runs.metrics: what the guest recorded through the metrics import", apply: metrics },
    Migration { what: "outbox_totals: the outbox's count and bytes, kept by triggers", apply: outbox_totals },
    Migration { what: "run_transitions, node_runs and run_logs without rowids", apply: without_rowids },
];

/// The schema version this wfrun writes.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

/// What [`migrate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The database is at [`LATEST`] (now).
    Current,
    /// The database is at a version this wfrun does not know.
    TooNew {
        /// Its version.
        found: u32,
    },
}

fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings `conn`'s database up to [`LATEST`].
pub fn migrate(conn: &Connection) -> rusqlite::Result<Outcome> {
    loop {
        let found = version(conn)?;
        if found == LATEST {
            return Ok(Outcome::Current);
        }
        if found > LATEST {
            return Ok(Outcome::TooNew { found });
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let step = (|| {
            // Another process may have migrated while we waited for the lock.
            let at = version(conn)?;
            if at >= LATEST {
                return Ok(());
            }
            (MIGRATIONS[at as usize].apply)(conn)?;
            conn.pragma_update(None, "user_version", at + 1)
        })();
        match step {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
}

const BASELINE: &str = "
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

/// Columns the unversioned schema added to `runs` over time, for databases
/// made before each.
const PROBED_RUN_COLUMNS: [(&str, &str); 4] =
    [("policy_violations", "TEXT"), ("owner_pid", "INTEGER"), ("job", "TEXT"), ("owner_boot", "TEXT")];

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?.exists(params![table, column])
}

fn baseline(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(BASELINE)?;
    for (column, kind) in PROBED_RUN_COLUMNS {
        if !has_column(conn, "runs", column)? {
            conn.execute_batch(&format!("ALTER TABLE runs ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

fn error_detail_and_interrupted(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "ALTER TABLE runs ADD COLUMN error_detail TEXT;
         UPDATE run_transitions SET status = 'interrupted'
          WHERE status = 'failed'
            AND run_id IN (SELECT id FROM runs WHERE status = 'failed' AND error_code = 'interrupted');
         UPDATE runs SET status = 'interrupted' WHERE status = 'failed' AND error_code = 'interrupted';
         UPDATE jobs SET last_status = 'interrupted'
          WHERE last_run_id IN (SELECT id FROM runs WHERE status = 'interrupted');",
    )
}

fn releases(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE device (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE releases (
             digest TEXT PRIMARY KEY,
             channel TEXT NOT NULL,
             version TEXT NOT NULL,
             document TEXT NOT NULL,
             dir TEXT NOT NULL,
             state TEXT NOT NULL,
             trial_runs INTEGER NOT NULL DEFAULT 0,
             reason TEXT,
             created_at TEXT NOT NULL,
             updated_at TEXT NOT NULL
         );
         CREATE INDEX releases_by_state ON releases (state);
         CREATE TABLE release_events (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             digest TEXT,
             event TEXT NOT NULL,
             code TEXT,
             message TEXT,
             at TEXT NOT NULL
         );",
    )
}

fn run_logs(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE run_logs (
             run_id TEXT NOT NULL REFERENCES runs (id),
             node TEXT NOT NULL,
             text TEXT NOT NULL,
             PRIMARY KEY (run_id, node)
         );",
    )
}

/// The outbox's size, kept as rows come and go, so that bounding it on each
/// report does not count every row (it may hold a million).
fn outbox_totals(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE outbox_totals (
             id INTEGER PRIMARY KEY CHECK (id = 0),
             count INTEGER NOT NULL,
             bytes INTEGER NOT NULL
         );
         INSERT INTO outbox_totals SELECT 0, COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox;
         CREATE TRIGGER outbox_counted AFTER INSERT ON outbox BEGIN
             UPDATE outbox_totals SET count = count + 1, bytes = bytes + NEW.bytes WHERE id = 0;
         END;
         CREATE TRIGGER outbox_uncounted AFTER DELETE ON outbox BEGIN
             UPDATE outbox_totals SET count = count - 1, bytes = bytes - OLD.bytes WHERE id = 0;
         END;
         CREATE TRIGGER outbox_recounted AFTER UPDATE OF bytes ON outbox BEGIN
             UPDATE outbox_totals SET bytes = bytes - OLD.bytes + NEW.bytes WHERE id = 0;
         END;",
    )
}

fn metrics(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("ALTER TABLE runs ADD COLUMN metrics TEXT;")
}

fn retried_as(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("ALTER TABLE runs ADD COLUMN retried_as TEXT;")
}

fn outbox(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE outbox (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             report_id TEXT NOT NULL UNIQUE,
             kind TEXT NOT NULL,
             body TEXT NOT NULL,
             bytes INTEGER NOT NULL,
             pinned INTEGER NOT NULL DEFAULT 0,
             created_at TEXT NOT NULL
         );
         CREATE TABLE outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE dead_letters (
             report_id TEXT NOT NULL,
             body TEXT,
             code TEXT NOT NULL,
             reason TEXT,
             at TEXT NOT NULL
         );",
    )
}

/// The tables keyed by (run, number or node) stored in their keys' order,
/// `WITHOUT ROWID`: a row is one B-tree entry rather than a row plus its
/// key's index entry, so recording a run writes fewer pages (a warm `exec`
/// wrote 9 pages to the WAL, and then 6) and every later `exec` reads
/// fewer to rebuild the WAL's index. Their rows are small, the case SQLite
/// recommends `WITHOUT ROWID` for.
fn without_rowids(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE run_transitions_keyed (
             run_id TEXT NOT NULL REFERENCES runs (id),
             seq INTEGER NOT NULL,
             status TEXT NOT NULL,
             at TEXT NOT NULL,
             PRIMARY KEY (run_id, seq)
         ) WITHOUT ROWID;
         INSERT INTO run_transitions_keyed SELECT run_id, seq, status, at FROM run_transitions;
         DROP TABLE run_transitions;
         ALTER TABLE run_transitions_keyed RENAME TO run_transitions;
         CREATE TABLE node_runs_keyed (
             run_id TEXT NOT NULL REFERENCES runs (id),
             seq INTEGER NOT NULL,
             node TEXT NOT NULL,
             record TEXT NOT NULL,
             PRIMARY KEY (run_id, seq)
         ) WITHOUT ROWID;
         INSERT INTO node_runs_keyed SELECT run_id, seq, node, record FROM node_runs;
         DROP TABLE node_runs;
         ALTER TABLE node_runs_keyed RENAME TO node_runs;
         CREATE TABLE run_logs_keyed (
             run_id TEXT NOT NULL REFERENCES runs (id),
             node TEXT NOT NULL,
             text TEXT NOT NULL,
             PRIMARY KEY (run_id, node)
         ) WITHOUT ROWID;
         INSERT INTO run_logs_keyed SELECT run_id, node, text FROM run_logs;
         DROP TABLE run_logs;
         ALTER TABLE run_logs_keyed RENAME TO run_logs;",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema as wfrun wrote it before versioning, with a run of each
    /// kind that must survive.
    fn unversioned(conn: &Connection, with_probed_columns: bool) {
        let schema = if with_probed_columns {
            BASELINE.to_owned()
        } else {
            BASELINE
                .replace(
                    "    policy_violations TEXT,\n    owner_pid INTEGER,\n    job TEXT,\n    owner_boot TEXT\n",
                    "",
                )
                .replace("peak_memory_bytes INTEGER,\n);", "peak_memory_bytes INTEGER\n);")
        };
        conn.execute_batch(&schema).unwrap();
        for (id, status, code) in [("ok", "succeeded", None), ("crashed", "failed", Some("interrupted"))] {
            conn.execute(
                "INSERT INTO runs (id, workflow, version, kind, bundle_path, bundle_digest, status, error_code, created_at)
                 VALUES (?1, 'w', '1', 'node', 'b.wasm', 'sha256:00', ?2, ?3, '2026-01-01T00:00:00Z')",
                params![id, status, code],
            )
            .unwrap();
            conn.execute("INSERT INTO run_transitions VALUES (?1, 0, ?2, '2026-01-01T00:00:00Z')", params![id, status])
                .unwrap();
        }
    }

    #[test]
    fn a_database_made_before_versioning_is_migrated_with_its_runs() {
        for with_probed_columns in [true, false] {
            let conn = Connection::open_in_memory().unwrap();
            unversioned(&conn, with_probed_columns);
            assert_eq!(migrate(&conn).unwrap(), Outcome::Current);
            assert_eq!(version(&conn).unwrap(), LATEST);
            assert!(has_column(&conn, "runs", "error_detail").unwrap());
            assert!(has_column(&conn, "runs", "owner_boot").unwrap());
            let status = |id: &str| -> String {
                conn.query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get(0)).unwrap()
            };
            assert_eq!(status("ok"), "succeeded");
            assert_eq!(status("crashed"), "interrupted");
            let history: String = conn
                .query_row("SELECT status FROM run_transitions WHERE run_id = 'crashed'", [], |r| r.get(0))
                .unwrap();
            assert_eq!(history, "interrupted");
            // Opening again changes nothing.
            assert_eq!(migrate(&conn).unwrap(), Outcome::Current);
        }
    }

    #[test]
    fn run_histories_keep_every_transition_node_record_and_log_through_the_move_to_keyed_tables() {
        let conn = Connection::open_in_memory().unwrap();
        // A database at the version before the move, with a run's history.
        for migration in &MIGRATIONS[..8] {
            (migration.apply)(&conn).unwrap();
        }
        conn.pragma_update(None, "user_version", 8).unwrap();
        conn.execute_batch(
            "INSERT INTO runs (id, workflow, version, kind, bundle_path, bundle_digest, status, created_at)
                 VALUES ('r', 'w', '1', 'workflow', 'b.wasm', 'sha256:00', 'succeeded', '2026-01-01T00:00:00Z');
             INSERT INTO run_transitions VALUES ('r', 0, 'pending', 't0'), ('r', 1, 'running', 't1'),
                 ('r', 2, 'succeeded', 't2');
             INSERT INTO node_runs VALUES ('r', 0, 'a', '{\"node\":\"a\"}'), ('r', 1, 'b', '{\"node\":\"b\"}');
             INSERT INTO run_logs VALUES ('r', 'a', 'log of a'), ('r', 'b', 'log of b');",
        )
        .unwrap();
        assert_eq!(migrate(&conn).unwrap(), Outcome::Current);
        let rows = |sql: &str| -> Vec<String> {
            conn.prepare(sql).unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(
            rows("SELECT seq || ' ' || status || ' ' || at FROM run_transitions WHERE run_id = 'r' ORDER BY seq"),
            ["0 pending t0", "1 running t1", "2 succeeded t2"]
        );
        assert_eq!(
            rows("SELECT seq || ' ' || node || ' ' || record FROM node_runs WHERE run_id = 'r' ORDER BY seq"),
            ["0 a {\"node\":\"a\"}", "1 b {\"node\":\"b\"}"]
        );
        assert_eq!(
            rows("SELECT node || ' ' || text FROM run_logs WHERE run_id = 'r' ORDER BY node"),
            ["a log of a", "b log of b"]
        );
        // Each a keyed table now, and the keys still hold.
        for table in ["run_transitions", "node_runs", "run_logs"] {
            let keyed: i64 = conn.query_row("SELECT wr FROM pragma_table_list(?1)", [table], |r| r.get(0)).unwrap();
            assert_eq!(keyed, 1, "{table}");
        }
        assert!(conn.execute("INSERT INTO run_transitions VALUES ('r', 2, 'failed', 't3')", []).is_err());
    }

    #[test]
    fn a_newer_database_is_left_alone() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", LATEST + 1).unwrap();
        assert_eq!(migrate(&conn).unwrap(), Outcome::TooNew { found: LATEST + 1 });
    }
}
