//! `wfrun daemon` and its clients: `status`, `jobs`, `trigger`, `cancel`.
//!
//! The clients speak the control protocol ([`crate::daemon::control`]) over
//! the daemon's socket in the state directory, print a table (or `--json`),
//! and exit 0 on success, 1 when no daemon answers, 6 when the daemon
//! refuses (with its error code and message).

use super::target::TargetArgs;
use super::{GlobalArgs, printable};
use crate::daemon::control::{Endpoint, Response};
use crate::daemon::{Daemon, DaemonConfig};
use crate::manifest::{JobSpec, Trigger};
use crate::outcome::ExitStatus;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const DAEMON_HELP: &str = "\
The daemon runs jobs on a schedule (every DURATION, or a five-field cron
expression in UTC or --tz ZONE), on a webhook (POST /hooks/JOB on the [webhook] listener),
or by hand (`wfrun trigger JOB`). Jobs come from the config file's
[jobs.NAME] tables and from `wfrun jobs add`; both persist in the state
directory and survive restarts.

A failed run is retried with exponential backoff (1s, x2, up to 30s, 5
attempts by default); a job whose last 5 runs failed is paused until
`wfrun jobs resume`. SIGINT/SIGTERM stop new triggers, wait up to the grace
period (10s) for running runs, then cancel them (recorded `cancelled`) and
exit 0. Runs left `running` by a crash or kill -9 are marked failed with
error code `interrupted` at the next start.

State directory: --state-dir, then WFRUN_DIR, then the config's state_dir,
then the default. See docs/operations.md for the config file, a systemd unit
and the control protocol.

Examples:
  wfrun daemon --config /etc/wfrun/wfrun.toml
  wfrun jobs add hello --bundle hello.wasm --every 30s --input '{\"name\":\"cron\"}'
  wfrun status";

#[derive(Debug, Args)]
#[command(after_help = DAEMON_HELP)]
pub struct DaemonCommand {
    /// The configuration file (TOML; unknown keys are refused).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl DaemonCommand {
    /// Runs the daemon until it is stopped.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        let config = match &self.config {
            Some(path) => DaemonConfig::read(path)?,
            None => DaemonConfig::default(),
        };
        let state_dir = global.state_dir_with(config.state_dir.as_deref());
        crate::descriptors::raise_limit();
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async {
            let daemon = Daemon::open(config, state_dir)?;
            daemon.serve().await
        })?;
        runtime.shutdown_timeout(Duration::from_millis(200));
        Ok(ExitStatus::Success)
    }
}

fn parse_every(text: &str) -> Result<Duration, String> {
    crate::units::duration(text, Duration::from_millis(100)..=Duration::from_secs(366 * 24 * 3600))
        .map_err(|e| e.to_string())
}

/// The daemon `target` names, or the exit status for why there is none
/// (2: the flags, profile or files are unusable).
pub(super) fn endpoint(global: &GlobalArgs, target: &TargetArgs) -> Result<Endpoint, ExitStatus> {
    target.endpoint(global).map_err(|e| {
        eprintln!("wfrun: {e}");
        ExitStatus::Usage
    })
}

/// The exit status for a request the daemon did not answer: 6 when it
/// refused the token, 1 when it could not be asked at all.
pub(super) fn client_failure(e: &crate::daemon::control::ClientError) -> ExitStatus {
    match e {
        crate::daemon::control::ClientError::Unauthorized { .. } => ExitStatus::Invalid,
        _ => ExitStatus::Internal,
    }
}

/// Sends `method` to the daemon `target` names and prints the answer:
/// `show` for a success without `--json`.
pub(super) fn request(
    global: &GlobalArgs,
    target: &TargetArgs,
    method: &str,
    params: Value,
    json: bool,
    show: impl FnOnce(&Value),
) -> anyhow::Result<ExitStatus> {
    let endpoint = match endpoint(global, target) {
        Ok(endpoint) => endpoint,
        Err(status) => return Ok(status),
    };
    send(&endpoint, method, params, json, show)
}

/// Sends `method` to `endpoint` and prints the answer, as [`request`].
pub(super) fn send(
    endpoint: &Endpoint,
    method: &str,
    params: Value,
    json: bool,
    show: impl FnOnce(&Value),
) -> anyhow::Result<ExitStatus> {
    match endpoint.call(method, params) {
        Ok(response) => answer(response, json, show),
        Err(e) => {
            eprintln!("wfrun: {e}");
            Ok(client_failure(&e))
        }
    }
}

/// Prints the daemon's `response` as [`send`] does, and its exit status.
fn answer(response: Response, json: bool, show: impl FnOnce(&Value)) -> anyhow::Result<ExitStatus> {
    if json {
        println!("{}", serde_json::to_string(&response)?);
    }
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => {
            if !json {
                show(&result);
            }
            Ok(ExitStatus::Success)
        }
        (_, _, error) => {
            let (code, message) = error.map(|e| (e.code, e.message)).unwrap_or_default();
            eprintln!("wfrun: {code}: {}", printable(&message));
            Ok(ExitStatus::Invalid)
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusCommand {
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

impl StatusCommand {
    /// Asks the daemon and prints its status.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        request(global, &self.target, "status", json!({}), self.json, |status| {
            println!(
                "daemon  pid {} · up {}s · state {} · {} of {} run slots busy{}",
                status["pid"],
                status["uptime_s"],
                printable(status["state_dir"].as_str().unwrap_or("")),
                status["running"].as_array().map_or(0, Vec::len),
                status["max_concurrent_runs"],
                if status["stopping"] == true { " · stopping" } else { "" }
            );
            let keys = status["trust"]["trusted_keys"].as_array().map_or(0, Vec::len);
            match status["trust"]["mode"].as_str() {
                Some("signed_only") => println!("trust   signed bundles only ({keys} trusted key(s))"),
                _ => println!("trust   unsigned bundles run (no trusted keys configured)"),
            }
            if !status["release"].is_null() {
                println!(
                    "release {} {} ({})",
                    printable(status["release"]["channel"].as_str().unwrap_or("")),
                    printable(status["release"]["version"].as_str().unwrap_or("")),
                    status["release"]["state"].as_str().unwrap_or("")
                );
            }
            print_report(&status["report"]);
            println!(
                "programs {} prepared · {} loads · {} reused · {} runs on spare instances",
                status["programs"]["programs"],
                status["programs"]["loads"],
                status["programs"]["hits"],
                status["programs"]["spares_taken"]
            );
            print_jobs(&status["jobs"]);
            for service in status["services"].as_array().into_iter().flatten() {
                let mut line = format!(
                    "service {}  {}  {} restart(s)",
                    printable(service["name"].as_str().unwrap_or("")),
                    service["state"].as_str().unwrap_or(""),
                    service["restarts"]
                );
                if let Some(up) = service["uptime_s"].as_u64() {
                    line += &format!(" · up {up}s");
                }
                if let Some(next) = service["next_start"].as_str() {
                    line += &format!(" · next start {next}");
                }
                if service["consecutive_failures"].as_u64().unwrap_or(0) > 0 {
                    line += &format!(" · {} failure(s) in a row", service["consecutive_failures"]);
                }
                println!("{line}");
            }
            for run in status["running"].as_array().into_iter().flatten() {
                println!(
                    "running {}  job {}  since {}",
                    run["run_id"].as_str().unwrap_or(""),
                    run["job"].as_str().unwrap_or(""),
                    run["started_at"].as_str().unwrap_or("")
                );
            }
        })
    }
}

/// The outbox and uploader lines of `status` and `sync status`.
fn print_report(report: &Value) {
    if report.is_null() {
        return;
    }
    let (outbox, uploader) = (&report["outbox"], &report["uploader"]);
    println!(
        "reports {} queued ({} bytes) · {} dropped · {} dead letters → {}",
        outbox["depth"],
        outbox["bytes"],
        outbox["dropped_total"],
        outbox["dead_letters"],
        printable(uploader["endpoint"].as_str().unwrap_or(""))
    );
    let mut line = format!("        last upload {}", uploader["last_upload"].as_str().unwrap_or("never"));
    if let Some(heartbeat) = uploader["last_heartbeat"].as_str() {
        line += &format!(" · last heartbeat {heartbeat}");
    }
    if let Some(error) = uploader["last_error"].as_array() {
        let text = |i: usize| printable(error.get(i).and_then(Value::as_str).unwrap_or(""));
        line += &format!(" · last error {}: {}", text(0), text(1));
    }
    if let Some(next) = uploader["next_retry"].as_str() {
        line += &format!(" · next retry {next}");
    }
    println!("{line}");
}

fn print_jobs(jobs: &Value) {
    let jobs = jobs.as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("no jobs (add one with `wfrun jobs add`)");
        return;
    }
    println!("{:<20}  {:<34}  {:<8}  {:<22}  {:<10}  FAILS", "JOB", "TRIGGER", "STATE", "NEXT", "LAST");
    for job in jobs {
        let state = if job["paused"] == true {
            "paused"
        } else if job["running"].as_u64().unwrap_or(0) > 0 {
            "running"
        } else {
            "ready"
        };
        println!(
            "{:<20}  {:<34}  {:<8}  {:<22}  {:<10}  {}",
            printable(job["name"].as_str().unwrap_or("")),
            printable(job["trigger"].as_str().unwrap_or("")),
            state,
            job["next_due"].as_str().unwrap_or("-"),
            job["last_status"].as_str().unwrap_or("-"),
            job["consecutive_failures"]
        );
        if let Some(reason) = job["paused_reason"].as_str() {
            println!("{:<20}  paused: {}", "", printable(reason));
        }
    }
}

#[derive(Debug, Args)]
pub struct JobsCommand {
    #[command(subcommand)]
    command: JobsSubcommand,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Subcommand)]
enum JobsSubcommand {
    /// Add (or replace) a job. It persists across restarts.
    Add(Box<AddJob>),
    /// List jobs with their triggers and last results.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a job; a run in flight finishes.
    Remove {
        /// The job.
        name: String,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hold a job's triggers until it is resumed.
    Pause {
        /// The job.
        name: String,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a paused job run again (and clear its failure count).
    Resume {
        /// The job.
        name: String,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("trigger").required(true).args(["every", "cron", "webhook", "manual", "always"])))]
struct AddJob {
    /// The job's name: letters, digits, `-`, `_`.
    name: String,
    /// The bundle to run (a node, a job or a workflow bundle).
    #[arg(long, value_name = "PATH")]
    bundle: PathBuf,
    /// Run every DURATION (e.g. 30s, 5m; 100ms to 366 days).
    #[arg(long, value_name = "DURATION", value_parser = parse_every)]
    every: Option<Duration>,
    /// Run on a five-field cron expression, in UTC (e.g. "*/5 * * * *").
    #[arg(long, value_name = "EXPR")]
    cron: Option<String>,
    /// Read --cron in this IANA time zone (e.g. Europe/Paris) instead of UTC.
    #[arg(long, value_name = "ZONE", requires = "cron")]
    tz: Option<String>,
    /// Run on POST /hooks/NAME to the daemon's webhook listener.
    #[arg(long)]
    webhook: bool,
    /// Run only on `wfrun trigger NAME`.
    #[arg(long)]
    manual: bool,
    /// A service: start it now and with the daemon, restart it whenever it
    /// ends (backoff from [service] in the config), pause it after too many
    /// failures in a row. No timeout or fuel limit unless given.
    #[arg(long)]
    always: bool,
    /// HMAC-SHA256 key (hex, ≥ 16 bytes) webhook requests must be signed with.
    #[arg(long, value_name = "HEX", requires = "webhook")]
    webhook_secret: Option<String>,
    /// Input JSON for a node or workflow.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    input: String,
    /// Let a new run start while the previous one is still running.
    #[arg(long)]
    allow_overlap: bool,
    /// Give each run a writable /outputs directory, kept with the run
    /// (`wfrun runs outputs RUN_ID`); capped by the daemon's [outputs].
    #[arg(long)]
    outputs: bool,
    /// Memory ceiling for the job's nodes (e.g. 64MiB; 64KiB to the
    /// daemon's max_memory).
    #[arg(long, value_name = "SIZE", value_parser = super::exec::parse_memory)]
    memory: Option<u64>,
    /// Wall-clock ceiling per node attempt (e.g. 5s; 1ms to 7 days).
    #[arg(long, value_name = "DURATION", value_parser = super::exec::parse_timeout)]
    timeout: Option<Duration>,
    /// Fuel ceiling per node attempt.
    #[arg(long, value_name = "N", value_parser = super::exec::parse_fuel)]
    fuel: Option<u64>,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    json: bool,
    /// Arguments for a job (a WASI command).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

impl JobsCommand {
    /// Sends the subcommand to the daemon.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        match self.command {
            JobsSubcommand::Add(add) => {
                // clap lets through at most one of them, and --tz only with --cron.
                let trigger = Trigger::choose(add.every, add.cron.clone(), add.tz.clone(), add.webhook, add.always)?;
                // The daemon may run elsewhere: send an absolute path.
                let bundle = std::path::absolute(&add.bundle).unwrap_or_else(|_| add.bundle.clone());
                let spec = JobSpec {
                    bundle,
                    input: add.input.clone(),
                    args: add.args.clone(),
                    trigger,
                    allow_overlap: add.allow_overlap,
                    memory_bytes: add.memory,
                    timeout: add.timeout,
                    fuel: add.fuel,
                    webhook_secret: add.webhook_secret.clone(),
                    outputs: add.outputs,
                };
                let name = add.name.clone();
                request(global, &self.target, "jobs.add", json!({ "name": add.name, "spec": spec }), add.json, |_| {
                    println!("job {name} added ({})", spec.trigger);
                })
            }
            JobsSubcommand::List { json } => request(global, &self.target, "jobs.list", json!({}), json, print_jobs),
            JobsSubcommand::Remove { name, json } => {
                request(global, &self.target, "jobs.remove", json!({ "name": name }), json, |_| {
                    println!("job {name} removed")
                })
            }
            JobsSubcommand::Pause { name, json } => {
                request(global, &self.target, "jobs.pause", json!({ "name": name }), json, |_| {
                    println!("job {name} paused")
                })
            }
            JobsSubcommand::Resume { name, json } => {
                request(global, &self.target, "jobs.resume", json!({ "name": name }), json, |_| {
                    println!("job {name} resumed")
                })
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct TriggerCommand {
    /// The job.
    name: String,
    /// Input JSON instead of the job's own.
    #[arg(long, value_name = "JSON")]
    input: Option<String>,
    /// Start N runs at once (1 to 1000; more than one only for a job with
    /// `allow_overlap`). Their ids are printed one per line.
    #[arg(long, value_name = "N", conflicts_with = "wait")]
    count: Option<usize>,
    /// Wait for the run to end (following its retries), print its output,
    /// and exit with the status `wfrun exec` would have (see `wfrun runs
    /// wait --help`).
    #[arg(long)]
    wait: bool,
    /// Print the daemon's answer as JSON (with --wait: the final run's record).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

impl TriggerCommand {
    /// Asks the daemon to start the job; prints the run id (each run's,
    /// with `--count`).
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        let mut params = json!({ "name": self.name, "input": self.input });
        if let Some(count) = self.count {
            params["count"] = json!(count);
        }
        if self.wait {
            let endpoint = match endpoint(global, &self.target) {
                Ok(endpoint) => endpoint,
                Err(status) => return Ok(status),
            };
            // A refused trigger prints as without --wait (the response, with
            // --json); an accepted one is followed to its end.
            let response = match endpoint.call("trigger", params) {
                Ok(response) => response,
                Err(e) => {
                    eprintln!("wfrun: {e}");
                    return Ok(client_failure(&e));
                }
            };
            let run_id = response.result.as_ref().filter(|_| response.ok).and_then(|r| r["run_id"].as_str());
            return match run_id.map(str::to_owned) {
                Some(run_id) => super::runs::wait(&endpoint, &run_id, self.json),
                None => answer(response, self.json, |_| {}),
            };
        }
        request(global, &self.target, "trigger", params, self.json, |result| match result["run_ids"].as_array() {
            Some(ids) => ids.iter().for_each(|id| println!("{}", id.as_str().unwrap_or(""))),
            None => println!("{}", result["run_id"].as_str().unwrap_or("")),
        })
    }
}

#[derive(Debug, Args)]
pub struct CancelCommand {
    /// The run id (from `wfrun status` or `wfrun trigger`).
    run_id: String,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

impl CancelCommand {
    /// Asks the daemon to cancel the run.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        let run_id = self.run_id.clone();
        request(global, &self.target, "cancel", json!({ "run_id": self.run_id }), self.json, |_| {
            println!("run {run_id} cancelled");
        })
    }
}

#[derive(Debug, Args)]
pub struct RollbackCommand {
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

impl RollbackCommand {
    /// Asks the daemon to roll back.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        request(global, &self.target, "rollback", json!({}), self.json, |result| {
            println!("rolled back release {}", printable(result["rolled_back"].as_str().unwrap_or("")));
        })
    }
}

#[derive(Debug, Args)]
pub struct SyncCommand {
    #[command(subcommand)]
    command: SyncSubcommand,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Subcommand)]
enum SyncSubcommand {
    /// The release in trial, the last known good, the last check and its error.
    Status {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the release origin now instead of at the next interval.
    Now {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl SyncCommand {
    /// Asks the daemon.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        match self.command {
            SyncSubcommand::Status { json } => {
                request(global, &self.target, "sync.status", json!({}), json, |status| {
                    let release = |r: &Value| {
                        if r.is_null() {
                            "none".to_owned()
                        } else {
                            format!(
                                "{} {} ({})",
                                printable(r["channel"].as_str().unwrap_or("")),
                                printable(r["version"].as_str().unwrap_or("")),
                                r["digest"].as_str().unwrap_or("")
                            )
                        }
                    };
                    println!(
                        "origin     {} · channel {} · ring {}",
                        printable(status["url"].as_str().unwrap_or("")),
                        printable(status["channel"].as_str().unwrap_or("")),
                        status["ring"]
                    );
                    println!("committed  {}", release(&status["committed"]));
                    println!("trial      {}", release(&status["trial"]));
                    if let Some(health) = status["health"].as_str() {
                        println!("health     job {}", printable(health));
                    }
                    println!("checked    {}", status["last_check"].as_str().unwrap_or("never"));
                    let pair = |v: &Value| {
                        v.as_array().map(|e| {
                            format!(
                                "{}: {}",
                                e.first().and_then(Value::as_str).unwrap_or(""),
                                printable(e.get(1).and_then(Value::as_str).unwrap_or(""))
                            )
                        })
                    };
                    if let Some(error) = pair(&status["last_error"]) {
                        println!("last error {error}");
                    }
                    if let Some(error) = pair(&status["active_error"]) {
                        println!("NOT RUNNING {error}");
                    }
                    let refreshed = status["metadata_refreshed"].as_str().unwrap_or("not since this daemon started");
                    let expires = status["metadata_expires"]["timestamp"].as_str().unwrap_or("unknown");
                    let expired = if status["metadata_expired"] == true {
                        "  EXPIRED: new releases wait for a refresh; the active one keeps running"
                    } else {
                        ""
                    };
                    println!("metadata   refreshed {refreshed} · timestamp expires {expires}{expired}");
                    print_report(&status["report"]);
                })
            }
            SyncSubcommand::Now { json } => {
                request(global, &self.target, "sync.now", json!({}), json, |_| println!("checking the release origin"))
            }
        }
    }
}
