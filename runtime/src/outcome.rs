//! What a run ended as: the stable [`ErrorCode`]s and the [`RunReport`].
//!
//! Error codes are part of wfrun's interface. They appear in `wfrun exec
//! --json`, in run records and in reports, and scripts match on them, so they
//! never change meaning. A code may carry a machine-readable detail
//! (`error_detail`, e.g. `signature_invalid` under `invalid_bundle`).
//! [`RunStatus`] is the one lifecycle of a run, [`NodeStatus`] that of a node
//! within it. [`ExitStatus`] maps an outcome onto the `wfrun` process's exit
//! status. This module imports nothing of the crate.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;

/// Why a run failed. Serialised in `snake_case` (`fuel_exhausted`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The run went past its wall-clock timeout.
    Timeout,
    /// The run used up its fuel budget.
    FuelExhausted,
    /// The guest asked for more linear memory (or table elements, instances,
    /// tables or memories) than its limits allow.
    MemoryLimit,
    /// The guest exhausted the maximum wasm stack (e.g. unbounded recursion).
    StackOverflow,
    /// The guest produced more output, stdout/stderr or log bytes than allowed.
    OutputLimit,
    /// The guest trapped: a panic, `unreachable`, an out-of-bounds access.
    Trap,
    /// A node returned its own error, or a job exited with a non-zero status.
    NodeError,
    /// The bundle is missing, not Wasm, not a component, or exports neither
    /// a node nor a command.
    InvalidBundle,
    /// The input (JSON, a granted directory, an argument) is not usable.
    InvalidInput,
    /// wfrun stopped before the run finished (a crash, kill -9, power loss);
    /// set when the daemon next starts.
    Interrupted,
    /// wfrun could not do its own part: out of file descriptors, memory or
    /// disk, or an I/O error. Neither the guest's fault nor the bundle's:
    /// the daemon retries it and never counts it toward pausing a job.
    HostError,
    /// State the run read was changed by another run before this one could
    /// commit, again and again: the run was re-run and gave up.
    StateConflict,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::Timeout,
        ErrorCode::FuelExhausted,
        ErrorCode::MemoryLimit,
        ErrorCode::StackOverflow,
        ErrorCode::OutputLimit,
        ErrorCode::Trap,
        ErrorCode::NodeError,
        ErrorCode::InvalidBundle,
        ErrorCode::InvalidInput,
        ErrorCode::Interrupted,
        ErrorCode::HostError,
        ErrorCode::StateConflict,
    ];

    /// The code as it is written in JSON and run records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Timeout => "timeout",
            ErrorCode::FuelExhausted => "fuel_exhausted",
            ErrorCode::MemoryLimit => "memory_limit",
            ErrorCode::StackOverflow => "stack_overflow",
            ErrorCode::OutputLimit => "output_limit",
            ErrorCode::Trap => "trap",
            ErrorCode::NodeError => "node_error",
            ErrorCode::InvalidBundle => "invalid_bundle",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::HostError => "host_error",
            ErrorCode::StateConflict => "state_conflict",
        }
    }

    /// Parses a stored code.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether this code means a configured limit stopped the run.
    pub fn is_limit(self) -> bool {
        matches!(
            self,
            ErrorCode::Timeout
                | ErrorCode::FuelExhausted
                | ErrorCode::MemoryLimit
                | ErrorCode::StackOverflow
                | ErrorCode::OutputLimit
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The process exit status of `wfrun exec`, documented in `--help` and
/// `docs/cli.md`. A job's own non-zero exit status is passed through instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: the run succeeded.
    Success,
    /// 1: wfrun itself failed (I/O error, bug); nothing about the guest.
    Internal,
    /// 2: the command line could not be parsed (clap's own status).
    Usage,
    /// 3: a node returned a node error.
    NodeError,
    /// 4: a limit stopped the run (timeout, fuel, memory, stack, output).
    Limit,
    /// 5: the guest trapped.
    Trap,
    /// 6: the bundle or the input was rejected before the guest ran.
    Invalid,
    /// 130: the run was cancelled (by Ctrl-C: 128 + SIGINT, as shells do).
    Cancelled,
    /// A job exited with this status (`std::process::exit(n)` in the guest).
    Job(u8),
}

impl ExitStatus {
    /// The exit status of a finished run.
    pub fn of(report: &RunReport) -> ExitStatus {
        ExitStatus::of_ended(report.status, report.error_code, report.exit_code)
    }

    /// The exit status of a run that ended as `status` with `error_code`
    /// and a job's `exit_code` (a recorded run, as `exec` would have
    /// exited for it).
    pub fn of_ended(status: RunStatus, error_code: Option<ErrorCode>, exit_code: Option<i32>) -> ExitStatus {
        if status == RunStatus::Cancelled {
            return ExitStatus::Cancelled;
        }
        match error_code {
            None => ExitStatus::Success,
            Some(ErrorCode::NodeError) => match exit_code {
                // A job's own status passes through, as `wasmtime run` does.
                Some(code) => ExitStatus::Job(code.clamp(1, 255) as u8),
                None => ExitStatus::NodeError,
            },
            Some(code) if code.is_limit() => ExitStatus::Limit,
            Some(ErrorCode::Trap) => ExitStatus::Trap,
            // The host stopped (a crash, kill -9): nothing the guest did.
            Some(ErrorCode::HostError | ErrorCode::StateConflict | ErrorCode::Interrupted) => ExitStatus::Internal,
            Some(_) => ExitStatus::Invalid,
        }
    }

    /// The numeric status for `std::process::exit`.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Internal => 1,
            ExitStatus::Usage => 2,
            ExitStatus::NodeError => 3,
            ExitStatus::Limit => 4,
            ExitStatus::Trap => 5,
            ExitStatus::Invalid => 6,
            ExitStatus::Cancelled => 130,
            ExitStatus::Job(code) => code,
        }
    }
}

/// The life of a run: `pending` → `running` → `succeeded` | `failed` |
/// `cancelled`, or `interrupted` when wfrun stopped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Recorded, not started.
    Pending,
    /// Started.
    Running,
    /// The node returned output, or the job exited with status 0.
    Succeeded,
    /// See the report's `error_code`.
    Failed,
    /// Stopped on request (Ctrl-C, or `wfrun cancel` later) before it finished.
    Cancelled,
    /// wfrun stopped before the run finished (a crash, kill -9, power loss);
    /// set when the daemon next starts.
    Interrupted,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];

    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// Parses a stored or user-given status.
    pub fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        !matches!(self, RunStatus::Pending | RunStatus::Running)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How one node of a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// It returned output.
    Succeeded,
    /// Its last attempt failed; see its `error_code`.
    Failed,
    /// It never started: a node before it failed, or the run was cancelled.
    Skipped,
    /// It was running when the run was cancelled.
    Cancelled,
}

impl NodeStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Succeeded => "succeeded",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which check refused a request. Serialised in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSet {
    /// No operator rule (`--allow-host`, `--policy`) allows the target.
    Operator,
    /// The bundle's `capabilities.egress` does not request the target.
    Bundle,
    /// The host resolved only to addresses that no IP or CIDR rule names.
    Address,
    /// A bound: response size, concurrent requests.
    Limits,
}

/// One refused request or connection, as recorded in the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyViolation {
    /// Which check refused it.
    pub rule_set: RuleSet,
    /// What was asked for: `scheme://host:port`.
    pub target: String,
    /// Why, in words.
    pub reason: String,
    /// For a workflow: the node that asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What a bundle runs: one of the two guest worlds, or a workflow of nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestKind {
    /// A workflow bundle: several nodes.
    Workflow,
    /// Exports `wfrun:node/handler`: JSON in, JSON out.
    Node,
    /// Exports `wasi:cli/run`: a command with arguments and stdio.
    Job,
}

impl GuestKind {
    /// The kind as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestKind::Workflow => "workflow",
            GuestKind::Node => "node",
            GuestKind::Job => "job",
        }
    }

    /// Parses a stored kind.
    pub fn parse(text: &str) -> Option<GuestKind> {
        [GuestKind::Workflow, GuestKind::Node, GuestKind::Job].into_iter().find(|k| k.as_str() == text)
    }
}

/// The error a node returned, as it returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFailure {
    /// The node's own code, e.g. `invalid-input`.
    pub code: String,
    /// The node's message.
    pub message: String,
    /// Whether the node says a retry may help.
    pub retryable: bool,
}

/// One line the guest wrote through the `log` import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The message as the guest wrote it.
    pub message: String,
}

/// One call a guest made to the host, in the order made: the execution
/// trace. Values are never recorded, only keys, sizes and outcomes, so a trace
/// can be shown and compared without leaking state or secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum HostCall {
    /// `state.get`.
    StateGet {
        /// The key.
        key: String,
        /// Whether a value was there.
        found: bool,
    },
    /// `state.set`.
    StateSet {
        /// The key.
        key: String,
        /// The value's size.
        bytes: u64,
        /// Whether it was accepted (false: quota or key refused).
        ok: bool,
    },
    /// `state.delete`.
    StateDelete {
        /// The key.
        key: String,
    },
    /// `state.list-keys`.
    StateListKeys {
        /// The prefix.
        prefix: String,
        /// Keys returned.
        count: u64,
    },
    /// `config.get`.
    ConfigGet {
        /// The key.
        key: String,
        /// Whether it has a value.
        found: bool,
    },
    /// `config.get-secret`.
    SecretGet {
        /// The secret's name.
        name: String,
        /// Whether the node's definition names it.
        granted: bool,
        /// Whether the operator supplied it.
        found: bool,
    },
    /// Consecutive `log.write` calls.
    Log {
        /// How many.
        count: u64,
    },
    /// Calls past the trace's cap, not recorded one by one.
    Dropped {
        /// How many.
        count: u64,
    },
}

/// How a node run ended, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id.
    pub node: String,
    /// How it ended.
    pub status: NodeStatus,
    /// Attempts made (0 when skipped).
    pub attempts: u32,
    /// When the first attempt started (RFC 3339), if any.
    pub started_at: Option<String>,
    /// Wall time of all attempts, in milliseconds.
    pub duration_ms: f64,
    /// Fuel over all attempts.
    pub fuel_consumed: u64,
    /// Largest linear memory of any attempt.
    pub peak_memory_bytes: u64,
    /// Bytes of the node's output.
    pub output_bytes: u64,
    /// Why it failed, if it did.
    pub error_code: Option<ErrorCode>,
    /// A finer, stable reason under `error_code`, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
    /// The error's explanation.
    pub error_message: Option<String>,
    /// `sha256:<hex>` of the node's input.
    pub input_digest: Option<String>,
    /// `sha256:<hex>` of the node's output.
    pub output_digest: Option<String>,
    /// The host calls of the last attempt, in order.
    pub trace: Vec<HostCall>,
    /// Egress the node's attempts asked for and were refused.
    #[serde(default)]
    pub policy_violations: Vec<PolicyViolation>,
    /// What its last attempt recorded through the `metrics` import.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, Metric>,
}

/// Everything known about one finished run. This is what `wfrun exec --json`
/// prints, field for field.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Time-sortable unique id (UUIDv7).
    pub run_id: String,
    /// Workflow, node or job; `None` when the bundle was rejected before loading.
    pub kind: Option<GuestKind>,
    /// The workflow's name (a plain component's file stem), once loaded.
    pub workflow: Option<String>,
    /// `sha256:<hex>` of the bundle file, when it could be read.
    pub bundle_digest: Option<String>,
    /// Succeeded or failed.
    pub status: RunStatus,
    /// Why it failed; `None` on success.
    pub error_code: Option<ErrorCode>,
    /// A finer, stable reason under `error_code`, for scripts: for
    /// `invalid_bundle`, e.g. `signature_invalid`, `signature_missing`,
    /// `not_wasm`, `unlinkable` (docs/cli.md lists them).
    pub error_detail: Option<String>,
    /// A human-readable explanation of `error_code`.
    pub error_message: Option<String>,
    /// For `node_error` from a node: what the node said.
    pub node_error: Option<NodeFailure>,
    /// A node's output JSON, byte for byte as the node produced it.
    pub output: Option<Box<RawValue>>,
    /// A job's exit status (0 on success).
    pub exit_code: Option<i32>,
    /// Wall time from instantiation to the end of the run, in milliseconds.
    pub duration_ms: f64,
    /// Fuel the guest consumed (roughly one unit per wasm instruction).
    pub fuel_consumed: u64,
    /// The largest total size of the instance's linear memories, in bytes.
    pub peak_memory_bytes: u64,
    /// What the guest wrote to stdout, up to the cap (lossy UTF-8).
    pub stdout: String,
    /// What the guest wrote to stderr, up to the cap (lossy UTF-8).
    pub stderr: String,
    /// Lines the guest wrote through the `log` import.
    pub logs: Vec<LogLine>,
    /// The host calls the guest made, in order (plain components; a
    /// workflow's are per node).
    pub trace: Vec<HostCall>,
    /// Requests and connections the egress policy refused (for a workflow,
    /// every node's, each naming its node).
    pub policy_violations: Vec<PolicyViolation>,
    /// Requested egress rules the operator did not grant.
    pub egress_not_granted: Vec<String>,
    /// For a workflow: the node that failed the run.
    pub failed_node: Option<String>,
    /// For a workflow: one record per node, in the order they finished
    /// (skipped nodes last).
    pub nodes: Vec<NodeRecord>,
    /// The files the run left in its `/outputs`, when it had one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputFile>,
    /// What the guest recorded through the `metrics` import (for a
    /// workflow: each node's, as `NODE.NAME`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, Metric>,
}

/// A metric a guest recorded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Gauge or counter.
    pub kind: MetricKind,
    /// Its value: a gauge's last, a counter's sum.
    pub value: f64,
}

/// Which kind of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// The last value set stands.
    Gauge,
    /// Deltas are added up.
    Counter,
}

impl MetricKind {
    /// `gauge` or `counter`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
        }
    }
}

/// One file a run left in its `/outputs` directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Its path under `/outputs`, `/`-separated.
    pub path: String,
    /// Its size.
    pub bytes: u64,
}

impl RunReport {
    /// A report for a run that was refused before the guest started (a bad
    /// bundle, malformed input, an unusable grant).
    pub fn rejected(code: ErrorCode, message: impl Into<String>) -> RunReport {
        RunReport {
            run_id: new_run_id(),
            kind: None,
            bundle_digest: None,
            status: RunStatus::Failed,
            error_code: Some(code),
            error_detail: None,
            error_message: Some(message.into()),
            node_error: None,
            output: None,
            exit_code: None,
            duration_ms: 0.0,
            fuel_consumed: 0,
            peak_memory_bytes: 0,
            stdout: String::new(),
            stderr: String::new(),
            logs: Vec::new(),
            trace: Vec::new(),
            policy_violations: Vec::new(),
            egress_not_granted: Vec::new(),
            workflow: None,
            failed_node: None,
            nodes: Vec::new(),
            outputs: Vec::new(),
            metrics: BTreeMap::new(),
        }
    }

    /// The same, with a detail code under `code`.
    pub fn rejected_with(code: ErrorCode, detail: &str, message: impl Into<String>) -> RunReport {
        RunReport { error_detail: Some(detail.to_owned()), ..RunReport::rejected(code, message) }
    }

    /// Whether the run succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }
}

/// A new time-sortable run id (UUIDv7: milliseconds since the epoch first).
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_serialise_as_documented() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn statuses_round_trip_through_their_text() {
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{status}\""));
        }
        assert_eq!(RunStatus::parse("done"), None);
    }

    #[test]
    fn exit_statuses_are_distinct_per_failure_class() {
        let statuses = [
            ExitStatus::Success,
            ExitStatus::Internal,
            ExitStatus::Usage,
            ExitStatus::NodeError,
            ExitStatus::Limit,
            ExitStatus::Trap,
            ExitStatus::Invalid,
            ExitStatus::Cancelled,
        ];
        let mut codes: Vec<u8> = statuses.iter().map(|s| s.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), statuses.len());
    }
}
