//! The daemon's metrics for monitoring: `GET /metrics` on the control
//! listener (behind its bearer token), in the OpenMetrics text format
//! (`prometheus-client`).
//!
//! Counted as runs end: runs by job and status, run duration by job (a
//! histogram), fuel by job, the last run's peak memory by job, retries by
//! job. Read at each scrape: runs in flight, each job's paused state, the
//! report outbox (depth, bytes, dropped reports, dead letters), the active
//! and trial releases, and whether the last sync check failed. Labels are
//! job names and fixed sets (statuses, release states): bounded by the job
//! table, never by run ids.

use super::Daemon;
use crate::outcome::{RunReport, RunStatus};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The registry and the metrics the daemon updates.
pub struct Metrics {
    registry: Mutex<Registry>,
    runs: Family<Labels, Counter>,
    duration: Histograms,
    fuel: Family<Labels, Counter>,
    peak_memory: Family<Labels, Gauge>,
    retries: Family<Labels, Counter>,
    in_flight: Gauge,
    paused: Family<Labels, Gauge>,
    outbox_depth: Gauge,
    outbox_bytes: Gauge,
    reports_dropped: Gauge,
    dead_letters: Gauge,
    release: Family<Labels, Gauge>,
    sync_failing: Gauge,
    /// Each job with labels in the families (so a removed job's go too),
    /// with its series: a run's end updates them without building labels.
    jobs: Mutex<std::collections::HashMap<String, JobSeries>>,
}

/// One job's series of the families [`Metrics::ended`] and
/// [`Metrics::retried`] update: handles to the same values the families
/// hold, each taken from its family the first time it is needed.
struct JobSeries {
    /// Runs by status, in the order of [`RunStatus::ALL`].
    runs: [Option<Counter>; RunStatus::ALL.len()],
    duration: Option<Histogram>,
    fuel: Option<Counter>,
    peak_memory: Option<Gauge>,
    retries: Option<Counter>,
}

impl JobSeries {
    fn new() -> JobSeries {
        JobSeries { runs: Default::default(), duration: None, fuel: None, peak_memory: None, retries: None }
    }
}

/// The labels of job `job`'s series.
fn by_job(job: &str) -> Labels {
    vec![("job", job.to_owned())]
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    // 0.5 ms to ~2 minutes.
    Histogram::new(exponential_buckets(0.0005, 4.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            registry: Mutex::new(Registry::with_prefix("wfrun")),
            runs: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            fuel: Family::default(),
            peak_memory: Family::default(),
            retries: Family::default(),
            in_flight: Gauge::default(),
            paused: Family::default(),
            outbox_depth: Gauge::default(),
            outbox_bytes: Gauge::default(),
            reports_dropped: Gauge::default(),
            dead_letters: Gauge::default(),
            release: Family::default(),
            sync_failing: Gauge::default(),
            jobs: Mutex::default(),
        };
        {
            let mut r = metrics.registry.lock().unwrap();
            r.register("runs", "Runs ended, by job and status", metrics.runs.clone());
            r.register("run_duration_seconds", "Run wall time, by job", metrics.duration.clone());
            r.register("fuel_consumed", "Fuel the runs consumed, by job", metrics.fuel.clone());
            r.register(
                "run_peak_memory_bytes",
                "The last run's peak linear memory, by job",
                metrics.peak_memory.clone(),
            );
            r.register("retries", "Failed runs retried, by job", metrics.retries.clone());
            r.register("runs_in_flight", "Runs running or waiting for a slot", metrics.in_flight.clone());
            r.register("job_paused", "1 while the job is paused", metrics.paused.clone());
            r.register("outbox_depth", "Reports waiting to be uploaded", metrics.outbox_depth.clone());
            r.register("outbox_bytes", "Bytes of reports waiting to be uploaded", metrics.outbox_bytes.clone());
            r.register("reports_dropped", "Reports dropped from a full outbox, ever", metrics.reports_dropped.clone());
            r.register("dead_letters", "Reports the receiver refused for good", metrics.dead_letters.clone());
            r.register("release", "1 for the committed and the trial release", metrics.release.clone());
            r.register("sync_failing", "1 when the last release check failed", metrics.sync_failing.clone());
        }
        metrics
    }
}

impl Metrics {
    /// Counts a run of job `job` that ended with `report`.
    pub fn ended(&self, job: &str, report: &RunReport) {
        let mut jobs = self.jobs.lock().unwrap();
        let series = series_of(&mut jobs, job);
        let status = RunStatus::ALL.iter().position(|s| *s == report.status).expect("every status is in ALL");
        let runs = series.runs[status].get_or_insert_with(|| {
            let mut by_status = by_job(job);
            by_status.push(("status", report.status.as_str().to_owned()));
            self.runs.get_or_create(&by_status).clone()
        });
        runs.inc();
        let duration = series.duration.get_or_insert_with(|| self.duration.get_or_create(&by_job(job)).clone());
        duration.observe(report.duration_ms / 1000.0);
        series.fuel.get_or_insert_with(|| self.fuel.get_or_create(&by_job(job)).clone()).inc_by(report.fuel_consumed);
        let peak = series.peak_memory.get_or_insert_with(|| self.peak_memory.get_or_create(&by_job(job)).clone());
        peak.set(report.peak_memory_bytes.min(i64::MAX as u64) as i64);
    }

    /// Counts a retry of job `job`.
    pub fn retried(&self, job: &str) {
        let mut jobs = self.jobs.lock().unwrap();
        let series = series_of(&mut jobs, job);
        series.retries.get_or_insert_with(|| self.retries.get_or_create(&by_job(job)).clone()).inc();
    }

    /// Removes the labels of jobs that are gone: the families stay as
    /// large as the job table, however many jobs came and went.
    fn forget_all_but(&self, keep: &[String]) {
        let mut jobs = self.jobs.lock().unwrap();
        jobs.retain(|job, _| {
            if keep.contains(job) {
                return true;
            }
            let by_job = by_job(job);
            for status in RunStatus::ALL {
                let mut by_status = by_job.clone();
                by_status.push(("status", status.as_str().to_owned()));
                self.runs.remove(&by_status);
            }
            self.duration.remove(&by_job);
            self.fuel.remove(&by_job);
            self.peak_memory.remove(&by_job);
            self.retries.remove(&by_job);
            false
        });
    }
}

/// Job `job`'s series, made empty if it has none yet.
fn series_of<'a>(jobs: &'a mut std::collections::HashMap<String, JobSeries>, job: &str) -> &'a mut JobSeries {
    // Looked up by `&str` first: the key is copied only for a new job.
    if jobs.contains_key(job) {
        return jobs.get_mut(job).expect("just looked up");
    }
    jobs.entry(job.to_owned()).or_insert_with(JobSeries::new)
}

impl Daemon {
    /// The metrics in the OpenMetrics text format, gauges read now.
    pub fn metrics_text(&self) -> Result<String, super::DaemonError> {
        let m = &self.metrics;
        // One scrape at a time: the gauges are refilled and encoded together.
        let registry = m.registry.lock().unwrap();
        m.in_flight.set(self.running.lock().unwrap().len() as i64);
        let jobs = self.jobs.all();
        m.forget_all_but(&jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>());
        m.paused.clear();
        for job in jobs {
            m.paused.get_or_create(&vec![("job", job.name.clone())]).set(i64::from(job.paused));
        }
        if let Some(report) = self.report_status()? {
            let gauge = |g: &Gauge, v: u64| g.set(v.min(i64::MAX as u64) as i64);
            gauge(&m.outbox_depth, report.outbox.depth);
            gauge(&m.outbox_bytes, report.outbox.bytes);
            gauge(&m.reports_dropped, report.outbox.dropped_total);
            gauge(&m.dead_letters, report.outbox.dead_letters);
        }
        m.release.clear();
        if self.sync.is_some() {
            let sync = self.sync_status()?;
            for release in sync.committed.iter().chain(sync.trial.iter()) {
                let labels = vec![
                    ("channel", release.channel.clone()),
                    ("version", release.version.clone()),
                    ("state", release.state.as_str().to_owned()),
                ];
                m.release.get_or_create(&labels).set(1);
            }
            m.sync_failing.set(i64::from(sync.last_error.is_some()));
        }
        let mut text = String::new();
        encode(&mut text, &registry).map_err(|e| super::DaemonError::Internal(e.to_string()))?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(metrics: &Metrics) -> String {
        let mut text = String::new();
        encode(&mut text, &metrics.registry.lock().unwrap()).unwrap();
        text
    }

    fn report(status: RunStatus) -> RunReport {
        RunReport { status, fuel_consumed: 10, ..RunReport::rejected(crate::outcome::ErrorCode::Trap, String::new()) }
    }

    #[test]
    fn a_jobs_series_count_its_runs_and_a_removed_job_starts_again_from_nothing() {
        let metrics = Metrics::default();
        for status in [RunStatus::Succeeded, RunStatus::Succeeded, RunStatus::Failed] {
            metrics.ended("tick", &report(status));
        }
        metrics.ended("other", &report(RunStatus::Succeeded));
        metrics.retried("tick");
        let before = text(&metrics);
        for line in [
            r#"wfrun_runs_total{job="tick",status="succeeded"} 2"#,
            r#"wfrun_runs_total{job="tick",status="failed"} 1"#,
            r#"wfrun_fuel_consumed_total{job="tick"} 30"#,
            r#"wfrun_run_duration_seconds_count{job="tick"} 3"#,
            r#"wfrun_retries_total{job="tick"} 1"#,
            r#"wfrun_runs_total{job="other",status="succeeded"} 1"#,
        ] {
            assert!(before.lines().any(|l| l == line), "no {line} in\n{before}");
        }
        // Only the statuses seen have series.
        assert!(!before.contains(r#"status="cancelled""#), "{before}");

        metrics.forget_all_but(&["other".to_owned()]);
        let after = text(&metrics);
        assert!(!after.contains(r#"job="tick""#), "{after}");
        assert!(after.contains(r#"wfrun_runs_total{job="other",status="succeeded"} 1"#), "{after}");

        // A job of the same name counts from nothing.
        metrics.ended("tick", &report(RunStatus::Succeeded));
        let again = text(&metrics);
        assert!(again.lines().any(|l| l == r#"wfrun_runs_total{job="tick",status="succeeded"} 1"#), "{again}");
        assert!(again.lines().any(|l| l == r#"wfrun_fuel_consumed_total{job="tick"} 10"#), "{again}");
        assert!(!again.contains(r#"wfrun_retries_total{job="tick"}"#), "{again}");
    }
}
