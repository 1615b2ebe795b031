//! The `wfrun` command line.
//!
//! Each subcommand is one `*Command` struct (clap derive) with an
//! `execute()` that resolves its flags into library settings, calls the
//! library and prints the result. No engine, store or linker code lives
//! here. [`main`] parses, dispatches, prints the error chain of an internal
//! failure and returns the documented exit status.

mod cache;
mod completions;
mod daemon;
mod exec;
mod exit;
mod fleet;
mod inspect;
mod mcp;
mod pack;
mod release;
mod runs;
mod sign;
mod target;

use crate::outcome::ExitStatus;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Run WebAssembly components in a sandbox: fuel, memory and time limits,
/// nothing granted by default, and a clear report of every run.
#[derive(Debug, Parser)]
#[command(name = "wfrun", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where run history, state and logs live. Precedence: this flag, then
    /// WFRUN_DIR, then $XDG_STATE_HOME/wfrun, then ~/.local/state/wfrun.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl GlobalArgs {
    /// The resolved state directory (no config file).
    pub fn state_dir(&self) -> PathBuf {
        crate::settings::state_dir(self.state_dir.as_deref(), None)
    }

    /// The resolved state directory, with a config file's `state_dir`
    /// below the flag and `WFRUN_DIR`.
    pub fn state_dir_with(&self, config: Option<&std::path::Path>) -> PathBuf {
        crate::settings::state_dir(self.state_dir.as_deref(), config)
    }
}

/// Each subcommand's arguments are built only when it is the one being
/// parsed (or for its help, completions and man pages): building all of
/// them was a tenth of a warm `exec`. Its description therefore lives here,
/// on the variant, which is built at once: `wfrun --help` lists it.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
enum Command {
    /// Run a bundle once (a node, a job or a workflow) under limits, record it,
    /// and report what happened.
    Exec(Box<exec::ExecCommand>),
    /// Pack a workflow (workflow.toml and its node components) into one bundle,
    /// itself a valid component.
    Pack(pack::PackCommand),
    /// Show a bundle's name, version, digest, size, nodes with their imports and
    /// exports, requested capabilities and signature status.
    Inspect(inspect::InspectCommand),
    /// Inspect recorded runs: what ran, in which order, how long each node took,
    /// what it cost, and why a run failed.
    Runs(runs::RunsCommand),
    /// Make a signing key pair: DIR/wfrun.key (private, mode 0600) and
    /// DIR/wfrun.pub (give this to whoever runs your bundles).
    Keygen(sign::KeygenCommand),
    /// Sign a bundle: embed the signature as its last section (default), or write
    /// BUNDLE.sig beside it with --detached.
    Sign(sign::SignCommand),
    /// Verify a bundle's signature against trusted keys. Exits 0 only for a
    /// valid signature by a trusted key.
    Verify(sign::VerifyCommand),
    /// List or clear compiled components kept in <state-dir>/cache.
    Cache(cache::CacheCommand),
    /// Run jobs: schedules, webhooks, a control socket, retries, clean stops.
    Daemon(daemon::DaemonCommand),
    /// Show the daemon's jobs, their schedules and the runs in flight.
    Status(daemon::StatusCommand),
    /// Add, list, remove, pause and resume the daemon's jobs.
    Jobs(daemon::JobsCommand),
    /// Run a daemon job now.
    Trigger(daemon::TriggerCommand),
    /// Cancel a run the daemon is running; it is recorded `cancelled`.
    Cancel(daemon::CancelCommand),
    /// Publish releases for devices: a signed TUF repository.
    Release(release::ReleaseCommand),
    /// The daemon's releases: what is active, in trial, and how the last check
    /// of the release origin went.
    Sync(daemon::SyncCommand),
    /// Roll back the daemon's release by hand: the one in trial, or else the
    /// committed one (the release before it comes back). Needs a `[sync]` table.
    Rollback(daemon::RollbackCommand),
    /// A fleet on one machine: serve releases and receive reports.
    Fleet(fleet::FleetCommand),
    /// Print a shell completion script for wfrun.
    Completions(completions::CompletionsCommand),
    /// Print wfrun's manual page (roff), or write one page per command.
    Man(completions::ManCommand),
    /// Serve the control plane (and exec) to an agent over MCP on stdio.
    Mcp(mcp::McpCommand),
}

/// Ends the process quietly, with status 0, when whatever reads its
/// standard output goes away (`wfrun runs list | head`): the reader had
/// what it wanted. Rust ignores SIGPIPE, so a write to the closed pipe is an
/// error, and `println!` panics on it; every other panic is reported as
/// before.
fn quiet_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // std's message, with the error's text: "… Broken pipe (os error 32)".
        if message.starts_with("failed printing to stdout") && message.contains("(os error 32)") {
            std::process::exit(0);
        }
        report(info);
    }));
}

/// Runs the `wfrun` command line and returns its exit status.
pub fn main() -> ExitCode {
    quiet_on_broken_pipe();
    init_tracing();
    let cli = Cli::parse();
    // `exec` is often one of many short processes, each waited for: it
    // leaves without making its caller wait for its memory to be unmapped.
    let leave_at_once = matches!(cli.command, Command::Exec(_));
    let result = match cli.command {
        Command::Exec(command) => command.execute(&cli.global),
        Command::Pack(command) => command.execute(&cli.global),
        Command::Inspect(command) => command.execute(),
        Command::Runs(command) => command.execute(&cli.global),
        Command::Keygen(command) => command.execute(),
        Command::Sign(command) => command.execute(),
        Command::Verify(command) => command.execute(),
        Command::Cache(command) => command.execute(&cli.global),
        Command::Daemon(command) => command.execute(&cli.global),
        Command::Status(command) => command.execute(&cli.global),
        Command::Jobs(command) => command.execute(&cli.global),
        Command::Trigger(command) => command.execute(&cli.global),
        Command::Cancel(command) => command.execute(&cli.global),
        Command::Release(command) => command.execute(),
        Command::Sync(command) => command.execute(&cli.global),
        Command::Rollback(command) => command.execute(&cli.global),
        Command::Fleet(command) => command.execute(&cli.global),
        Command::Completions(command) => command.execute(),
        Command::Man(command) => command.execute(),
        Command::Mcp(command) => command.execute(&cli.global),
    };
    match result {
        Ok(status) if leave_at_once => exit::exit(status.code()),
        Ok(status) => ExitCode::from(status.code()),
        Err(error) => {
            eprintln!("wfrun: error: {error:#}");
            ExitCode::from(ExitStatus::Internal.code())
        }
    }
}

/// wfrun's own diagnostics go to stderr, filtered by `WFRUN_LOG` (e.g.
/// `WFRUN_LOG=debug`); warnings and errors only by default.
fn init_tracing() {
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Without `WFRUN_LOG`, a plain level: an `EnvFilter` is a tenth of a
    // millisecond to build, a fiftieth of a warm `exec`.
    let _ = match std::env::var_os("WFRUN_LOG") {
        Some(_) => subscriber
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("WFRUN_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .try_init(),
        None => subscriber.with_max_level(tracing::Level::WARN).try_init(),
    };
}

/// Escapes control characters in text from guests or files before it
/// reaches a terminal, so it cannot move the cursor or rewrite lines.
pub(crate) fn printable(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}
