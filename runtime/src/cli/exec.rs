//! `wfrun exec`: run one bundle once, locally.

use super::{GlobalArgs, printable};
use crate::egress::{EgressPolicy, PolicyFile, Rule};
use crate::limits::{LimitKey, LimitRequest};
use crate::outcome::{ErrorCode, ExitStatus, GuestKind, RunReport, RunStatus};
use crate::policy::{Policy, TrustPolicy};
use crate::runner::{Rejection, Runner};
use crate::sandbox::{DirGrant, Echo, EngineOptions, Grants, Sandbox, Tee};
use crate::store::{Store, StoreError};
use crate::workflow::Execution;
use anyhow::Context;
use clap::Args;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const AFTER_HELP: &str = "\
A node exports wfrun:node/handler: it takes JSON input and prints its JSON
output. A job is any WASI command (a Rust `fn main` built for wasm32-wasip2);
its arguments follow `--`, and its stdout and stderr stream to the terminal.
A workflow bundle (wfrun pack) runs its nodes in dependency order. The limit
flags are the operator's ceilings: a node gets the limits its workflow asks
for, never more than these (or their defaults). Ctrl-C cancels a run: running
nodes stop within 10 ms and the run is recorded `cancelled` (exit 130).

Every run that starts is recorded in the state directory: see `wfrun runs`.

The guest gets nothing it is not granted: no files (--dir), no environment
(--env), no network (--allow-host, --policy). An egress rule is
scheme://host[:port]: `https://api.example.com`, `https://*.example.com`
(subdomains only), `http://127.0.0.1:8080`, `https://10.0.0.0/8:*`,
`tcp://192.0.2.7:5432` (sockets). Loopback, private, link-local and metadata
addresses need a rule naming the IP or CIDR, even when a name resolves to
them. A workflow gets only what both its capabilities.egress and the operator
allow; refused requests are listed in the run's policy_violations. Fixed limits besides the flags below: 100
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
  130 the run was cancelled (Ctrl-C)
  N   a job that exits with status N passes it through, as `wasmtime run` does

Examples:
  wfrun exec hello.wasm --input '{\"name\":\"Ada\"}'
  echo '{\"values\":[3,1,2]}' | wfrun exec stats.wasm --json
  wfrun exec job.wasm --dir ./data::/data:rw --env MODE=fast -- --verbose file.txt
  wfrun exec untrusted.wasm --memory 16MiB --timeout 500ms --fuel 100000000
  wfrun exec fetch.wasm --allow-host https://api.github.com --input '{\"url\":\"https://api.github.com/zen\"}'
  wfrun exec report.wasm --policy policy.toml";

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ExecCommand {
    /// The bundle to run (.wasm): a node, a WASI command job, or a workflow
    /// bundle made by `wfrun pack`.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,

    /// Arguments for a job, after `--`. Nodes and workflows take --input.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,

    /// Input as JSON text. Without --input or --input-file, the input is read
    /// from stdin when it is piped, else it is `{}`.
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    input: Option<String>,

    /// Read the JSON input from this file.
    #[arg(long, value_name = "PATH")]
    input_file: Option<PathBuf>,

    /// Fuel budget: about one unit per wasm instruction. Running out ends the
    /// run with `fuel_exhausted`. [default: 10000000000]
    #[arg(long, value_name = "N", value_parser = parse_fuel)]
    fuel: Option<u64>,

    /// Do not meter fuel. --timeout still bounds the run, and fuel_consumed
    /// is reported as 0.
    #[arg(long, conflicts_with = "fuel")]
    no_fuel: bool,

    /// Linear memory limit, summed over all of the instance's memories
    /// (e.g. 64MiB, 512KiB; 64KiB to 64GiB). [default: 128MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    memory: Option<u64>,

    /// Wall-clock limit from instantiation to the end of the run, per node
    /// attempt (e.g. 2s, 500ms, 1m). [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    timeout: Option<Duration>,

    /// Maximum size of a node's output JSON (up to 4GiB). [default: 16MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_capture)]
    max_output: Option<u64>,

    /// Maximum bytes captured from stdout, and from stderr, each (up to
    /// 4GiB). [default: 8MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_capture)]
    max_stdio: Option<u64>,

    /// Maximum bytes of messages written through the `log` import (up to
    /// 4GiB). [default: 4MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_capture)]
    max_log: Option<u64>,

    /// Maximum native stack wasm code may use before `stack_overflow`
    /// (64KiB to 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "512KiB", value_parser = parse_stack)]
    max_stack: u64,

    /// Give the run a writable /outputs directory, kept with the run under
    /// the state directory (`wfrun runs outputs RUN_ID`). A workflow asking
    /// for one ([capabilities] outputs = true) gets it without this flag.
    #[arg(long = "outputs")]
    outputs: bool,

    /// The most bytes /outputs may hold (all files together); past it the
    /// run is stopped with output_limit and its outputs removed.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_outputs_size)]
    max_outputs: u64,

    /// The most files and directories /outputs may hold.
    #[arg(long, value_name = "N", default_value_t = crate::limits::OutputsLimit::DEFAULT_FILES,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_output_files: u64,

    /// Grant a host directory: HOST::GUEST (read-only) or HOST::GUEST:rw.
    /// A bare DIR is granted at the same path. Repeatable.
    #[arg(long = "dir", value_name = "HOST::GUEST[:rw]", value_parser = parse_dir)]
    dirs: Vec<DirGrant>,

    /// Allow HTTP requests (or sockets, with tcp:// and udp://) matching
    /// RULE: scheme://host[:port]. Repeatable; adds to --policy's rules.
    #[arg(long = "allow-host", value_name = "RULE", value_parser = parse_rule)]
    allow_hosts: Vec<Rule>,

    /// Read the egress grant from a policy file: an [egress] table with
    /// `allow = [RULES]` and optional max_response_body, connect_timeout,
    /// first_byte_timeout and max_concurrent_requests. See docs/security.md.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,

    /// Set an environment variable for the guest: KEY=VALUE. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Workflow nodes running at once, at most, whatever the workflow asks
    /// for. [default: 4]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    max_parallel: Option<u64>,

    /// A file of secrets, one NAME=VALUE per line (# for comments). A secret
    /// reaches only the workflow nodes whose definition names it.
    #[arg(long, value_name = "PATH")]
    secrets_file: Option<PathBuf>,

    /// Trust this public key (a .pub file or `ed25519:<hex>`): the bundle
    /// must then carry a valid signature by one of the trusted keys.
    /// Repeatable. An invalid signature is refused with or without it.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,

    /// Refuse unsigned bundles, whatever else is set. Needs at least one
    /// --trust key: without one nothing could run, and wfrun says so
    /// (exit 6, error_detail invalid_setting) instead of running anything.
    #[arg(long)]
    require_signed: bool,

    /// Compile every component now instead of loading it from the
    /// compiled-artifact cache in the state directory (which is neither
    /// read nor written).
    #[arg(long)]
    no_cache: bool,

    /// Print one JSON object describing the run on stdout (the guest's stdout
    /// is then captured into it, not echoed).
    #[arg(long)]
    json: bool,

    /// Do not echo the guest's stderr and log lines to stderr.
    #[arg(long, short)]
    quiet: bool,
}

impl ExecCommand {
    /// Runs the bundle, records it, and prints the outcome.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        let report = self.run(global)?;
        self.print(&report)?;
        Ok(ExitStatus::of(&report))
    }

    fn run(&self, global: &GlobalArgs) -> anyhow::Result<RunReport> {
        // The operator's side first: trust, ceilings, egress. An unusable
        // setting is refused before any bundle is touched.
        let policy = match self.policy() {
            Ok(policy) => policy,
            Err(message) => return Ok(RunReport::rejected_with(ErrorCode::InvalidInput, "invalid_setting", message)),
        };
        let max_wasm_stack = usize::try_from(self.max_stack).context("--max-stack is too large")?;
        let state_dir = global.state_dir();
        // The state directory is checked before anything in it is read (the
        // artifact cache); then the database opens on a thread of its own
        // while the engine starts and the bundle is prepared, and that
        // thread goes on to compile the statements of the run's record while
        // the run goes on. SQLite reading the schema, and the engine with its
        // cached program, each take a tenth of a warm `exec`
        // (docs/performance.md). The store is awaited before anything is
        // recorded or run: an unusable database (one from a newer wfrun)
        // stops the run, and its error comes before the bundle's own.
        Store::secure_dir(&state_dir)?;
        let cache_dir = (!self.no_cache).then(|| state_dir.join("cache"));
        let mut opener = StoreOpener::start(state_dir)?;
        // On-demand allocation, not the pooling allocator: reserving pools
        // costs more at startup than one run saves.
        let sandbox = Arc::new(Sandbox::new(EngineOptions {
            fuel_metering: !self.no_fuel,
            max_wasm_stack,
            cache_dir,
            ..EngineOptions::default()
        })?);
        // Signatures before anything is compiled: a tampered bundle never
        // reaches the compiler, let alone runs.
        let prepared = Runner::new(sandbox.clone(), None).prepare(&self.bundle, &policy.trust);
        let runner = Runner::new(sandbox, Some(opener.store()?));
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(rejection) => return Ok(runner.reject(&self.bundle, &rejection, &Execution::default())?),
        };
        let execution = match self.execution(prepared.kind()) {
            Ok(execution) => execution,
            Err(message) => {
                let rejection = Rejection::input(&prepared, message);
                return Ok(runner.reject(&self.bundle, &rejection, &Execution::default())?);
            }
        };
        // Worker threads only where nodes can run side by side.
        let runtime = match prepared.kind() {
            GuestKind::Workflow => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
            _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        }
        .context("starting the async runtime")?;
        let report = runtime.block_on(async {
            let cancel = execution.cancel.clone().expect("set by execution()");
            let on_ctrl_c = tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("wfrun: cancelling the run (Ctrl-C)");
                    cancel.notify_one();
                }
            });
            let report = runner.run(&prepared, &policy, execution).await;
            on_ctrl_c.abort();
            report
        })?;
        // A guest stopped by the deadline may leave a blocking file operation
        // behind (a read from a FIFO it was granted); do not wait for it.
        runtime.shutdown_timeout(Duration::from_millis(100));
        // The process exits next: the program's code and the engine with its
        // epoch thread are left for the OS to take back (unmapping them and
        // joining the thread took a fiftieth of a warm `exec`). The store
        // still closes here, since closing may fold its WAL in.
        std::mem::forget(prepared);
        std::mem::forget(Arc::clone(runner.sandbox()));
        drop(runner);
        Ok(report)
    }

    /// The operator's policy from the flags: trust, ceilings, parallelism,
    /// egress.
    fn policy(&self) -> Result<Policy, String> {
        let trust = TrustPolicy::load(&self.trust, self.require_signed).map_err(|e| e.to_string())?;
        let flags = LimitRequest {
            fuel: self.fuel,
            memory_bytes: self.memory,
            timeout: self.timeout,
            output_bytes: self.max_output,
            stdio_bytes: self.max_stdio,
            log_bytes: self.max_log,
        };
        Ok(Policy {
            ceilings: crate::settings::ceilings(&flags, &LimitRequest::default()),
            max_parallel: self.max_parallel.map(|n| n as usize),
            trust,
            egress: Arc::new(self.egress()?),
            ..Policy::default()
        })
    }

    /// Resolves the flags into an execution, or says which input is unusable.
    fn execution(&self, kind: GuestKind) -> Result<Execution, String> {
        let input = match kind {
            GuestKind::Node | GuestKind::Workflow => {
                if !self.args.is_empty() {
                    return Err(format!(
                        "{}: is a {} and takes --input, not arguments after `--`",
                        self.bundle.display(),
                        if kind == GuestKind::Node { "node" } else { "workflow" }
                    ));
                }
                self.input()?
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
                return Err(format!("--dir {}: no such directory on the host", dir.host.display()));
            }
        }
        let secrets = match &self.secrets_file {
            Some(path) => read_secrets(path)?,
            None => BTreeMap::new(),
        };
        let echo = Echo {
            stdout: match (kind, self.json) {
                (_, true) => Tee::None,
                // A job's stdout is its output; a node's is chatter, since
                // its output JSON owns our stdout.
                (GuestKind::Job, false) => Tee::Stdout,
                (_, false) if self.quiet => Tee::None,
                (_, false) => Tee::Stderr,
            },
            stderr: if self.quiet { Tee::None } else { Tee::Stderr },
            logs: if self.quiet { Tee::None } else { Tee::Stderr },
        };
        Ok(Execution {
            input,
            args: self.args.clone(),
            inherit_stdin: kind == GuestKind::Job,
            cancel: Some(Arc::new(tokio::sync::Notify::new())),
            grants: Grants { dirs: self.dirs.clone(), env: self.env.clone(), egress: None },
            echo,
            secrets,
            run_id: None,
            job: None,
            outputs: self.outputs,
            outputs_limit: crate::limits::OutputsLimit {
                max_bytes: self.max_outputs,
                max_files: self.max_output_files,
            },
            slot: None,
        })
    }

    /// The operator's egress grant: the policy file's, plus --allow-host.
    fn egress(&self) -> Result<EgressPolicy, String> {
        let policy = match &self.policy {
            Some(path) => PolicyFile::read(path).map_err(|e| e.to_string())?,
            None => EgressPolicy::deny_all(),
        };
        let mut rules = policy.operator_rules().to_vec();
        rules.extend(self.allow_hosts.iter().cloned());
        Ok(EgressPolicy::new(rules, policy.limits))
    }

    fn input(&self) -> Result<String, String> {
        let (source, text) = if let Some(input) = &self.input {
            ("--input".to_owned(), input.clone())
        } else if let Some(path) = &self.input_file {
            let text = crate::files::read_capped_text(path, crate::files::caps::INPUT).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!("input file {}: no such file", path.display()),
                _ => format!("input file {}: cannot read: {e}", path.display()),
            })?;
            (format!("input file {}", path.display()), text)
        } else if std::io::stdin().is_terminal() {
            return Ok("{}".to_owned());
        } else {
            let mut text = String::new();
            let max = crate::files::caps::INPUT;
            std::io::stdin().take(max + 1).read_to_string(&mut text).map_err(|e| format!("stdin: cannot read: {e}"))?;
            if text.len() as u64 > max {
                return Err(format!("stdin: more than {max} bytes of input"));
            }
            if text.trim().is_empty() {
                return Ok("{}".to_owned());
            }
            ("stdin".to_owned(), text)
        };
        // The executor checks too; checking here lets the message name the source.
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| format!("{source}: malformed JSON: {e}"))?;
        Ok(text)
    }

    fn print(&self, report: &RunReport) -> anyhow::Result<()> {
        if !report.egress_not_granted.is_empty() {
            eprintln!(
                "wfrun: the bundle requests egress the operator did not grant: {}",
                printable(&report.egress_not_granted.join(", "))
            );
        }
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
        if report.status == RunStatus::Cancelled {
            eprintln!("wfrun: cancelled: run {} was stopped and recorded as cancelled", report.run_id);
        }
        if !self.quiet && !report.outputs.is_empty() {
            let bytes: u64 = report.outputs.iter().map(|f| f.bytes).sum();
            eprintln!(
                "wfrun: {} output file(s), {bytes} bytes, kept with run {}; `wfrun runs outputs {} --to DIR` copies them",
                report.outputs.len(),
                report.run_id,
                report.run_id
            );
        }
        if !self.quiet && report.kind == Some(GuestKind::Workflow) {
            eprintln!(
                "wfrun: run {} ({} nodes) recorded; see `wfrun runs show {}`",
                report.run_id,
                report.nodes.len(),
                report.run_id
            );
        }
        Ok(())
    }
}

/// The run database, opened on a thread of its own (`store-open`), which
/// then compiles the statements of the run's record
/// ([`Store::prepare_run_end`]). If the thread has not started by the time
/// the store is needed (a new thread can wait a while for a CPU, on a busy
/// machine longer than the open takes), the store is opened where it is
/// needed instead.
struct StoreOpener {
    dir: PathBuf,
    /// Set by whichever opens the store: the thread or [`StoreOpener::store`].
    claimed: Arc<std::sync::atomic::AtomicBool>,
    opened: std::sync::mpsc::Receiver<Result<Arc<Store>, StoreError>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoreOpener {
    fn start(dir: PathBuf) -> anyhow::Result<StoreOpener> {
        let (send, opened) = std::sync::mpsc::sync_channel(1);
        let claimed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ours, at) = (claimed.clone(), dir.clone());
        let thread = std::thread::Builder::new()
            .name("store-open".to_owned())
            .spawn(move || {
                if ours.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    return;
                }
                let store = Store::open(&at).map(Arc::new);
                let warm = store.as_ref().ok().map(Arc::clone);
                let _ = send.send(store);
                if let Some(store) = warm {
                    store.prepare_run_end();
                }
            })
            .context("starting a thread")?;
        Ok(StoreOpener { dir, claimed, opened, thread: Some(thread) })
    }

    /// Waits for the store, or the reason it could not open.
    fn store(&mut self) -> Result<Arc<Store>, StoreError> {
        let store = if self.claimed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            match self.opened.recv() {
                Ok(store) => store?,
                // The thread ended without a word: it panicked.
                Err(_) => {
                    let panic = self.thread.take().and_then(|thread| thread.join().err());
                    std::panic::resume_unwind(panic.unwrap_or_else(|| Box::new("the store-open thread stopped")))
                }
            }
        } else {
            // The thread has not started: it will find the store taken and
            // end holding nothing, so it is not waited for.
            self.thread = None;
            Arc::new(Store::open(&self.dir)?)
        };
        store.keep_wal_short();
        Ok(store)
    }
}

impl Drop for StoreOpener {
    /// Waits for the thread, so that the store it holds has closed (which
    /// may fold its WAL in) before the process exits.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads `NAME=VALUE` lines; blank lines and `#` comments are skipped.
fn read_secrets(path: &std::path::Path) -> Result<BTreeMap<String, String>, String> {
    let text = crate::files::read_capped_text(path, crate::files::caps::SETTINGS)
        .map_err(|e| format!("secrets file {}: {e}", path.display()))?;
    let mut secrets = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .filter(|(name, _)| !name.trim().is_empty())
            .ok_or_else(|| format!("secrets file {} line {}: expected NAME=VALUE", path.display(), number + 1))?;
        secrets.insert(name.trim().to_owned(), value.to_owned());
    }
    Ok(secrets)
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    Rule::parse(text).map_err(|e| e.to_string())
}

pub(super) fn parse_memory(text: &str) -> Result<u64, String> {
    LimitKey::parse_memory(text).map_err(|e| e.to_string())
}

fn parse_outputs_size(text: &str) -> Result<u64, String> {
    crate::units::size(text, 0..=1024 * 1024 * 1024 * 1024).map_err(|e| e.to_string())
}

fn parse_capture(text: &str) -> Result<u64, String> {
    LimitKey::parse_capture(text).map_err(|e| e.to_string())
}

pub(super) fn parse_fuel(text: &str) -> Result<u64, String> {
    LimitKey::parse_fuel(text).map_err(|e| e.to_string())
}

pub(super) fn parse_timeout(text: &str) -> Result<Duration, String> {
    LimitKey::parse_timeout(text).map_err(|e| e.to_string())
}

fn parse_stack(text: &str) -> Result<u64, String> {
    crate::units::size(text, 64 * 1024..=64 * 1024 * 1024).map_err(|e| e.to_string())
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
    let host = host.strip_suffix(":rw").or_else(|| host.strip_suffix(":ro")).unwrap_or(host);
    if host.is_empty() || guest.is_empty() {
        return Err(format!("{text:?} is not HOST::GUEST, HOST::GUEST:rw or DIR"));
    }
    Ok(DirGrant { host: PathBuf::from(host), guest: guest.to_owned(), writable })
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

    /// An opener whose thread never started: only the caller can open.
    fn unstarted(dir: PathBuf) -> StoreOpener {
        let (_, opened) = std::sync::mpsc::sync_channel(1);
        StoreOpener { dir, claimed: Arc::default(), opened, thread: None }
    }

    /// An opener whose thread has claimed the store (and so opens it).
    fn claimed_by_its_thread(dir: PathBuf) -> StoreOpener {
        let opener = StoreOpener::start(dir).unwrap();
        while !opener.claimed.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::yield_now();
        }
        opener
    }

    /// Makes the database at `dir` one from a newer wfrun.
    fn from_a_newer_wfrun(dir: &std::path::Path) {
        drop(Store::open(dir).unwrap());
        let db = rusqlite::Connection::open(dir.join("wfrun.db")).unwrap();
        let version: u32 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        db.pragma_update(None, "user_version", version + 1).unwrap();
    }

    #[test]
    fn the_store_is_opened_by_its_thread_or_where_it_is_needed_if_the_thread_has_not_started() {
        // The thread got there first.
        let dir = tempfile::tempdir().unwrap();
        let mut opener = claimed_by_its_thread(dir.path().to_path_buf());
        let store = opener.store().unwrap();
        assert!(opener.thread.is_some(), "the thread that opened the store is waited for");
        assert!(store.list_runs(None, 10).unwrap().is_empty());
        // The thread had not started: opened here.
        let mut opener = unstarted(dir.path().to_path_buf());
        let store = opener.store().unwrap();
        assert!(opener.claimed.load(std::sync::atomic::Ordering::Acquire));
        assert!(store.list_runs(None, 10).unwrap().is_empty());

        // Either way, a database that cannot be used is refused.
        let newer = tempfile::tempdir().unwrap();
        from_a_newer_wfrun(newer.path());
        assert!(unstarted(newer.path().to_path_buf()).store().is_err());
        assert!(claimed_by_its_thread(newer.path().to_path_buf()).store().is_err());
    }

    #[test]
    fn dir_grants_are_read_only_unless_rw() {
        let ro = parse_dir("./data::/data").unwrap();
        assert_eq!((ro.host.to_str().unwrap(), ro.guest.as_str(), ro.writable), ("./data", "/data", false));
        let rw = parse_dir("/srv/in::/in:rw").unwrap();
        assert_eq!((rw.guest.as_str(), rw.writable), ("/in", true));
        let bare = parse_dir("/tmp/x").unwrap();
        assert_eq!((bare.guest.as_str(), bare.writable), ("/tmp/x", false));
        assert!(parse_dir("::/x").is_err());
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_memory("64MiB").unwrap(), 64 * 1024 * 1024);
        assert_eq!(parse_capture("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_capture("1000").unwrap(), 1000);
        assert!(parse_capture("lots").is_err());
        assert!(parse_memory("1KiB").is_err());
    }

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        assert_eq!(crate::cli::printable("ok\x1b[2Jgone\nline"), "ok\\u{1b}[2Jgone\\nline");
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
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".to_owned(), "b=c".to_owned()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
