//! The report outbox: what the device still owes the operator.
//!
//! With reporting on ([`Store::enable_outbox`]), every finished run (of any
//! status, a rejected one included) and every release event writes its
//! [`Report`] into the `outbox` table **in the same SQLite transaction** as
//! the run record or the release transition, committed with
//! `synchronous = FULL`: once a run is recorded, its report survives a
//! kill -9 and a power loss. The uploader takes batches in order
//! ([`Store::outbox_batch`]) and deletes only what the receiver
//! acknowledged ([`Store::acknowledge`]).
//!
//! The outbox is bounded by count and by bytes ([`OutboxLimits`]). When a
//! new report would pass a bound, the **oldest** reports are dropped (a run
//! never waits or fails for it), and the drop is counted: how many, and the
//! first and last dropped report ids (a report of the batch in flight
//! that was dropped but then acknowledged is not counted). The next batch carries that count as
//! a report of its own (`kind = "outbox_dropped"`), which is never dropped;
//! one such notice waits at a time, and drops after it are counted for the
//! next, so a long outage cannot fill the outbox with notices.
//! A row whose body does not parse is moved to the dead letters and counted,
//! never handed out again. Reports the receiver refuses one by one go to the
//! dead letters too ([`Store::dead_letter`]), kept and counted.

use super::runs::RunRecord;
use super::{Store, StoreError, now};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// The report schema version this wfrun writes.
pub const REPORT_SCHEMA: u32 = 1;

/// How big the outbox may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// The most reports it keeps.
    pub max_reports: u64,
    /// The most bytes of report bodies it keeps.
    pub max_bytes: u64,
}

impl Default for OutboxLimits {
    /// 10,000 reports or 16 MiB: days of a job every minute on a small
    /// device.
    fn default() -> Self {
        OutboxLimits { max_reports: 10_000, max_bytes: 16 * 1024 * 1024 }
    }
}

/// Who is reporting: fixed for a daemon's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    /// The device id (`[device] id`, or the one made once).
    pub device_id: String,
    /// This runner's version.
    pub runner_version: String,
    /// The bounds.
    pub limits: OutboxLimits,
}

/// The metrics of a run's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Wall time.
    pub duration_ms: Option<f64>,
    /// Node attempts beyond the first, over all nodes.
    pub retry_count: u32,
    /// Nodes recorded.
    pub node_count: u32,
    /// Fuel over all nodes.
    pub fuel_consumed: Option<u64>,
    /// Largest linear memory of any node.
    pub peak_memory_bytes: Option<u64>,
    /// What the guest recorded through the `metrics` import.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub guest: std::collections::BTreeMap<String, crate::outcome::Metric>,
}

/// One report, as uploaded (`docs/reports.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_SCHEMA`].
    pub schema: u32,
    /// UUIDv7; also the idempotency key.
    pub report_id: String,
    /// `run`, `release` or `outbox_dropped`.
    pub kind: String,
    /// The device.
    pub device_id: String,
    /// The runner's version.
    pub runner_version: String,
    /// When the report was written.
    pub created_at: String,
    /// For `kind = "run"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunReportBody>,
    /// For `kind = "release"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseReportBody>,
    /// For `kind = "outbox_dropped"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Dropped>,
}

/// What a run report says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReportBody {
    /// The run id.
    pub execution_id: String,
    /// The workflow name.
    pub workflow_id: String,
    /// The workflow version.
    pub bundle_version: String,
    /// `sha256:<hex>` of the bundle.
    pub bundle_digest: String,
    /// The daemon job.
    pub job: Option<String>,
    /// How it ended: `succeeded`, `failed`, `cancelled`, `interrupted`.
    pub status: String,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Why it failed.
    pub error_code: Option<String>,
    /// The finer reason.
    pub error_detail: Option<String>,
    /// In words.
    pub error_message: Option<String>,
    /// Its numbers.
    pub metrics: RunMetrics,
    /// Requests and connections the egress policy refused.
    pub policy_violations: Vec<crate::outcome::PolicyViolation>,
}

/// What a release report says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReportBody {
    /// `downloading`, `staged`, `trial` (activated), `committed`,
    /// `rolled_back`, `refused`.
    pub event: String,
    /// The release's document digest, if the event concerns one.
    pub digest: Option<String>,
    /// Its channel.
    pub channel: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// A stable code (a refusal's or a rollback's).
    pub code: Option<String>,
    /// In words.
    pub message: Option<String>,
    /// When it happened.
    pub at: String,
}

/// What the outbox dropped since the last such report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Reports dropped because the outbox was full.
    pub count: u64,
    /// The first dropped report's id.
    pub first_report_id: Option<String>,
    /// The last dropped report's id.
    pub last_report_id: Option<String>,
    /// Rows that did not parse, moved to the dead letters.
    pub corrupt: u64,
}

/// A report taken from the outbox for upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// Its place in the outbox.
    pub seq: i64,
    /// Its id.
    pub report_id: String,
    /// Its JSON, as stored.
    pub body: String,
}

/// The outbox's numbers, for status and heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Reports waiting.
    pub depth: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Reports dropped since the outbox was made (full outbox).
    pub dropped_total: u64,
    /// Reports in the dead letters.
    pub dead_letters: u64,
}

/// The outbox's report count and bytes.
fn totals(conn: &rusqlite::Connection) -> rusqlite::Result<(u64, u64)> {
    // Kept by triggers (migration 8): reading them costs the same whatever
    // the outbox holds.
    conn.prepare_cached("SELECT count, bytes FROM outbox_totals WHERE id = 0")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64)))
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn meta(tx: &rusqlite::Connection, key: &str) -> rusqlite::Result<Option<String>> {
    tx.query_row("SELECT value FROM outbox_meta WHERE key = ?1", params![key], |r| r.get(0)).optional()
}

fn set_meta(tx: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO outbox_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
    )?
    .execute(params![key, value])?;
    Ok(())
}

fn add_meta(tx: &Connection, key: &str, by: u64) -> rusqlite::Result<()> {
    let value = meta(tx, key)?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + by;
    set_meta(tx, key, &value.to_string())
}

/// The body of run `run`'s report.
pub fn run_body(run: &RunRecord) -> RunReportBody {
    let retry_count = run.nodes.iter().map(|n| n.attempts.saturating_sub(1)).sum();
    RunReportBody {
        execution_id: run.run_id.clone(),
        workflow_id: run.workflow.clone(),
        bundle_version: run.version.clone(),
        bundle_digest: run.bundle_digest.clone(),
        job: run.job.clone(),
        status: run.status.as_str().to_owned(),
        started_at: run.created_at.clone(),
        finished_at: run.finished_at.clone(),
        error_code: run.error_code.map(|c| c.as_str().to_owned()),
        error_detail: run.error_detail.clone(),
        error_message: run.error_message.clone(),
        metrics: RunMetrics {
            duration_ms: run.duration_ms,
            retry_count,
            node_count: run.nodes.len() as u32,
            fuel_consumed: run.fuel_consumed,
            peak_memory_bytes: run.peak_memory_bytes,
            guest: run.metrics.clone(),
        },
        policy_violations: run.policy_violations.clone(),
    }
}

impl Reporter {
    fn report(&self, kind: &str) -> Report {
        Report {
            schema: REPORT_SCHEMA,
            report_id: new_id(),
            kind: kind.to_owned(),
            device_id: self.device_id.clone(),
            runner_version: self.runner_version.clone(),
            created_at: now(),
            run: None,
            release: None,
            dropped: None,
        }
    }

    /// Writes run `run_id`'s report (read back inside `tx`).
    pub(super) fn enqueue_run(&self, tx: &Connection, run_id: &str) -> rusqlite::Result<()> {
        let Some(run) = super::runs::load_run(tx, run_id)? else { return Ok(()) };
        let report = Report { run: Some(run_body(&run)), ..self.report("run") };
        self.enqueue(tx, &report, false)
    }

    /// Writes a release event's report.
    pub(super) fn enqueue_release(&self, tx: &Connection, body: ReleaseReportBody) -> rusqlite::Result<()> {
        let report = Report { release: Some(body), ..self.report("release") };
        self.enqueue(tx, &report, false)
    }

    /// Writes the reports of the release events recorded since the last
    /// ones reported (in the transaction that recorded them).
    pub(super) fn enqueue_release_events(&self, tx: &Connection) -> rusqlite::Result<()> {
        let after: i64 = meta(tx, "release_events_reported")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut stmt = tx.prepare(
            "SELECT e.seq, e.digest, e.event, e.code, e.message, e.at, r.channel, r.version
             FROM release_events e LEFT JOIN releases r ON r.digest = e.digest WHERE e.seq > ?1 ORDER BY e.seq",
        )?;
        let events: Vec<(i64, ReleaseReportBody)> = stmt
            .query_map(params![after], |r| {
                Ok((
                    r.get(0)?,
                    ReleaseReportBody {
                        digest: r.get(1)?,
                        event: r.get(2)?,
                        code: r.get(3)?,
                        message: r.get(4)?,
                        at: r.get(5)?,
                        channel: r.get(6)?,
                        version: r.get(7)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        drop(stmt);
        let mut last = after;
        for (seq, body) in events {
            self.enqueue_release(tx, body)?;
            last = seq;
        }
        set_meta(tx, "release_events_reported", &last.to_string())
    }

    /// Inserts `report`, then drops the oldest unpinned reports past the
    /// bounds, counting them.
    fn enqueue(&self, tx: &Connection, report: &Report, pinned: bool) -> rusqlite::Result<()> {
        let body = serde_json::to_string(report).expect("reports serialise");
        tx.prepare_cached(
            "INSERT INTO outbox (report_id, kind, body, bytes, pinned, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            report.report_id,
            report.kind,
            body,
            body.len() as i64,
            pinned,
            report.created_at
        ])?;
        if pinned {
            return Ok(()); // a drop notice takes no one's place
        }
        let (mut count, mut bytes) = totals(tx)?;
        while count > self.limits.max_reports || bytes > self.limits.max_bytes {
            let oldest: Option<(i64, String, i64)> = tx
                .query_row("SELECT seq, report_id, bytes FROM outbox WHERE pinned = 0 ORDER BY seq LIMIT 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let Some((seq, id, size)) = oldest else { break };
            tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?.execute(params![seq])?;
            if meta(tx, "in_flight")?.is_some_and(|ids| ids.split(' ').any(|i| i == id)) {
                let mut dropped = meta(tx, "in_flight_dropped")?.unwrap_or_default();
                dropped.push(' ');
                dropped.push_str(&id);
                set_meta(tx, "in_flight_dropped", dropped.trim())?;
            }
            add_meta(tx, "dropped", 1)?;
            add_meta(tx, "dropped_total", 1)?;
            if meta(tx, "dropped_first")?.is_none() {
                set_meta(tx, "dropped_first", &id)?;
            }
            set_meta(tx, "dropped_last", &id)?;
            count -= 1;
            bytes = bytes.saturating_sub(size as u64);
        }
        Ok(())
    }
}

impl Store {
    /// Turns reporting on: from now, runs and release events write reports
    /// into the outbox. Set once, by the daemon, at start.
    pub fn enable_outbox(&self, reporter: Reporter) -> Result<(), StoreError> {
        // History from before reporting was on is not news.
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO outbox_meta (key, value)
                 SELECT 'release_events_reported', COALESCE(MAX(seq), 0) FROM release_events",
            )?
            .execute([])?;
            Ok(())
        })?;
        let _ = self.reporter.set(reporter);
        Ok(())
    }

    /// The reporter, if reporting is on.
    pub(super) fn reporter(&self) -> Option<&Reporter> {
        self.reporter.get()
    }

    /// Up to `max_reports` reports, oldest first, of at most `max_bytes`
    /// together (always at least one). A pending drop count becomes a
    /// report first; a row that does not parse goes to the dead letters.
    pub fn outbox_batch(&self, max_reports: usize, max_bytes: u64) -> Result<Vec<Queued>, StoreError> {
        let reporter = self.reporter().cloned();
        self.write_durably(|tx| {
            let dropped = meta(tx, "dropped")?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let corrupt = meta(tx, "corrupt")?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // One notice waits at a time: while the receiver is away, later
            // drops add to the count kept here, not to the pinned rows.
            let waiting: i64 = tx.query_row("SELECT COUNT(*) FROM outbox WHERE pinned = 1", [], |r| r.get(0))?;
            if let Some(reporter) = reporter.filter(|_| waiting == 0 && (dropped > 0 || corrupt > 0)) {
                let notice = Dropped {
                    count: dropped,
                    first_report_id: meta(tx, "dropped_first")?,
                    last_report_id: meta(tx, "dropped_last")?,
                    corrupt,
                };
                let report = Report { dropped: Some(notice), ..reporter.report("outbox_dropped") };
                reporter.enqueue(tx, &report, true)?;
                tx.prepare_cached(
                    "DELETE FROM outbox_meta WHERE key IN ('dropped', 'dropped_first', 'dropped_last', 'corrupt')",
                )?
                .execute([])?;
            }
            // The last batch's fate is known by now.
            tx.prepare_cached("DELETE FROM outbox_meta WHERE key IN ('in_flight', 'in_flight_dropped')")?.execute([])?;
            let mut stmt = tx.prepare("SELECT seq, report_id, body FROM outbox ORDER BY seq LIMIT ?1")?;
            let rows: Vec<(i64, String, Option<String>)> = stmt
                .query_map(params![max_reports.max(1) as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2).ok())))?
                .collect::<rusqlite::Result<_>>()?;
            drop(stmt);
            let mut batch = Vec::new();
            let mut total = 0u64;
            for (seq, report_id, body) in rows {
                let parsed = body.as_deref().and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok());
                let Some(body) = body.filter(|_| parsed.is_some_and(|v| v.get("report_id").is_some())) else {
                    tx.prepare_cached(
                        "INSERT INTO dead_letters (report_id, body, code, reason, at)
                         SELECT report_id, CAST(body AS TEXT), 'corrupt', 'the stored report does not parse', ?2
                         FROM outbox WHERE seq = ?1",
                    )?
                    .execute(params![seq, now()])?;
                    tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?.execute(params![seq])?;
                    add_meta(tx, "corrupt", 1)?;
                    continue;
                };
                if !batch.is_empty() && total + body.len() as u64 > max_bytes {
                    break;
                }
                total += body.len() as u64;
                batch.push(Queued { seq, report_id, body });
            }
            // Remembered, so that a report of this batch dropped while the
            // receiver stores it is not counted as dropped once acknowledged.
            let ids: Vec<&str> = batch.iter().map(|q| q.report_id.as_str()).collect();
            set_meta(tx, "in_flight", &ids.join(" "))?;
            Ok(batch)
        })
    }

    /// Deletes the reports the receiver acknowledged.
    pub fn acknowledge(&self, report_ids: &[String]) -> Result<(), StoreError> {
        self.write_durably(|tx| {
            for id in report_ids {
                tx.prepare_cached("DELETE FROM outbox WHERE report_id = ?1")?.execute(params![id])?;
            }
            // Dropped while in flight, yet delivered: not a drop after all.
            if let Some(dropped) = meta(tx, "in_flight_dropped")? {
                let delivered = dropped.split(' ').filter(|id| report_ids.iter().any(|r| r == id)).count() as u64;
                if delivered > 0 {
                    for key in ["dropped", "dropped_total"] {
                        let value = meta(tx, key)?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                        set_meta(tx, key, &value.saturating_sub(delivered).to_string())?;
                    }
                    let rest: Vec<&str> = dropped.split(' ').filter(|id| !report_ids.iter().any(|r| r == id)).collect();
                    set_meta(tx, "in_flight_dropped", &rest.join(" "))?;
                }
            }
            set_meta(tx, "last_upload", &now())
        })
    }

    /// Moves a report the receiver refused to the dead letters.
    pub fn dead_letter(&self, report_id: &str, code: &str, reason: &str) -> Result<(), StoreError> {
        self.write_durably(|tx| {
            tx.prepare_cached(
                "INSERT INTO dead_letters (report_id, body, code, reason, at)
                 SELECT report_id, body, ?2, ?3, ?4 FROM outbox WHERE report_id = ?1",
            )?
            .execute(params![report_id, code, reason, now()])?;
            tx.prepare_cached("DELETE FROM outbox WHERE report_id = ?1")?.execute(params![report_id])?;
            Ok(())
        })
    }

    /// The outbox's numbers.
    pub fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        self.read(|conn| {
            let (depth, bytes) = totals(conn)?;
            let dead_letters: i64 = conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?;
            let dead_letters = dead_letters as u64;
            let dropped_total = meta(conn, "dropped_total")?.and_then(|v| v.parse().ok()).unwrap_or(0);
            Ok(OutboxStatus { depth, bytes, dropped_total, dead_letters })
        })
    }

    /// When reports were last acknowledged.
    pub fn last_upload(&self) -> Result<Option<String>, StoreError> {
        self.read(|conn| meta(conn, "last_upload"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{ErrorCode, RunReport};
    use crate::store::NewRun;

    fn reporting(dir: &std::path::Path, limits: OutboxLimits) -> Store {
        let store = Store::open(dir).unwrap();
        store.enable_outbox(Reporter { device_id: "dev-1".into(), runner_version: "0.1.0".into(), limits }).unwrap();
        store
    }

    /// Records a rejected run (begun and finished at once) of job `job`.
    fn run(store: &Store, job: &str) -> String {
        let report = RunReport::rejected_with(ErrorCode::InvalidBundle, "signature_invalid", "tampered");
        let new = NewRun {
            id: report.run_id.clone(),
            workflow: "hello".into(),
            version: "-".into(),
            bundle_path: "/b/hello.wasm".into(),
            bundle_digest: "sha256:ab".into(),
            kind: None,
            job: Some(job.into()),
        };
        store.record_rejected(&new, &report).unwrap();
        report.run_id
    }

    fn reports(batch: &[Queued]) -> Vec<Report> {
        batch.iter().map(|q| serde_json::from_str(&q.body).unwrap()).collect()
    }

    #[test]
    fn a_run_writes_its_report_with_it_and_only_an_acknowledgement_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let quiet = Store::open(dir.path()).unwrap();
        run(&quiet, "before");
        drop(quiet);
        let store = reporting(dir.path(), OutboxLimits::default());
        assert_eq!(store.outbox_status().unwrap().depth, 0, "runs before reporting was on are not reported");
        let id = run(&store, "tick");
        let batch = store.outbox_batch(10, 1 << 20).unwrap();
        let [report] = reports(&batch).try_into().unwrap();
        let body = report.run.unwrap();
        assert_eq!((report.kind.as_str(), report.device_id.as_str(), report.schema), ("run", "dev-1", REPORT_SCHEMA));
        assert_eq!(
            (body.execution_id.as_str(), body.job.as_deref(), body.status.as_str()),
            (id.as_str(), Some("tick"), "failed")
        );
        assert_eq!(
            (body.error_code.as_deref(), body.error_detail.as_deref()),
            (Some("invalid_bundle"), Some("signature_invalid"))
        );
        // Taking a batch is not delivering it.
        assert_eq!(store.outbox_batch(10, 1 << 20).unwrap(), batch);
        store.acknowledge(&[batch[0].report_id.clone()]).unwrap();
        assert!(store.outbox_batch(10, 1 << 20).unwrap().is_empty());
        assert!(store.last_upload().unwrap().is_some());
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_reports_the_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = reporting(dir.path(), OutboxLimits { max_reports: 5, max_bytes: 1 << 20 });
        let ids: Vec<String> = (0..8).map(|i| run(&store, &format!("job{i}"))).collect();
        let status = store.outbox_status().unwrap();
        assert_eq!((status.depth, status.dropped_total), (5, 3));
        let batch = reports(&store.outbox_batch(100, 1 << 20).unwrap());
        let kept: Vec<&str> = batch.iter().filter_map(|r| r.run.as_ref()).map(|r| r.execution_id.as_str()).collect();
        assert_eq!(kept, ids[3..].iter().map(String::as_str).collect::<Vec<_>>(), "the newest five are kept");
        let notice = batch.iter().find(|r| r.kind == "outbox_dropped").expect("the drop is reported");
        let dropped = notice.dropped.as_ref().unwrap();
        assert_eq!(dropped.count, 3);
        // The first and last dropped reports are the first runs' reports.
        assert!(dropped.first_report_id.is_some() && dropped.first_report_id != dropped.last_report_id);
        // The notice is never dropped itself, and while it waits, new
        // drops are counted for the next one instead of pinning more rows.
        for i in 0..10 {
            run(&store, &format!("more{i}"));
        }
        let queued = store.outbox_batch(100, 1 << 20).unwrap();
        let batch = reports(&queued);
        let notices: Vec<&Report> = batch.iter().filter(|r| r.kind == "outbox_dropped").collect();
        assert_eq!(notices.len(), 1, "one notice waits at a time");
        assert_eq!(notices[0].dropped.as_ref().unwrap().count, 3);
        assert!(store.outbox_status().unwrap().depth <= 5);
        let total = store.outbox_status().unwrap().dropped_total;
        store.acknowledge(&queued.iter().map(|q| q.report_id.clone()).collect::<Vec<_>>()).unwrap();
        let batch = reports(&store.outbox_batch(100, 1 << 20).unwrap());
        let [notice] = batch.try_into().unwrap();
        assert_eq!(notice.dropped.unwrap().count, total - 3, "the next notice counts the drops since");

        // Bytes bound too.
        let dir = tempfile::tempdir().unwrap();
        let store = reporting(dir.path(), OutboxLimits { max_reports: 1000, max_bytes: 2000 });
        for i in 0..20 {
            run(&store, &format!("job{i}"));
        }
        let status = store.outbox_status().unwrap();
        assert!(status.bytes <= 2000 && status.dropped_total > 0, "{status:?}");
        // The totals the bounds are checked against are the outbox's own.
        let counted = store
            .read(|c| {
                c.query_row("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox", [], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
            })
            .unwrap();
        assert_eq!(store.read(totals).unwrap(), counted);
        assert_eq!((status.depth, status.bytes), counted);
    }

    #[test]
    fn a_batch_in_flight_is_not_dropped_so_nothing_is_both_delivered_and_counted_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = reporting(dir.path(), OutboxLimits { max_reports: 10, max_bytes: 1 << 20 });
        for i in 0..10 {
            run(&store, &format!("a{i}"));
        }
        let in_flight = store.outbox_batch(4, 1 << 20).unwrap();
        for i in 0..10 {
            run(&store, &format!("b{i}"));
        }
        // The receiver stored the batch while the outbox kept filling.
        store.acknowledge(&in_flight.iter().map(|q| q.report_id.clone()).collect::<Vec<_>>()).unwrap();
        let status = store.outbox_status().unwrap();
        assert!(status.depth <= 10, "{status:?}");
        let rest = reports(&store.outbox_batch(100, 1 << 20).unwrap());
        let runs = rest.iter().filter(|r| r.kind == "run").count() as u64;
        assert_eq!(in_flight.len() as u64 + runs + status.dropped_total, 20, "each run delivered or dropped, once");
    }

    #[test]
    fn a_corrupt_row_goes_to_the_dead_letters_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = reporting(dir.path(), OutboxLimits::default());
        run(&store, "a");
        run(&store, "b");
        store
            .write(|tx| {
                tx.prepare_cached("UPDATE outbox SET body = 'not json{' WHERE seq = (SELECT MIN(seq) FROM outbox)")?
                    .execute([])
            })
            .unwrap();
        let batch = reports(&store.outbox_batch(10, 1 << 20).unwrap());
        assert_eq!(batch.len(), 1, "the good one is handed out");
        let batch = reports(&store.outbox_batch(10, 1 << 20).unwrap());
        let notice = batch.iter().find(|r| r.kind == "outbox_dropped").unwrap();
        assert_eq!(notice.dropped.as_ref().unwrap().corrupt, 1);
        assert_eq!(store.outbox_status().unwrap().dead_letters, 1);
        let refused = batch[0].report_id.clone();
        store.dead_letter(&refused, "rejected", "422 from the receiver").unwrap();
        assert_eq!(store.outbox_status().unwrap().dead_letters, 2);
    }

    #[test]
    fn release_events_write_their_reports_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = reporting(dir.path(), OutboxLimits::default());
        store.record_downloading("sha256:r1", "stable", "1.0.0", "{}", "/s").unwrap();
        store.record_staged("sha256:r1", "stable", "1.0.0", "{}", "/s").unwrap();
        store.begin_trial("sha256:r1").unwrap();
        store.roll_back("sha256:r1", "trap", "its first run trapped").unwrap();
        store.record_refusal(None, "known_bad", "offered again").unwrap();
        let batch = reports(&store.outbox_batch(10, 1 << 20).unwrap());
        let events: Vec<(&str, Option<&str>)> =
            batch.iter().filter_map(|r| r.release.as_ref()).map(|r| (r.event.as_str(), r.code.as_deref())).collect();
        assert_eq!(
            events,
            [
                ("downloading", None),
                ("staged", None),
                ("trial", None),
                ("rolled_back", Some("trap")),
                ("refused", Some("known_bad"))
            ]
        );
        let rollback = batch[3].release.as_ref().unwrap();
        assert_eq!((rollback.version.as_deref(), rollback.channel.as_deref()), (Some("1.0.0"), Some("stable")));
    }
}
