//! `wfrun runs`: the run history, read from the state directory's database.

use super::{GlobalArgs, printable};
use crate::outcome::ExitStatus;
use crate::outcome::RunStatus;
use crate::store::{RunRecord, Store};
use anyhow::Context;
use clap::{Args, Subcommand};

/// Inspect recorded runs: what ran, in which order, how long each node took,
/// what it cost, and why a run failed.
#[derive(Debug, Args)]
pub struct RunsCommand {
    #[command(subcommand)]
    command: RunsSubcommand,
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
    },
}

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
                RunsSubcommand::Show { run_id, .. } | RunsSubcommand::Logs { run_id, .. } => {
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
            RunsSubcommand::Logs { run_id, node } => {
                if store.run(&run_id)?.is_none() {
                    eprintln!("wfrun: no run {run_id:?} in {}", store.dir().display());
                    return Ok(ExitStatus::Invalid);
                }
                // Small logs are in the database, large ones in files.
                let mut logs: Vec<(String, String)> = store.inline_logs(&run_id)?;
                let dir = store.log_dir(&run_id);
                let mut files: Vec<_> = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
                    Err(_) => Vec::new(),
                };
                files.sort();
                for file in files {
                    let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                    logs.push((name, text));
                }
                logs.sort();
                let mut shown = 0;
                for (name, text) in logs {
                    if node.as_ref().is_some_and(|n| *n != name) {
                        continue;
                    }
                    println!("=== {name} ===");
                    print!("{}", printable_lines(&text));
                    shown += 1;
                }
                if shown == 0 {
                    match node {
                        Some(node) => eprintln!("wfrun: run {run_id} has no log for node {node:?}"),
                        None => eprintln!("wfrun: run {run_id} has no logs"),
                    }
                }
            }
        }
        Ok(ExitStatus::Success)
    }
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
