//! Release transitions under kill -9: a process moving releases through
//! their states is killed at random points, again and again; the database
//! must stay whole and its invariants hold after every kill.

use std::process::Command;
use std::time::Duration;
use wfrun_runtime::store::Store;

const CHILD_DIR: &str = "WFRUN_TEST_KILL_CHILD_DIR";

/// Run by the test below in a child process, not on its own: moves
/// releases through stage, trial, runs, commit or rollback, forever.
#[test]
#[ignore = "a child process of release_transitions_survive_kill_9"]
fn release_transition_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
    let store = Store::open(std::path::Path::new(&dir)).unwrap();
    // Digests of their own for each child: pid × 10^6 onwards.
    let start = u64::from(std::process::id()) * 1_000_000;
    for i in start.. {
        let digest = format!("sha256:{i:08}");
        store.record_staged(&digest, "stable", &format!("1.0.{i}"), "{}", "/staging").unwrap();
        store.begin_trial(&digest).unwrap();
        store.count_trial_run(&digest).unwrap();
        if i % 3 == 0 {
            store.roll_back(&digest, "trap", "a trial run trapped").unwrap();
        } else {
            store.commit(&digest).unwrap();
        }
    }
}

#[test]
fn release_transitions_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    let exe = std::env::current_exe().unwrap();
    for round in 0..25u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "durability::release_transition_child", "--ignored", "--test-threads", "1"])
            .env(CHILD_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + (round * 37) % 90));
        child.kill().unwrap();
        child.wait().unwrap();

        // Opening migrates and checks the database as a restarted daemon would.
        Store::open(dir.path()).unwrap();
        let db = rusqlite::Connection::open(dir.path().join("wfrun.db")).unwrap();
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok", "round {round}");
        let count = |state: &str| -> i64 {
            db.query_row("SELECT COUNT(*) FROM releases WHERE state = ?1", [state], |r| r.get(0)).unwrap()
        };
        assert!(count("trial") <= 1, "round {round}: more than one release in trial");
        assert!(count("committed") <= 1, "round {round}: more than one last known good");
        // Every state a release is in was reached by an event recorded with it.
        let unexplained: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM releases r WHERE r.state IN ('trial', 'committed', 'rolled_back')
                 AND NOT EXISTS (SELECT 1 FROM release_events e WHERE e.digest = r.digest
                                 AND e.event = (CASE r.state WHEN 'trial' THEN 'trial' ELSE r.state END))",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unexplained, 0, "round {round}: a state without its event");
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(store.release_events(1).unwrap().first().is_some_and(|e| e.seq > 0), "the child made progress");
}
