//! `wfrun exec`: run one bundle once, locally.

use crate::bundle::Bundle;
use crate::outcome::{ErrorCode, ExitStatus, GuestKind, RunReport};
use crate::sandbox::{DirGrant, Echo, EngineOptions, Grants, Limits, RunRequest, Sandbox, Tee};
use anyhow::Context;
use clap::Args;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
A node exports wfrun:node/handler: it takes JSON input and prints its JSON
output. A job is any WASI command (a Rust `fn main` built for wasm32-wasip2);
its arguments follow `--`, and its stdout and stderr stream to the terminal.

The guest gets nothing it is not granted: no files (--dir), no environment
(--env), no network, no sockets. Fixed limits besides the flags below: 100
core instances, 100 tables, 16 memories, 100,000 table elements in all, and
10,000 open host resources.

Exit status:
  0   the run succeeded
  1   wfrun itself failed (an I/O error, a bug)
  2   the command line is wrong
  3   the node returned a node error
  4   a limit stopped the run: timeout, fuel_exhausted, memory_limit,
      stack_overflow or output_limit
  5   the guest trapped (a panic, unreachable, an out-of-bounds access)
  6   the bundle or the input was rejected (invalid_bundle, invalid_input)
  N   a job that exits with status N passes it through, as `wasmtime run` does

Examples:
  wfrun exec hello.wasm --input '{\"name\":\"Ada\"}'
  echo '{\"values\":[3,1,2]}' | wfrun exec stats.wasm --json
  wfrun exec job.wasm --dir ./data::/data:rw --env MODE=fast -- --verbose file.txt
  wfrun exec untrusted.wasm --memory 16MiB --timeout 500ms --fuel 100000000";

/// Run a node or job component once, under limits, and report what happened.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ExecCommand {
    /// The component to run (.wasm): a node or a WASI command job.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,

    /// Arguments for a job, after `--`. Nodes take --input instead.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,

    /// A node's input as JSON text. Without --input or --input-file, the input
    /// is read from stdin when it is piped, else it is `{}`.
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    input: Option<String>,

    /// Read a node's JSON input from this file.
    #[arg(long, value_name = "PATH")]
    input_file: Option<PathBuf>,

    /// Fuel budget: about one unit per wasm instruction. Running out ends the
    /// run with `fuel_exhausted`.
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_FUEL)]
    fuel: u64,

    /// Do not meter fuel. Guest code runs a little faster; --timeout still
    /// bounds it, and fuel_consumed is reported as 0.
    #[arg(long, conflicts_with = "fuel")]
    no_fuel: bool,

    /// Linear memory limit, summed over all of the instance's memories
    /// (e.g. 64MiB, 512KiB).
    #[arg(long, value_name = "SIZE", default_value = "128MiB", value_parser = parse_size)]
    memory: u64,

    /// Wall-clock limit from instantiation to the end of the run (e.g. 2s, 500ms, 1m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    timeout: Duration,

    /// Maximum size of a node's output JSON.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    max_output: u64,

    /// Maximum bytes captured from stdout, and from stderr, each.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    max_stdio: u64,

    /// Maximum bytes of messages written through the `log` import.
    #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = parse_size)]
    max_log: u64,

    /// Maximum native stack wasm code may use before `stack_overflow`
    /// (64KiB to 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "512KiB", value_parser = parse_stack)]
    max_stack: u64,

    /// Grant a host directory: HOST::GUEST (read-only) or HOST::GUEST:rw.
    /// A bare DIR is granted at the same path. Repeatable.
    #[arg(long = "dir", value_name = "HOST::GUEST[:rw]", value_parser = parse_dir)]
    dirs: Vec<DirGrant>,

    /// Set an environment variable for the guest: KEY=VALUE. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Print one JSON object describing the run on stdout (the guest's stdout
    /// is then captured into it, not echoed).
    #[arg(long)]
    json: bool,

    /// Do not echo the guest's stderr and log lines to stderr.
    #[arg(long, short)]
    quiet: bool,
}

impl ExecCommand {
    /// Runs the bundle and prints the outcome.
    pub fn execute(self) -> anyhow::Result<ExitStatus> {
        let report = self.run()?;
        self.print(&report)?;
        Ok(ExitStatus::of(&report))
    }

    fn run(&self) -> anyhow::Result<RunReport> {
        let bundle = match Bundle::read(&self.bundle) {
            Ok(bundle) => bundle,
            Err(e) => return Ok(RunReport::rejected(ErrorCode::InvalidBundle, e.to_string())),
        };
        let max_wasm_stack = usize::try_from(self.max_stack).context("--max-stack is too large")?;
        let sandbox = Sandbox::new(EngineOptions {
            fuel_metering: !self.no_fuel,
            max_wasm_stack,
        })?;
        let program = match sandbox.load(&bundle) {
            Ok(program) => program,
            Err(e) => {
                let mut report = RunReport::rejected(ErrorCode::InvalidBundle, e.to_string());
                report.bundle_digest = Some(bundle.digest());
                return Ok(report);
            }
        };
        let request = match self.request(program.kind()) {
            Ok(request) => request,
            Err(message) => {
                let mut report = RunReport::rejected(ErrorCode::InvalidInput, message);
                report.kind = Some(program.kind());
                report.bundle_digest = Some(bundle.digest());
                return Ok(report);
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let report = runtime.block_on(sandbox.run(&program, &request));
        // A guest stopped by the deadline may leave a blocking file operation
        // behind (a read from a FIFO it was granted); do not wait for it.
        runtime.shutdown_timeout(Duration::from_millis(100));
        Ok(report)
    }

    /// Resolves the flags into a run request, or says which input is unusable.
    fn request(&self, kind: GuestKind) -> Result<RunRequest, String> {
        let input = match kind {
            GuestKind::Node => {
                if !self.args.is_empty() {
                    return Err(format!(
                        "{}: is a node and takes --input, not arguments after `--`",
                        self.bundle.display()
                    ));
                }
                self.node_input()?
            }
            GuestKind::Job => {
                if self.input.is_some() || self.input_file.is_some() {
                    return Err(format!(
                        "{}: is a job and takes arguments after `--`, not --input",
                        self.bundle.display()
                    ));
                }
                String::new()
            }
        };
        for dir in &self.dirs {
            if !dir.host.is_dir() {
                return Err(format!(
                    "--dir {}: no such directory on the host",
                    dir.host.display()
                ));
            }
        }
        let echo = Echo {
            stdout: match (kind, self.json) {
                (_, true) => Tee::None,
                // A node's stdout is chatter; its output JSON owns our stdout.
                (GuestKind::Node, false) => {
                    if self.quiet {
                        Tee::None
                    } else {
                        Tee::Stderr
                    }
                }
                (GuestKind::Job, false) => Tee::Stdout,
            },
            stderr: if self.quiet { Tee::None } else { Tee::Stderr },
            logs: if self.quiet { Tee::None } else { Tee::Stderr },
        };
        Ok(RunRequest {
            input,
            args: self.args.clone(),
            inherit_stdin: kind == GuestKind::Job,
            limits: Limits {
                fuel: self.fuel,
                memory_bytes: self.memory,
                timeout: self.timeout,
                output_bytes: self.max_output,
                stdio_bytes: self.max_stdio,
                log_bytes: self.max_log,
                ..Limits::default()
            },
            grants: Grants {
                dirs: self.dirs.clone(),
                env: self.env.clone(),
            },
            echo,
        })
    }

    fn node_input(&self) -> Result<String, String> {
        let (source, text) = if let Some(input) = &self.input {
            ("--input".to_owned(), input.clone())
        } else if let Some(path) = &self.input_file {
            let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format!("input file {}: no such file", path.display())
                }
                _ => format!("input file {}: cannot read: {e}", path.display()),
            })?;
            (format!("input file {}", path.display()), text)
        } else if std::io::stdin().is_terminal() {
            return Ok("{}".to_owned());
        } else {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("stdin: cannot read: {e}"))?;
            if text.trim().is_empty() {
                return Ok("{}".to_owned());
            }
            ("stdin".to_owned(), text)
        };
        // The sandbox checks too; checking here lets the message name the source.
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| format!("{source}: malformed JSON: {e}"))?;
        Ok(text)
    }

    fn print(&self, report: &RunReport) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(report)?);
            return Ok(());
        }
        if let Some(output) = &report.output {
            println!("{}", output.get());
        }
        if let (Some(code), Some(message)) = (report.error_code, &report.error_message) {
            // A job's own exit status speaks for itself, as with `wasmtime run`.
            if !(code == ErrorCode::NodeError && report.exit_code.is_some()) {
                eprintln!("wfrun: {code}: {}", printable(message));
            }
        }
        Ok(())
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{text:?} is not a size like 64MiB, 512KiB or 1048576: {e}"))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 2s, 500ms or 1m: {e}"))?;
    if timeout.is_zero() || timeout > Limits::MAX_TIMEOUT {
        return Err(format!("{text:?} is outside 1ms..=7days"));
    }
    Ok(timeout)
}

fn parse_stack(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if !(64 * 1024..=64 * 1024 * 1024).contains(&size) {
        return Err(format!("{text:?} is outside 64KiB..=64MiB"));
    }
    Ok(size)
}

/// Escapes control characters in guest-supplied text before it reaches a
/// terminal, so a guest cannot move the cursor or rewrite earlier lines.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn parse_dir(text: &str) -> Result<DirGrant, String> {
    let (host, guest) = match text.split_once("::") {
        Some((host, guest)) => (host, guest),
        None => (text, text),
    };
    let (guest, writable) = if let Some(guest) = guest.strip_suffix(":rw") {
        (guest, true)
    } else if let Some(guest) = guest.strip_suffix(":ro") {
        (guest, false)
    } else {
        (guest, false)
    };
    let host = host
        .strip_suffix(":rw")
        .or_else(|| host.strip_suffix(":ro"))
        .unwrap_or(host);
    if host.is_empty() || guest.is_empty() {
        return Err(format!(
            "{text:?} is not HOST::GUEST, HOST::GUEST:rw or DIR"
        ));
    }
    Ok(DirGrant {
        host: PathBuf::from(host),
        guest: guest.to_owned(),
        writable,
    })
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_grants_are_read_only_unless_rw() {
        let ro = parse_dir("./data::/data").unwrap();
        assert_eq!(
            (ro.host.to_str().unwrap(), ro.guest.as_str(), ro.writable),
            ("./data", "/data", false)
        );
        let rw = parse_dir("/srv/in::/in:rw").unwrap();
        assert_eq!((rw.guest.as_str(), rw.writable), ("/in", true));
        let bare = parse_dir("/tmp/x").unwrap();
        assert_eq!((bare.guest.as_str(), bare.writable), ("/tmp/x", false));
        assert!(parse_dir("::/x").is_err());
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 * 1024 * 1024);
        assert_eq!(parse_size("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        assert_eq!(printable("ok\x1b[2Jgone\nline"), "ok\\u{1b}[2Jgone\\nline");
    }

    #[test]
    fn timeouts_and_stacks_are_range_checked() {
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("8days").is_err());
        assert!(parse_stack("1KiB").is_err());
        assert!(parse_stack("1GiB").is_err());
        assert_eq!(parse_stack("1MiB").unwrap(), 1024 * 1024);
    }

    #[test]
    fn env_needs_a_key() {
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            ("A".to_owned(), "b=c".to_owned())
        );
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
