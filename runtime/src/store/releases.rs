//! Releases on this device: identity, each release's state, and its events.
//!
//! A release moves `downloading → staged → trial → committed`, or
//! `trial → rolled_back`;
//! a committed release becomes `superseded` when a later one commits. At
//! most one release is in `trial` and one is `committed` (the last known
//! good) at any time. Every transition is one SQLite transaction, committed
//! with `synchronous = FULL`, and writes its event to `release_events` in
//! the same transaction, so a kill -9 leaves the state before or after it,
//! never between. A rolled-back release's digest is never staged again
//! ([`Store::bad_releases`]).
//!
//! The device's id (a UUIDv7 made once) and the highest time it has seen
//! (from its clock and from signed metadata) live in `device`.

use super::{Store, StoreError, now};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Where a release is in its life on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Verified document recorded; its bundles are being downloaded (a
    /// crash here resumes at the next poll).
    Downloading,
    /// Its bundles are verified and written; not running.
    Staged,
    /// Running, on probation until its health gate passes.
    Trial,
    /// Passed its trial: the last known good.
    Committed,
    /// Failed its trial; never tried again here.
    RolledBack,
    /// Was committed; a later release has committed since.
    Superseded,
}

impl ReleaseState {
    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Downloading => "downloading",
            ReleaseState::Staged => "staged",
            ReleaseState::Trial => "trial",
            ReleaseState::Committed => "committed",
            ReleaseState::RolledBack => "rolled_back",
            ReleaseState::Superseded => "superseded",
        }
    }

    fn parse(text: &str) -> Option<ReleaseState> {
        [
            ReleaseState::Downloading,
            ReleaseState::Staged,
            ReleaseState::Trial,
            ReleaseState::Committed,
            ReleaseState::RolledBack,
            ReleaseState::Superseded,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A release as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// `sha256:<hex>` of its release document.
    pub digest: String,
    /// Its channel.
    pub channel: String,
    /// Its version.
    pub version: String,
    /// The release document, as JSON.
    pub document: String,
    /// Where its bundles are staged.
    pub dir: String,
    /// Its state.
    pub state: ReleaseState,
    /// Successful runs counted in its trial.
    pub trial_runs: u32,
    /// Why it is in its state, when that needs saying (a rollback's cause).
    pub reason: Option<String>,
    /// When it was staged.
    pub created_at: String,
    /// When its state last changed.
    pub updated_at: String,
}

/// One thing that happened to a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEvent {
    /// Its order.
    pub seq: i64,
    /// The release's digest, if the event concerns one.
    pub digest: Option<String>,
    /// `staged`, `trial`, `committed`, `rolled_back`, `refused`.
    pub event: String,
    /// A stable code (for a refusal: the gate's or the sync error's).
    pub code: Option<String>,
    /// In words.
    pub message: Option<String>,
    /// When.
    pub at: String,
}

/// Why a transition was not made.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The release is not in a state the transition starts from.
    #[error("release {digest} is {state:?}, not {expected}")]
    WrongState {
        /// The release.
        digest: String,
        /// Its state (`None`: no such release).
        state: Option<ReleaseState>,
        /// What the transition needs.
        expected: &'static str,
    },
}

const COLUMNS: &str = "digest, channel, version, document, dir, state, trial_runs, reason, created_at, updated_at";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReleaseRecord> {
    let state: String = r.get(5)?;
    Ok(ReleaseRecord {
        digest: r.get(0)?,
        channel: r.get(1)?,
        version: r.get(2)?,
        document: r.get(3)?,
        dir: r.get(4)?,
        state: ReleaseState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, format!("state {state:?}").into())
        })?,
        trial_runs: r.get(6)?,
        reason: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

impl Store {
    /// This device's id: a UUIDv7 made the first time it is asked for, and
    /// kept.
    pub fn device_id(&self) -> Result<String, StoreError> {
        let fresh = uuid::Uuid::now_v7().to_string();
        self.write_durably(|tx| {
            tx.execute("INSERT OR IGNORE INTO device (key, value) VALUES ('device_id', ?1)", params![fresh])?;
            tx.query_row("SELECT value FROM device WHERE key = 'device_id'", [], |r| r.get(0))
        })
    }

    /// Records `seen` (seconds since the epoch) if it is later than the
    /// highest time seen so far, and returns the highest: a clock that jumps
    /// back cannot move it back.
    pub fn highest_time(&self, seen: i64) -> Result<i64, StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO device (key, value) VALUES ('highest_time', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                params![seen.to_string()],
            )?;
            tx.query_row("SELECT CAST(value AS INTEGER) FROM device WHERE key = 'highest_time'", [], |r| r.get(0))
        })
    }

    /// Counts one more start of the daemon while release `digest` is in
    /// trial; returns the count.
    pub fn note_trial_restart(&self, digest: &str) -> Result<u32, StoreError> {
        let key = format!("trial_restarts:{digest}");
        self.write_durably(|tx| {
            tx.execute(
                "INSERT INTO device (key, value) VALUES (?1, '1')
                 ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                params![key],
            )?;
            tx.query_row("SELECT CAST(value AS INTEGER) FROM device WHERE key = ?1", params![key], |r| r.get(0))
        })
    }

    /// Records a release whose verified document says what to download
    /// (or finds it already recorded, in whatever state).
    pub fn record_downloading(
        &self,
        digest: &str,
        channel: &str,
        version: &str,
        document: &str,
        dir: &str,
    ) -> Result<ReleaseRecord, StoreError> {
        let at = now();
        self.write_durably(|tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO releases (digest, channel, version, document, dir, state, trial_runs, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'downloading', 0, ?6, ?6)",
                params![digest, channel, version, document, dir, at],
            )?;
            if inserted > 0 {
                event(tx, Some(digest), "downloading", None, Some(&format!("{channel} {version}")), &at)?;
            }
            tx.query_row(&format!("SELECT {COLUMNS} FROM releases WHERE digest = ?1"), params![digest], record)
        })
    }

    /// Records a staged release: a new one, or one that was downloading
    /// (any other state is left as it is).
    pub fn record_staged(
        &self,
        digest: &str,
        channel: &str,
        version: &str,
        document: &str,
        dir: &str,
    ) -> Result<ReleaseRecord, StoreError> {
        let at = now();
        self.write_durably(|tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO releases (digest, channel, version, document, dir, state, trial_runs, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'staged', 0, ?6, ?6)",
                params![digest, channel, version, document, dir, at],
            )?;
            let finished = tx.execute(
                "UPDATE releases SET state = 'staged', updated_at = ?2 WHERE digest = ?1 AND state = 'downloading'",
                params![digest, at],
            )?;
            if inserted + finished > 0 {
                event(tx, Some(digest), "staged", None, Some(&format!("{channel} {version}")), &at)?;
            }
            tx.query_row(&format!("SELECT {COLUMNS} FROM releases WHERE digest = ?1"), params![digest], record)
        })
    }

    fn transition(
        &self,
        digest: &str,
        from: &[ReleaseState],
        expected: &'static str,
        apply: impl FnOnce(&rusqlite::Connection, &str) -> rusqlite::Result<()>,
    ) -> Result<ReleaseRecord, TransitionError> {
        let at = now();
        let outcome = self.write_durably(|tx| {
            let state: Option<String> = tx
                .query_row("SELECT state FROM releases WHERE digest = ?1", params![digest], |r| r.get(0))
                .optional()?;
            let state = state.as_deref().and_then(ReleaseState::parse);
            if !state.is_some_and(|s| from.contains(&s)) {
                return Ok(Err(state));
            }
            apply(tx, &at)?;
            tx.query_row(&format!("SELECT {COLUMNS} FROM releases WHERE digest = ?1"), params![digest], record).map(Ok)
        })?;
        outcome.map_err(|state| TransitionError::WrongState { digest: digest.to_owned(), state, expected })
    }

    /// Starts a staged release's trial. A release already in trial is
    /// rolled back first (only one trial at a time).
    pub fn begin_trial(&self, digest: &str) -> Result<ReleaseRecord, TransitionError> {
        self.transition(digest, &[ReleaseState::Staged], "staged", |tx, at| {
            let in_trial: Vec<String> = tx
                .prepare("SELECT digest FROM releases WHERE state = 'trial'")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for other in in_trial {
                let why = "another release started its trial before this one passed";
                tx.execute(
                    "UPDATE releases SET state = 'rolled_back', reason = ?2, updated_at = ?3 WHERE digest = ?1",
                    params![other, why, at],
                )?;
                event(tx, Some(&other), "rolled_back", Some("superseded_in_trial"), Some(why), at)?;
            }
            tx.execute(
                "UPDATE releases SET state = 'trial', trial_runs = 0, reason = NULL, updated_at = ?2 WHERE digest = ?1",
                params![digest, at],
            )?;
            event(tx, Some(digest), "trial", None, None, at)
        })
    }

    /// Counts a successful run of the release in trial; returns the count.
    pub fn count_trial_run(&self, digest: &str) -> Result<u32, TransitionError> {
        let record = self.transition(digest, &[ReleaseState::Trial], "trial", |tx, at| {
            tx.execute(
                "UPDATE releases SET trial_runs = trial_runs + 1, updated_at = ?2 WHERE digest = ?1",
                params![digest, at],
            )?;
            Ok(())
        })?;
        Ok(record.trial_runs)
    }

    /// Commits the release in trial: it becomes the last known good, and the
    /// one before it `superseded`.
    pub fn commit(&self, digest: &str) -> Result<ReleaseRecord, TransitionError> {
        self.transition(digest, &[ReleaseState::Trial], "trial", |tx, at| {
            tx.execute(
                "UPDATE releases SET state = 'superseded', updated_at = ?1 WHERE state = 'committed'",
                params![at],
            )?;
            tx.execute(
                "UPDATE releases SET state = 'committed', updated_at = ?2 WHERE digest = ?1",
                params![digest, at],
            )?;
            event(tx, Some(digest), "committed", None, None, at)
        })
    }

    /// Rolls back the release in trial (or a staged one that cannot start),
    /// with the reason's stable `code`: it is never staged again.
    pub fn roll_back(&self, digest: &str, code: &str, message: &str) -> Result<ReleaseRecord, TransitionError> {
        self.transition(digest, &[ReleaseState::Trial, ReleaseState::Staged], "trial or staged", |tx, at| {
            tx.execute(
                "UPDATE releases SET state = 'rolled_back', reason = ?2, updated_at = ?3 WHERE digest = ?1",
                params![digest, message, at],
            )?;
            event(tx, Some(digest), "rolled_back", Some(code), Some(message), at)
        })
    }

    /// Rolls back the committed release by hand: it is marked bad, and the
    /// release it superseded most recently is committed again.
    pub fn revert_committed(&self, digest: &str, message: &str) -> Result<ReleaseRecord, TransitionError> {
        self.transition(digest, &[ReleaseState::Committed], "committed", |tx, at| {
            tx.execute(
                "UPDATE releases SET state = 'rolled_back', reason = ?2, updated_at = ?3 WHERE digest = ?1",
                params![digest, message, at],
            )?;
            event(tx, Some(digest), "rolled_back", Some("operator"), Some(message), at)?;
            let previous: Option<String> = tx
                .query_row(
                    "SELECT digest FROM releases WHERE state = 'superseded' ORDER BY updated_at DESC, created_at DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(previous) = previous {
                tx.execute(
                    "UPDATE releases SET state = 'committed', updated_at = ?2 WHERE digest = ?1",
                    params![previous, at],
                )?;
                event(tx, Some(&previous), "committed", Some("operator"), Some("restored by a rollback"), at)?;
            }
            Ok(())
        })
    }

    /// Records a release that was refused before staging, unless the last
    /// event already says the same (a bad release a channel keeps offering
    /// is recorded once, not at every poll).
    pub fn record_refusal(&self, digest: Option<&str>, code: &str, message: &str) -> Result<(), StoreError> {
        let at = now();
        self.write_durably(|tx| {
            let last: Option<(String, Option<String>, Option<String>)> = tx
                .query_row("SELECT event, code, message FROM release_events ORDER BY seq DESC LIMIT 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            if last
                .is_some_and(|(e, c, m)| e == "refused" && c.as_deref() == Some(code) && m.as_deref() == Some(message))
            {
                return Ok(());
            }
            event(tx, digest, "refused", Some(code), Some(message), &at)
        })
    }

    /// The release in trial, if any.
    pub fn release_in(&self, state: ReleaseState) -> Result<Option<ReleaseRecord>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM releases WHERE state = ?1 ORDER BY updated_at DESC LIMIT 1"),
                params![state.as_str()],
                record,
            )
            .optional()
        })
    }

    /// When release `digest`'s (latest) trial began.
    pub fn trial_started_at(&self, digest: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT at FROM release_events WHERE digest = ?1 AND event = 'trial' ORDER BY seq DESC LIMIT 1",
                params![digest],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Every release in `state`, newest first.
    pub fn releases_in(&self, state: ReleaseState) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.read(|conn| {
            conn.prepare(&format!("SELECT {COLUMNS} FROM releases WHERE state = ?1 ORDER BY updated_at DESC"))?
                .query_map(params![state.as_str()], record)?
                .collect()
        })
    }

    /// The digests of releases rolled back on this device.
    pub fn bad_releases(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            conn.prepare("SELECT digest FROM releases WHERE state = 'rolled_back' ORDER BY digest")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
    }

    /// Release events, newest first.
    pub fn release_events(&self, limit: usize) -> Result<Vec<ReleaseEvent>, StoreError> {
        self.read(|conn| {
            conn.prepare("SELECT seq, digest, event, code, message, at FROM release_events ORDER BY seq DESC LIMIT ?1")?
                .query_map(params![limit as i64], |r| {
                    Ok(ReleaseEvent {
                        seq: r.get(0)?,
                        digest: r.get(1)?,
                        event: r.get(2)?,
                        code: r.get(3)?,
                        message: r.get(4)?,
                        at: r.get(5)?,
                    })
                })?
                .collect()
        })
    }
}

fn event(
    tx: &rusqlite::Connection,
    digest: Option<&str>,
    event: &str,
    code: Option<&str>,
    message: Option<&str>,
    at: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO release_events (digest, event, code, message, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![digest, event, code, message, at],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(store: &Store, digest: &str, version: &str) -> ReleaseRecord {
        store.record_staged(digest, "stable", version, "{}", "/staging").unwrap()
    }

    #[test]
    fn a_download_is_recorded_before_its_files_and_finished_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store.record_downloading("sha256:a", "stable", "1.0.0", "{}", "/staging").unwrap();
        assert_eq!(first.state, ReleaseState::Downloading);
        assert!(store.begin_trial("sha256:a").is_err(), "a release still downloading cannot start");
        // A crash and a restart: the next poll records it again, then finishes it.
        store.record_downloading("sha256:a", "stable", "1.0.0", "{}", "/staging").unwrap();
        assert_eq!(stage(&store, "sha256:a", "1.0.0").state, ReleaseState::Staged);
        store.begin_trial("sha256:a").unwrap();
        assert_eq!(stage(&store, "sha256:a", "1.0.0").state, ReleaseState::Trial, "staging again changes nothing");
        assert_eq!(
            store.record_downloading("sha256:a", "stable", "1.0.0", "{}", "/staging").unwrap().state,
            ReleaseState::Trial
        );
        let events: Vec<String> = store.release_events(100).unwrap().into_iter().rev().map(|e| e.event).collect();
        assert_eq!(events, ["downloading", "staged", "trial"]);
    }

    #[test]
    fn a_release_goes_from_staged_through_trial_to_committed_or_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(stage(&store, "sha256:a", "1.0.0").state, ReleaseState::Staged);
        assert_eq!(stage(&store, "sha256:a", "1.0.0").state, ReleaseState::Staged, "staging again changes nothing");
        assert!(matches!(store.commit("sha256:a"), Err(TransitionError::WrongState { .. })), "commit needs a trial");
        store.begin_trial("sha256:a").unwrap();
        assert_eq!(store.count_trial_run("sha256:a").unwrap(), 1);
        assert_eq!(store.count_trial_run("sha256:a").unwrap(), 2);
        assert_eq!(store.commit("sha256:a").unwrap().state, ReleaseState::Committed);

        stage(&store, "sha256:b", "1.1.0");
        store.begin_trial("sha256:b").unwrap();
        let rolled = store.roll_back("sha256:b", "trap", "its first run trapped").unwrap();
        assert_eq!(rolled.state, ReleaseState::RolledBack);
        assert_eq!(
            store.release_in(ReleaseState::Committed).unwrap().unwrap().digest,
            "sha256:a",
            "still the last good"
        );
        assert_eq!(store.bad_releases().unwrap(), ["sha256:b"]);
        assert!(store.begin_trial("sha256:b").is_err(), "a rolled-back release never starts again");

        stage(&store, "sha256:c", "1.2.0");
        store.begin_trial("sha256:c").unwrap();
        store.commit("sha256:c").unwrap();
        let a = store
            .read(|c| {
                c.query_row("SELECT state FROM releases WHERE digest = 'sha256:a'", [], |r| r.get::<_, String>(0))
            })
            .unwrap();
        assert_eq!(a, "superseded");
        store.record_refusal(None, "known_bad", "offered again").unwrap();
        store.record_refusal(None, "known_bad", "offered again").unwrap();
        let events: Vec<String> = store.release_events(100).unwrap().into_iter().rev().map(|e| e.event).collect();
        assert_eq!(
            events,
            [
                "staged",
                "trial",
                "committed",
                "staged",
                "trial",
                "rolled_back",
                "staged",
                "trial",
                "committed",
                "refused"
            ],
            "a refusal repeated at every poll is recorded once"
        );
    }

    #[test]
    fn reverting_the_committed_release_brings_back_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (digest, version) in [("sha256:a", "1.0.0"), ("sha256:b", "2.0.0")] {
            stage(&store, digest, version);
            store.begin_trial(digest).unwrap();
            store.commit(digest).unwrap();
        }
        store.revert_committed("sha256:b", "by hand").unwrap();
        assert_eq!(store.release_in(ReleaseState::Committed).unwrap().unwrap().digest, "sha256:a");
        assert_eq!(store.bad_releases().unwrap(), ["sha256:b"]);
        assert!(store.revert_committed("sha256:b", "again").is_err());
    }

    #[test]
    fn the_device_keeps_its_id_and_the_highest_time_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        let id = Store::open(dir.path()).unwrap().device_id().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.device_id().unwrap(), id, "made once, kept");
        assert_eq!(store.highest_time(1_000).unwrap(), 1_000);
        assert_eq!(store.highest_time(900).unwrap(), 1_000, "a clock that jumps back does not move it back");
        assert_eq!(store.highest_time(2_000).unwrap(), 2_000);
    }
}
