//! The `wfrun` command line.
//!
//! Each subcommand is one `*Command` struct (clap derive) with an
//! `execute()` that resolves its flags into library settings, calls the
//! library and prints the result. No engine, store or linker code lives
//! here. [`main`] parses, dispatches, prints the error chain of an internal
//! failure and returns the documented exit status.

mod exec;

use crate::outcome::ExitStatus;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Run WebAssembly components in a sandbox: fuel, memory and time limits,
/// nothing granted by default, and a clear report of every run.
#[derive(Debug, Parser)]
#[command(name = "wfrun", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Exec(exec::ExecCommand),
}

/// Runs the `wfrun` command line and returns its exit status.
pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Exec(command) => command.execute(),
    };
    match result {
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("WFRUN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
