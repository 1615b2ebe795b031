//! `wfrun runs`: the run history, read from the state directory's database
//! (or, with `--remote`/`--profile`, through a daemon's control API), and
//! `runs wait`, which follows a daemon's run to its end.

use super::target::TargetArgs;
use super::{GlobalArgs, printable};
use crate::daemon::control::Endpoint;
use crate::outcome::ExitStatus;
use crate::outcome::RunStatus;
use crate::store::{RunRecord, Store};
use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct RunsCommand {
    #[command(subcommand)]
    command: RunsSubcommand,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Subcommand)]
enum RunsSubcommand {
    /// List runs, newest first.
    List {
        /// Only runs in this state: pending, running, succeeded, failed,
        /// cancelled, interrupted.
        #[arg(long, value_name = "STATUS", value_parser = parse_status)]
        status: Option<RunStatus>,
        /// At most this many runs.
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one run: status transitions, per-node records, error.
    Show {
        /// The run id (as printed by `wfrun exec --json` or `runs list`).
        run_id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Also print each node's execution trace: input and output digests
        /// and the ordered host calls it made.
        #[arg(long)]
        trace: bool,
    },
    /// Remove old runs and their logs: finished runs older than
    /// `--older-than` or beyond the newest `--keep`, then the oldest logs
    /// while all logs are over `--max-log-size`. A running run, or one whose
    /// report the daemon has not delivered yet, is never removed.
    Prune {
        /// Remove finished runs older than this.
        #[arg(long, value_name = "DURATION", value_parser = parse_age, default_value = "30days")]
        older_than: std::time::Duration,
        /// Keep at most this many runs (the newest).
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        keep: u64,
        /// Keep all run logs together under this size.
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1GiB")]
        max_log_size: u64,
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a run's captured logs (log lines, stdout, stderr) per node.
    Logs {
        /// The run id.
        run_id: String,
        /// Only this node's log.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Print a JSON array of {node, text}.
        #[arg(long)]
        json: bool,
    },
    /// List the files a run left in its /outputs, or copy them with --to.
    Outputs {
        /// The run id.
        run_id: String,
        /// Copy the files into DIR (created if missing; an existing file is
        /// never overwritten).
        #[arg(long, value_name = "DIR")]
        to: Option<std::path::PathBuf>,
        /// Print a JSON array of {path, bytes}.
        #[arg(long)]
        json: bool,
    },
    /// Wait for a daemon's run to end (following its retries), print its
    /// output, and exit with the status `wfrun exec` would have.
    #[command(after_help = WAIT_HELP)]
    Wait {
        /// The run id (from `wfrun trigger`).
        run_id: String,
        /// Print the final run's record as JSON.
        #[arg(long)]
        json: bool,
    },
}

const WAIT_HELP: &str = "\
A failed run the daemon retries is followed to its retry; the status is that
of the last attempt. A node's or workflow's output JSON is printed on stdout;
a job's captured stdout and stderr go to stdout and stderr. Exit status: 0
succeeded, 3 node error (or a job's own status), 4 limit, 5 trap, 6 refused,
130 cancelled; 1 when the daemon cannot be asked. Ctrl-C stops waiting, not
the run.

Examples:
  run=$(wfrun trigger nightly) && wfrun runs wait \"$run\"
  wfrun runs wait 0192f5c3-… --remote https://10.0.0.5:8788 --token-file ~/.wfrun-token";

fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    crate::units::duration(text, std::time::Duration::ZERO..=std::time::Duration::from_secs(100 * 365 * 86400))
        .map_err(|e| e.to_string())
}

fn parse_size(text: &str) -> Result<u64, String> {
    crate::units::size(text, 0..=u64::MAX).map_err(|e| e.to_string())
}

fn parse_status(text: &str) -> Result<RunStatus, String> {
    RunStatus::parse(text)
        .ok_or_else(|| format!("{text:?} is not one of pending, running, succeeded, failed, cancelled, interrupted"))
}

impl RunsCommand {
    /// Reads the history and prints it.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        if let RunsSubcommand::Wait { run_id, json } = &self.command {
            let endpoint = match super::daemon::endpoint(global, &self.target) {
                Ok(endpoint) => endpoint,
                Err(status) => return Ok(status),
            };
            return wait(&endpoint, run_id, *json);
        }
        match self.target.wants_remote(global) {
            Ok(true) => return self.remote(global),
            Ok(false) => {}
            Err(e) => {
                eprintln!("wfrun: {e}");
                return Ok(ExitStatus::Usage);
            }
        }
        let dir = global.state_dir();
        // Reading creates nothing: no database means no runs yet.
        let Some(store) = Store::open_existing(&dir)? else {
            match self.command {
                RunsSubcommand::List { json: true, .. } => println!("[]"),
                RunsSubcommand::List { .. } => eprintln!("wfrun: no runs recorded in {}", dir.display()),
                RunsSubcommand::Prune { json: true, .. } => {
                    println!("{}", serde_json::to_string(&crate::store::Pruned::default())?)
                }
                RunsSubcommand::Prune { .. } => eprintln!("wfrun: no runs recorded in {}", dir.display()),
                RunsSubcommand::Show { run_id, .. }
                | RunsSubcommand::Logs { run_id, .. }
                | RunsSubcommand::Outputs { run_id, .. }
                | RunsSubcommand::Wait { run_id, .. } => {
                    eprintln!("wfrun: no run {run_id:?} in {} (no runs recorded there)", dir.display());
                    return Ok(ExitStatus::Invalid);
                }
            }
            return Ok(ExitStatus::Success);
        };
        match self.command {
            RunsSubcommand::List { status, limit, json } => {
                let runs = store.list_runs(status, limit)?;
                if json {
                    println!("{}", serde_json::to_string(&runs)?);
                } else {
                    print_list(&runs);
                }
            }
            RunsSubcommand::Prune { older_than, keep, max_log_size, json } => {
                let retention =
                    crate::store::Retention { max_age: older_than, max_runs: keep, max_log_bytes: max_log_size };
                let pruned = store.prune(&retention)?;
                if json {
                    println!("{}", serde_json::to_string(&pruned)?);
                } else {
                    println!(
                        "removed {} run(s) and {} log director(ies), {} bytes",
                        pruned.runs, pruned.log_dirs, pruned.log_bytes
                    );
                }
            }
            RunsSubcommand::Show { run_id, json, trace } => {
                let Some(run) = store.run(&run_id)? else {
                    eprintln!("wfrun: no run {run_id:?} in {}", store.dir().display());
                    return Ok(ExitStatus::Invalid);
                };
                if json {
                    println!("{}", serde_json::to_string(&run)?);
                } else {
                    print_run(&run, trace);
                }
            }
            RunsSubcommand::Logs { run_id, node, json } => {
                if store.run(&run_id)?.is_none() {
                    eprintln!("wfrun: no run {run_id:?} in {}", store.dir().display());
                    return Ok(ExitStatus::Invalid);
                }
                print_logs(&run_id, store.logs(&run_id)?, node.as_deref(), json)?;
            }
            RunsSubcommand::Outputs { run_id, to, json } => {
                let Some(run) = store.run(&run_id)? else {
                    eprintln!("wfrun: no run {run_id:?} in {}", store.dir().display());
                    return Ok(ExitStatus::Invalid);
                };
                match to {
                    None => print_outputs(&run.outputs, json)?,
                    Some(_) if matches!(run.status, RunStatus::Pending | RunStatus::Running) => {
                        eprintln!(
                            "wfrun: invalid_input: run {run_id} is still {}; copy its outputs once it ends",
                            run.status
                        );
                        return Ok(ExitStatus::Invalid);
                    }
                    Some(to) => return copy_outputs(&store.outputs_dir(&run_id), &run.outputs, &to, json),
                }
            }
            RunsSubcommand::Wait { .. } => unreachable!("answered above"),
        }
        Ok(ExitStatus::Success)
    }

    /// The history of the daemon `self.target` names, through its control API.
    fn remote(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        use super::daemon::send;
        use serde_json::json;
        let endpoint = match super::daemon::endpoint(global, &self.target) {
            Ok(endpoint) => endpoint,
            Err(status) => return Ok(status),
        };
        match self.command {
            // Printed as the local history prints them, so a script sees
            // the same output whichever side it reads.
            RunsSubcommand::List { status, limit, json } => {
                let params = json!({ "limit": limit, "status": status.map(|s| s.as_str()) });
                send(&endpoint, "runs.list", params, false, |runs| {
                    match serde_json::from_value::<Vec<RunRecord>>(runs.clone()) {
                        Ok(runs) if json => println!("{}", serde_json::to_string(&runs).unwrap_or_default()),
                        Ok(runs) => print_list(&runs),
                        Err(e) => eprintln!("wfrun: the daemon's run records do not parse: {e}"),
                    }
                })
            }
            RunsSubcommand::Show { run_id, json, trace } => {
                send(&endpoint, "runs.show", json!({ "run_id": run_id }), false, |run| {
                    match serde_json::from_value::<RunRecord>(run.clone()) {
                        Ok(run) if json => println!("{}", serde_json::to_string(&run).unwrap_or_default()),
                        Ok(run) => print_run(&run, trace),
                        Err(e) => eprintln!("wfrun: the daemon's run record does not parse: {e}"),
                    }
                })
            }
            RunsSubcommand::Logs { run_id, node, json } => {
                let response = match endpoint.call("runs.logs", json!({ "run_id": run_id })) {
                    Ok(response) => response,
                    Err(e) => {
                        eprintln!("wfrun: {e}");
                        return Ok(super::daemon::client_failure(&e));
                    }
                };
                let Some(result) = response.result.filter(|_| response.ok) else {
                    let error = response.error.map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_default();
                    eprintln!("wfrun: {}", printable(&error));
                    return Ok(ExitStatus::Invalid);
                };
                let logs = result
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|log| {
                        let text = |key: &str| log[key].as_str().unwrap_or_default().to_owned();
                        (text("node"), text("text"))
                    })
                    .collect();
                print_logs(&run_id, logs, node.as_deref(), json)?;
                Ok(ExitStatus::Success)
            }
            RunsSubcommand::Prune { .. } => {
                eprintln!("wfrun: runs prune works on a local state directory; run it on the daemon's host");
                Ok(ExitStatus::Usage)
            }
            RunsSubcommand::Outputs { to: Some(_), .. } => {
                eprintln!("wfrun: runs outputs --to copies from a local state directory; run it on the daemon's host");
                Ok(ExitStatus::Usage)
            }
            RunsSubcommand::Outputs { run_id, to: None, json } => {
                send(&endpoint, "runs.show", json!({ "run_id": run_id }), false, |run| {
                    match serde_json::from_value::<RunRecord>(run.clone()) {
                        Ok(run) => {
                            let _ = print_outputs(&run.outputs, json);
                        }
                        Err(e) => eprintln!("wfrun: the daemon's run record does not parse: {e}"),
                    }
                })
            }
            RunsSubcommand::Wait { .. } => unreachable!("answered in execute"),
        }
    }
}

fn print_outputs(outputs: &[crate::store::OutputFile], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(outputs)?);
        return Ok(());
    }
    if outputs.is_empty() {
        eprintln!("wfrun: the run left no outputs");
    }
    for file in outputs {
        println!("{:>12}  {}", file.bytes, printable(&file.path));
    }
    Ok(())
}

/// Copies the run's output `files` from `from` into `to`, never over an
/// existing file; a file that changed into something else (a link) since
/// it was listed is skipped.
fn copy_outputs(
    from: &std::path::Path,
    files: &[crate::store::OutputFile],
    to: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    use std::io::Write;
    let mut copied = Vec::new();
    for file in files {
        let source = from.join(&file.path);
        let target = to.join(&file.path);
        if !source.symlink_metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut out = match std::fs::OpenOptions::new().write(true).create_new(true).open(&target) {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                eprintln!(
                    "wfrun: invalid_input: {} exists; not overwritten (copy into an empty directory)",
                    target.display()
                );
                return Ok(ExitStatus::Invalid);
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("creating {}", target.display()))),
        };
        let bytes = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
        out.write_all(&bytes).with_context(|| format!("writing {}", target.display()))?;
        copied.push(crate::store::OutputFile { path: file.path.clone(), bytes: bytes.len() as u64 });
    }
    if json {
        println!("{}", serde_json::to_string(&copied)?);
    } else {
        eprintln!("wfrun: copied {} file(s) into {}", copied.len(), to.display());
    }
    Ok(ExitStatus::Success)
}

/// Prints `logs` (all, or only `node`'s), as text or a JSON array.
fn print_logs(run_id: &str, logs: Vec<(String, String)>, node: Option<&str>, json: bool) -> anyhow::Result<()> {
    let logs: Vec<(String, String)> = logs.into_iter().filter(|(name, _)| node.is_none_or(|n| n == name)).collect();
    if json {
        let logs: Vec<_> = logs.iter().map(|(node, text)| serde_json::json!({ "node": node, "text": text })).collect();
        println!("{}", serde_json::to_string(&logs)?);
        return Ok(());
    }
    if logs.is_empty() {
        match node {
            Some(node) => eprintln!("wfrun: run {run_id} has no log for node {node:?}"),
            None => eprintln!("wfrun: run {run_id} has no logs"),
        }
    }
    for (name, text) in logs {
        println!("=== {name} ===");
        print!("{}", printable_lines(&text));
    }
    Ok(())
}

/// How long [`wait`] sleeps between looks, at first and at most.
const WAIT_POLL: (std::time::Duration, std::time::Duration) =
    (std::time::Duration::from_millis(5), std::time::Duration::from_millis(250));

/// Why [`await_end`] could not see a run end.
pub(super) enum WaitFailure {
    /// The daemon could not be asked.
    Client(crate::daemon::control::ClientError),
    /// The daemon refused (`code: message`), e.g. no such run.
    Refused(String),
    /// The deadline passed first; the run (this id) goes on.
    TimedOut(String),
}

/// Waits for run `run_id` of the daemon at `endpoint` to end, following
/// retries (`retried` hears of each), and returns the last attempt's record.
pub(super) fn await_end(
    endpoint: &Endpoint,
    run_id: &str,
    deadline: Option<std::time::Instant>,
    mut retried: impl FnMut(&RunRecord, &str),
) -> Result<RunRecord, WaitFailure> {
    let mut run_id = run_id.to_owned();
    let mut pause = WAIT_POLL.0;
    loop {
        let response =
            endpoint.call("runs.show", serde_json::json!({ "run_id": run_id })).map_err(WaitFailure::Client)?;
        let Some(result) = response.result.filter(|_| response.ok) else {
            let error = response.error.map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_default();
            return Err(WaitFailure::Refused(error));
        };
        let settled = result["settled"] != false;
        let run: RunRecord = serde_json::from_value(result)
            .map_err(|e| WaitFailure::Refused(format!("internal: the daemon's run record does not parse: {e}")))?;
        if !matches!(run.status, RunStatus::Pending | RunStatus::Running) {
            if let Some(retry) = run.retried_as.clone() {
                retried(&run, &retry);
                run_id = retry;
                pause = WAIT_POLL.0;
                continue;
            }
            if settled {
                return Ok(run);
            }
        }
        if deadline.is_some_and(|deadline| std::time::Instant::now() + pause > deadline) {
            return Err(WaitFailure::TimedOut(run_id));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(WAIT_POLL.1);
    }
}

/// Waits for run `run_id` of the daemon at `endpoint` to end, following
/// retries, prints it, and returns the status `exec` would have.
pub(super) fn wait(endpoint: &Endpoint, run_id: &str, json: bool) -> anyhow::Result<ExitStatus> {
    let ended = await_end(endpoint, run_id, None, |run, retry| {
        eprintln!(
            "wfrun: run {} ended {} ({}); waiting for its retry {retry}",
            run.run_id,
            run.status,
            run.error_code.map_or("-", |c| c.as_str())
        );
    });
    let run = match ended {
        Ok(run) => run,
        Err(WaitFailure::Client(e)) => {
            eprintln!("wfrun: {e}");
            return Ok(super::daemon::client_failure(&e));
        }
        Err(WaitFailure::Refused(error)) => {
            eprintln!("wfrun: {}", printable(&error));
            return Ok(ExitStatus::Invalid);
        }
        Err(WaitFailure::TimedOut(_)) => unreachable!("no deadline"),
    };
    let status = ExitStatus::of_ended(run.status, run.error_code, run.exit_code);
    if json {
        println!("{}", serde_json::to_string(&run)?);
        return Ok(status);
    }
    if let Some(output) = &run.output {
        println!("{output}");
    } else if run.kind == Some(crate::outcome::GuestKind::Job)
        && let Ok(response) = endpoint.call("runs.logs", serde_json::json!({ "run_id": run.run_id }))
        && let Some(logs) = response.result.as_ref().and_then(|r| r.as_array())
    {
        // A job's output is what it wrote, as `exec` streams it.
        for log in logs {
            let (stdout, stderr) = split_job_log(log["text"].as_str().unwrap_or_default());
            print!("{stdout}");
            eprint!("{stderr}");
        }
    }
    if let Some(code) = run.error_code {
        eprintln!("wfrun: {code}: {}", printable(run.error_message.as_deref().unwrap_or("")));
    }
    Ok(status)
}

/// A job's stdout and stderr out of its log text
/// ([`node_log_text`](crate::workflow::node_log_text)'s layout: log lines,
/// then `--- stdout ---`, then `--- stderr ---` sections).
fn split_job_log(text: &str) -> (&str, &str) {
    const STDOUT: &str = "--- stdout ---\n";
    const STDERR: &str = "--- stderr ---\n";
    let after = |marker: &str, from: &str| -> Option<usize> {
        from.match_indices(marker).find(|(at, _)| *at == 0 || from.as_bytes()[at - 1] == b'\n').map(|(at, _)| at)
    };
    let out_at = after(STDOUT, text);
    let rest = out_at.map_or(text, |at| &text[at + STDOUT.len()..]);
    // The last marker: what a job printed may contain the text of one.
    let err_at = rest.rfind(STDERR);
    let stdout = match (out_at, err_at) {
        (Some(_), Some(at)) => &rest[..at],
        (Some(_), None) => rest,
        (None, _) => "",
    };
    let stderr = err_at.map_or("", |at| &rest[at + STDERR.len()..]);
    (stdout, stderr)
}

fn printable_lines(text: &str) -> String {
    text.lines().map(|line| format!("{}\n", printable(line))).collect()
}

fn print_list(runs: &[RunRecord]) {
    println!("{:<36}  {:<16}  {:<9}  {:>10}  {:<16}  CREATED", "RUN ID", "WORKFLOW", "STATUS", "DURATION", "ERROR");
    for run in runs {
        let duration = run.duration_ms.map(|ms| format!("{ms:.1} ms")).unwrap_or_else(|| "-".to_owned());
        println!(
            "{:<36}  {:<16}  {:<9}  {:>10}  {:<16}  {}",
            run.run_id,
            printable(&run.workflow),
            run.status,
            duration,
            run.error_code.map_or("-", |c| c.as_str()),
            run.created_at
        );
    }
}

fn print_run(run: &RunRecord, trace: bool) {
    println!("run        {}", run.run_id);
    println!(
        "workflow   {} {} ({})",
        printable(&run.workflow),
        printable(&run.version),
        run.kind.map_or("-", |k| k.as_str())
    );
    println!("bundle     {} {}", printable(&run.bundle_path), run.bundle_digest);
    println!("status     {}", run.status);
    if let Some(code) = &run.error_code {
        let node = run.failed_node.as_ref().map(|n| format!(" in node `{n}`")).unwrap_or_default();
        let detail = run.error_detail.as_ref().map(|d| format!(" ({})", printable(d))).unwrap_or_default();
        println!("error      {code}{detail}{node}: {}", printable(run.error_message.as_deref().unwrap_or("")));
    }
    if let Some(exit) = run.exit_code {
        println!("exit code  {exit}");
    }
    if let Some(ms) = run.duration_ms {
        println!(
            "cost       {ms:.1} ms, {} fuel, {} bytes peak memory",
            run.fuel_consumed.unwrap_or(0),
            run.peak_memory_bytes.unwrap_or(0)
        );
    }
    if !run.policy_violations.is_empty() {
        println!("egress refused ({})", run.policy_violations.len());
        for violation in &run.policy_violations {
            let node = violation.node.as_ref().map(|n| format!("node `{}`: ", printable(n))).unwrap_or_default();
            let rule_set = serde_json::to_value(violation.rule_set).ok();
            println!(
                "  {node}{} [{}] {}",
                printable(&violation.target),
                rule_set.as_ref().and_then(|v| v.as_str()).unwrap_or("-"),
                printable(&violation.reason)
            );
        }
    }
    if !run.metrics.is_empty() {
        println!("metrics");
        for (name, metric) in &run.metrics {
            println!("  {:<7}  {:>16}  {}", metric.kind.as_str(), metric.value, printable(name));
        }
    }
    if !run.outputs.is_empty() {
        let bytes: u64 = run.outputs.iter().map(|f| f.bytes).sum();
        println!("outputs    {} file(s), {bytes} bytes (`wfrun runs outputs {}`)", run.outputs.len(), run.run_id);
        for file in &run.outputs {
            println!("  {:>12}  {}", file.bytes, printable(&file.path));
        }
    }
    println!("history");
    for (status, at) in &run.transitions {
        println!("  {at}  {status}");
    }
    println!("nodes (in the order they finished)");
    println!(
        "  {:<16}  {:<9}  {:>8}  {:>10}  {:>14}  {:>12}  {:>10}  ERROR",
        "NODE", "STATUS", "ATTEMPTS", "DURATION", "FUEL", "PEAK MEMORY", "OUTPUT"
    );
    for node in &run.nodes {
        println!(
            "  {:<16}  {:<9}  {:>8}  {:>10}  {:>14}  {:>12}  {:>10}  {}",
            printable(&node.node),
            node.status,
            node.attempts,
            format!("{:.1} ms", node.duration_ms),
            node.fuel_consumed,
            node.peak_memory_bytes,
            node.output_bytes,
            node.error_code
                .map(|c| format!("{c}: {}", printable(node.error_message.as_deref().unwrap_or(""))))
                .unwrap_or_default()
        );
    }
    if trace {
        println!("trace");
        for node in &run.nodes {
            println!("  {}", printable(&node.node));
            println!("    input   {}", node.input_digest.as_deref().unwrap_or("-"));
            println!("    output  {}", node.output_digest.as_deref().unwrap_or("-"));
            for (i, call) in node.trace.iter().enumerate() {
                println!("    {:>4}  {}", i + 1, printable(&serde_json::to_string(call).unwrap_or_default()));
            }
        }
    }
}
