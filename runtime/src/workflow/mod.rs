//! Workflows: planning and the executor.
//!
//! [`Workflow::load`] turns a [`Bundle`] into something runnable: a plain
//! component becomes a one-node workflow (named after its file, its node
//! called `main`), a workflow bundle is planned ([`plan`]) and each of its
//! nested components compiled once through the sandbox. [`Workflow::run`]
//! executes it under a [`Grant`] (what the operator's policy admitted: limits
//! per node, egress, parallelism, the state quota): nodes in dependency
//! order, independent ones at the same time up to `max_parallel`, each
//! node's input built from the workflow input and its dependencies' outputs,
//! retryable node errors retried with exponential backoff, and on a failure
//! every node not yet started marked `skipped`. [`pack`] makes a workflow
//! bundle from a `workflow.toml`.
//!
//! Durable state goes through a two-level overlay (`workflow::state`): a node
//! attempt's writes are kept only if the attempt succeeds, and the run's
//! writes reach SQLite only if the whole run succeeds, in the same
//! transaction that records the run.

mod pack;
pub mod plan;
mod state;

pub use pack::{PackError, pack};
pub use plan::{MAIN_NODE, MAX_BACKOFF, Plan, Reference, RetryError, RetryPolicy};

use crate::bundle::{Bundle, BundleError, Remembered};
use crate::egress::{EgressPolicy, PolicyViolation};
use crate::limits::{Limits, OutputsLimit};
use crate::manifest::{DefinitionError, NodeDef, StateQuota};
use crate::outcome::{ErrorCode, GuestKind, NodeRecord, NodeStatus, RunReport, RunStatus, new_run_id};
use crate::sandbox::{
    Echo, Grants, LoadError as ProgramError, NodeServices, Program, RunRequest, Sandbox, StateAccess,
};
use crate::store::{NewRun, RunEnd, StateWrites, Store, StoreError, now};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use state::{AttemptState, RunOverlay};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// Nodes of one run at the same time, unless the operator says otherwise.
pub const DEFAULT_MAX_PARALLEL: usize = 4;
/// How many times a run that lost a state race is run again before it
/// fails with `state_conflict`.
pub const MAX_STATE_CONFLICTS: u64 = 16;

/// How long a run goes before its `running` record is written: a run that
/// ends sooner is recorded start and end in one write.
pub const RUNNING_WRITE_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Why a bundle cannot be run as a workflow.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bundle file is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// One of its components does not compile or link.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The embedded definition does not validate.
    #[error("{path}: workflow `{name}`: {source}")]
    Definition {
        /// The bundle path.
        path: String,
        /// The workflow's name.
        name: String,
        /// What is wrong.
        source: Box<DefinitionError>,
    },
    /// A workflow node's component is a job, not a node.
    #[error("{path}: node `{node}` is a command (job), but workflow nodes must export wfrun:node/handler")]
    NotANode {
        /// The bundle path.
        path: String,
        /// The node.
        node: String,
    },
}

impl LoadError {
    /// The stable detail code under `invalid_bundle`.
    pub fn detail(&self) -> &'static str {
        match self {
            LoadError::Bundle(e) => e.detail(),
            LoadError::Program(e) => e.detail(),
            LoadError::Definition { .. } => "invalid_definition",
            LoadError::NotANode { .. } => "not_a_node",
        }
    }
}

/// What the operator's policy granted one run of a workflow
/// (`policy::Policy::admit` makes it).
#[derive(Debug, Clone)]
pub struct Grant {
    /// The limits of each node, by id.
    pub limits: BTreeMap<String, Limits>,
    /// The egress every node gets: the operator's grant narrowed to what
    /// the workflow requests.
    pub egress: Arc<EgressPolicy>,
    /// Nodes at once, at most.
    pub max_parallel: usize,
    /// The workflow's state quota.
    pub quota: StateQuota,
}

struct Step {
    program: Program,
    def: Option<NodeDef>,
    config: Arc<BTreeMap<String, String>>,
}

/// A bundle ready to run: its plan and one compiled program per node.
pub struct Workflow {
    bundle_path: String,
    digest: String,
    plan: Plan,
    steps: BTreeMap<String, Step>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("name", &self.plan.name)
            .field("order", &self.plan.order)
            .finish_non_exhaustive()
    }
}

/// A host's run slot (the daemon's `max_concurrent_runs`): held while a
/// run's guests run, and given back before the run's end is recorded, so a
/// run waiting for its commit keeps no other from starting and the ends of
/// many runs share one commit. Taken again should the run be run again (a
/// state conflict).
#[derive(Debug)]
pub struct Slot {
    slots: Arc<tokio::sync::Semaphore>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Slot {
    /// Waits for one of `slots`.
    pub async fn acquire(slots: &Arc<tokio::sync::Semaphore>) -> Slot {
        let held = slots.clone().acquire_owned().await.ok();
        Slot { slots: slots.clone(), held }
    }

    /// Gives the slot back.
    fn release(&mut self) {
        self.held = None;
    }

    /// Takes a slot again, if it was given back.
    async fn reacquire(&mut self) {
        if self.held.is_none() {
            self.held = self.slots.clone().acquire_owned().await.ok();
        }
    }
}

/// Everything the caller decides about one run.
#[derive(Default)]
pub struct Execution {
    /// The workflow input (JSON text); for a plain node, its input.
    pub input: String,
    /// A plain job's arguments.
    pub args: Vec<String>,
    /// Give a plain job this process's stdin.
    pub inherit_stdin: bool,
    /// Files and environment granted to every node (the egress grant comes
    /// from the [`Grant`]).
    pub grants: Grants,
    /// What to echo live.
    pub echo: Echo,
    /// Secrets the operator supplies; each reaches only nodes naming it.
    pub secrets: BTreeMap<String, String>,
    /// Notified to cancel the run: running nodes are stopped within an epoch
    /// tick and recorded `cancelled`, the rest `skipped`.
    pub cancel: Option<Arc<Notify>>,
    /// The run's id, if the caller chose it (to cancel it by id); else new.
    pub run_id: Option<String>,
    /// The daemon job this run belongs to, recorded with it.
    pub job: Option<String>,
    /// Give the run a writable `/outputs` (also when the workflow asks for
    /// one in its capabilities), kept at
    /// [`Store::outputs_dir`](crate::store::Store::outputs_dir).
    pub outputs: bool,
    /// What that directory may hold; past it, the run is stopped and fails
    /// with `output_limit` (detail `outputs`).
    pub outputs_limit: OutputsLimit,
    /// The run slot it holds while its guests run, if its host has slots.
    pub slot: Option<Slot>,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secret values never reach a log line.
        f.debug_struct("Execution")
            .field("input_bytes", &self.input.len())
            .field("args", &self.args)
            .field("grants", &self.grants)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of `bytes` (each node's input and output, every run:
/// written into one buffer rather than collected a character at a time).
fn digest(bytes: &[u8]) -> String {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(bytes), &mut hex).expect("32 bytes are 64 hex digits");
    let mut digest = String::with_capacity(7 + hex.len());
    digest.push_str("sha256:");
    digest.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
    digest
}

fn config_strings(config: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    config
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            )
        })
        .collect()
}

impl Workflow {
    /// Prepares `bundle` to run: plans a workflow bundle and compiles each
    /// component once, or wraps a plain component as a one-node workflow.
    pub fn load(sandbox: &Sandbox, bundle: &Bundle) -> Result<Workflow, LoadError> {
        let path = bundle.path().display().to_string();
        let Some(embedded) = bundle.workflow() else {
            let program = sandbox.load_digested(bundle.bytes(), bundle.sha256(), &path)?;
            return Ok(Workflow::single(bundle.path(), program));
        };
        let def = &embedded.definition;
        let mut plan = Plan::of(def).map_err(|source| LoadError::Definition {
            path: path.clone(),
            name: def.name.clone(),
            source: Box::new(source),
        })?;
        let mut programs: BTreeMap<usize, Program> = BTreeMap::new();
        let mut steps = BTreeMap::new();
        for (id, node) in &def.nodes {
            let index = embedded.components[id];
            let program = match programs.entry(index) {
                std::collections::btree_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    let bytes = bundle.nested_component(index).expect("checked when the bundle was read");
                    let program = sandbox.load(bytes, &format!("{path}#{id}"))?;
                    if program.kind() != GuestKind::Node {
                        return Err(LoadError::NotANode { path, node: id.clone() });
                    }
                    slot.insert(program)
                }
            };
            plan.components.insert(id.clone(), program.digest().to_owned());
            plan.imports.insert(id.clone(), program.imports().to_vec());
            let step = Step {
                program: program.clone(),
                def: Some(node.clone()),
                config: Arc::new(config_strings(&node.config)),
            };
            steps.insert(id.clone(), step);
        }
        Ok(Workflow { bundle_path: path, digest: bundle.digest(), plan, steps })
    }

    /// Loads a plain component known by its remembered digest from the
    /// artifact cache, without reading it; `None` if the cache does not
    /// hold it (then the bundle must be read and loaded).
    pub fn load_remembered(sandbox: &Sandbox, bundle: &Remembered) -> Option<Result<Workflow, LoadError>> {
        let loaded = sandbox.load_cached(bundle.sha256(), &bundle.path().display().to_string())?;
        Some(loaded.map(|program| Workflow::single(bundle.path(), program)).map_err(LoadError::from))
    }

    /// The one-node workflow of a plain component at `path`.
    fn single(path: &std::path::Path, program: Program) -> Workflow {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "main".into());
        let mut plan = Plan::single(name, program.kind(), program.digest().to_owned());
        plan.imports.insert(MAIN_NODE.to_owned(), program.imports().to_vec());
        let digest = program.digest().to_owned();
        let steps = BTreeMap::from([(MAIN_NODE.to_owned(), Step { program, def: None, config: Arc::default() })]);
        Workflow { bundle_path: path.display().to_string(), digest, plan, steps }
    }

    /// The workflow's name (a plain component's file stem).
    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// Workflow, node or job.
    pub fn kind(&self) -> GuestKind {
        self.plan.kind
    }

    /// What it asks for: its plan, for the policy to admit.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// `sha256:<hex>` of the bundle file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Runs of its nodes served by an instance made ahead of them.
    pub fn spares_taken(&self) -> u64 {
        self.steps.values().map(|step| step.program.spares_taken()).sum()
    }

    /// Runs the workflow once, recording it in `store` if given. Fails only
    /// if the store does; everything a guest does ends up in the report.
    pub async fn run(
        self: &Arc<Self>,
        sandbox: &Arc<Sandbox>,
        store: Option<&Arc<Store>>,
        grant: &Grant,
        execution: Execution,
    ) -> Result<RunReport, StoreError> {
        let run_id = execution.run_id.clone().unwrap_or_else(new_run_id);
        let new = NewRun {
            id: run_id.clone(),
            workflow: self.plan.name.clone(),
            version: self.plan.version.clone(),
            bundle_path: self.bundle_path.clone(),
            bundle_digest: self.digest.clone(),
            kind: Some(self.plan.kind),
            job: execution.job.clone(),
        };
        // The `running` record is written only once the run has lasted
        // RUNNING_WRITE_DELAY; a shorter run is recorded, start and end, in
        // one write when it ends.
        let started_at = now();
        let mut begun = false;
        // The effective egress policy, once per run: every node shares it.
        let mut execution =
            Execution { grants: Grants { egress: Some(grant.egress.clone()), ..execution.grants }, ..execution };
        // The run's outputs: a directory of its own, writable at /outputs.
        let outputs = match store {
            Some(store) if execution.outputs || self.plan.outputs_dir => {
                let dir = store.outputs_dir(&run_id);
                let made = crate::files::create_private_dir(&store.run_dir(&run_id))
                    .and_then(|()| crate::files::create_private_dir(&dir));
                made.map_err(|source| StoreError::Dir { path: dir.clone(), source })?;
                execution.grants.dirs.push(crate::sandbox::DirGrant {
                    host: dir.clone(),
                    guest: "/outputs".to_owned(),
                    writable: true,
                });
                Some((dir, execution.outputs_limit))
            }
            _ => None,
        };
        let mut slot = execution.slot.take();
        // A run whose state reads were changed by another run before it
        // could commit is run again, from a fresh overlay, a few times.
        let mut conflicts = 0;
        loop {
            if let Some(slot) = &mut slot {
                slot.reacquire().await;
            }
            let overlay =
                store.map(|store| Arc::new(RunOverlay::new(store.clone(), self.plan.name.clone(), grant.quota)));
            let scope = Scope { run_id: &run_id, overlay: overlay.clone(), outputs: outputs.as_ref() };
            let once = self.execute_once(sandbox, store, scope, grant, &execution);
            let (mut report, logs) = match store {
                Some(store) if !begun => {
                    tokio::pin!(once);
                    tokio::select! {
                        report = &mut once => report,
                        () = tokio::time::sleep(RUNNING_WRITE_DELAY) => {
                            store.begin_run(&new, &started_at)?;
                            begun = true;
                            once.await
                        }
                    }
                }
                _ => once.await,
            };
            if let Some(slot) = &mut slot {
                slot.release();
            }
            if let Some((dir, _)) = &outputs {
                report.outputs = crate::store::outputs::list(dir);
            }
            let Some(store) = store else { return Ok(report) };
            let end = RunEnd {
                workflow: self.plan.name.clone(),
                report,
                state: overlay.as_ref().map(|o| o.take_writes()).unwrap_or_default(),
                reads: overlay.as_ref().map(|o| o.take_reads()).unwrap_or_default(),
                unbegun: (!begun).then(|| (new.clone(), started_at.clone())),
                logs,
            };
            let (end, finished) = finish(store, end).await;
            let RunEnd { mut report, unbegun, logs, .. } = end;
            match finished {
                Err(StoreError::StateConflict { key, .. }) if conflicts < MAX_STATE_CONFLICTS => {
                    conflicts += 1;
                    tracing::debug!("run {run_id}: state key {key:?} changed under it; running it again");
                    let mut jitter = [0u8; 1];
                    let _ = getrandom::fill(&mut jitter);
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(jitter[0] % 20) * conflicts)).await;
                }
                Err(StoreError::StateConflict { key, .. }) => {
                    report.status = RunStatus::Failed;
                    report.error_code = Some(ErrorCode::StateConflict);
                    report.output = None;
                    report.error_message = Some(format!(
                        "state key {key:?} was changed by other runs {} times while this run used it",
                        conflicts + 1
                    ));
                    let end = RunEnd {
                        workflow: self.plan.name.clone(),
                        report,
                        state: StateWrites::new(),
                        reads: StateWrites::new(),
                        unbegun,
                        logs,
                    };
                    let (end, finished) = finish(store, end).await;
                    finished?;
                    return Ok(end.report);
                }
                result => return result.map(|()| report),
            }
        }
    }

    /// One execution of the run, its report complete but not recorded.
    async fn execute_once(
        self: &Arc<Self>,
        sandbox: &Arc<Sandbox>,
        store: Option<&Arc<Store>>,
        scope: Scope<'_>,
        grant: &Grant,
        execution: &Execution,
    ) -> (RunReport, NodeLogs) {
        let run_id = scope.run_id.to_owned();
        let started = Instant::now();
        let (mut report, records, logs) = self.execute(sandbox, store, scope, grant, execution).await;
        report.run_id = run_id.clone();
        report.kind = Some(self.plan.kind);
        report.workflow = Some(self.plan.name.clone());
        report.bundle_digest = Some(self.digest.clone());
        let kind = self.plan.kind;
        if kind == GuestKind::Workflow || report.status == RunStatus::Cancelled {
            report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            report.fuel_consumed = records.iter().map(|r| r.fuel_consumed).sum();
            report.peak_memory_bytes = records.iter().map(|r| r.peak_memory_bytes).max().unwrap_or(0);
        }
        let workflow = kind == GuestKind::Workflow;
        report.policy_violations = records
            .iter()
            .flat_map(|r| {
                r.policy_violations
                    .iter()
                    .map(|v| PolicyViolation { node: workflow.then(|| r.node.clone()), ..v.clone() })
            })
            .collect();
        report.egress_not_granted = grant.egress.not_granted().iter().map(|r| r.to_string()).collect();
        if workflow {
            // Each node's metrics, by node: `NODE.NAME`.
            report.metrics = records
                .iter()
                .flat_map(|r| r.metrics.iter().map(|(name, metric)| (format!("{}.{name}", r.node), *metric)))
                .collect();
        }
        report.nodes = records;
        (report, logs)
    }

    async fn execute(
        self: &Arc<Self>,
        sandbox: &Arc<Sandbox>,
        store: Option<&Arc<Store>>,
        scope: Scope<'_>,
        grant: &Grant,
        execution: &Execution,
    ) -> (RunReport, Vec<NodeRecord>, NodeLogs) {
        let Scope { run_id, overlay, outputs: run_outputs } = scope;
        let mut report = RunReport::rejected(ErrorCode::Trap, String::new());
        // A state-conflict re-run starts from empty outputs.
        if let Some((dir, _)) = run_outputs {
            clear_dir(dir);
        }
        let mut exceeded: Option<crate::store::outputs::Usage> = None;
        // Only a run with an outputs directory has it watched.
        let mut watch = run_outputs.is_some().then(|| tokio::time::interval(OUTPUTS_WATCH));
        // A plain component's input goes through untouched (byte for byte);
        // a workflow's is parsed once to build each node's input.
        let workflow_input: Value = if self.plan.kind == GuestKind::Workflow {
            match serde_json::from_str(&execution.input) {
                Ok(value) => value,
                Err(e) => {
                    report.error_message = Some(format!("workflow input is not valid JSON: {e}"));
                    report.error_code = Some(ErrorCode::InvalidInput);
                    return (report, Vec::new(), NodeLogs::new());
                }
            }
        } else {
            Value::Null
        };

        let mut outputs: BTreeMap<String, Value> = BTreeMap::new();
        let mut raw_outputs: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
        let mut records: Vec<NodeRecord> = Vec::new();
        let mut logs = NodeLogs::new();
        let mut pending: Vec<String> = self.plan.order.clone();
        let mut running = Nodes::for_plan(self.plan.kind);
        let mut failure: Option<(String, RunReport)> = None;
        let mut last_report: Option<RunReport> = None;
        let mut cancelled = false;
        let max_parallel = grant.max_parallel.max(1);

        loop {
            while failure.is_none() && !cancelled && running.len() < max_parallel {
                let ready = pending.iter().position(|id| {
                    let deps = self.steps[id].def.as_ref().map(|d| d.depends_on.as_slice()).unwrap_or(&[]);
                    deps.iter().all(|d| outputs.contains_key(d))
                });
                let Some(position) = ready else { break };
                let id = pending.remove(position);
                let input = match self.node_input(&id, &execution.input, &workflow_input, &outputs) {
                    Ok(input) => input,
                    Err(message) => {
                        let mut node_report = RunReport::rejected(ErrorCode::InvalidInput, message);
                        node_report.kind = Some(GuestKind::Node);
                        records.push(node_record(&id, 0, None, &node_report, None));
                        failure = Some((id, node_report));
                        break;
                    }
                };
                let request = self.request(&id, input, grant, execution);
                let task = NodeTask {
                    sandbox: sandbox.clone(),
                    program: self.steps[&id].program.clone(),
                    retry: self.plan.retries.get(&id).copied(),
                    overlay: overlay.clone(),
                    request,
                };
                running.start(id, task.run());
            }
            let joined = tokio::select! {
                joined = running.next() => joined,
                () = notified(execution.cancel.as_ref()), if !cancelled => {
                    // Dropping a node's task drops its store: the guest stops
                    // at its next epoch yield (10 ms at most).
                    cancelled = true;
                    running.abort_all();
                    continue;
                }
                () = tick(&mut watch), if run_outputs.is_some() && !cancelled => {
                    if let Some((dir, limit)) = run_outputs
                        && let Some(usage) = over(dir, limit)
                    {
                        exceeded = Some(usage);
                        cancelled = true;
                        running.abort_all();
                    }
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            let (id, run) = match joined {
                Joined::Ran(id, run) => (id, run),
                // Aborted by a cancel: recorded as `cancelled` below.
                Joined::Aborted => continue,
                Joined::Panicked(id, panic) => {
                    // A panic in the host while running a node: record it as
                    // a trap of that node rather than taking the process down.
                    let mut report =
                        RunReport::rejected(ErrorCode::Trap, format!("host error while running the node: {panic}"));
                    report.kind = Some(GuestKind::Node);
                    (id, NodeRun { attempts: 1, started_at: None, input_digest: String::new(), report })
                }
            };
            records.push(node_record(&id, run.attempts, run.started_at.clone(), &run.report, Some(&run.input_digest)));
            if let Some(store) = store
                && wrote_something(&run.report)
            {
                // A small log goes into the database with the run's end; a
                // large one into a file now.
                let text = node_log_text(&run.report);
                if text.len() <= crate::store::runs::INLINE_LOG_MAX {
                    logs.push((id.clone(), text));
                } else if let Err(e) = write_node_log(store, run_id, &id, &text) {
                    tracing::warn!("cannot write the log of node `{id}` of run {run_id}: {e}");
                }
            }
            if run.report.succeeded() {
                if let Some(output) = &run.report.output {
                    outputs.insert(id.clone(), serde_json::from_str(output.get()).unwrap_or(Value::Null));
                    raw_outputs.insert(id.clone(), output.clone());
                } else {
                    outputs.insert(id.clone(), Value::Null);
                }
                last_report = Some(run.report);
            } else if failure.is_none() {
                failure = Some((id, run.report));
            }
        }
        let unfinished = running
            .unfinished()
            .map(|id| (id, NodeStatus::Cancelled))
            .chain(pending.into_iter().map(|id| (id, NodeStatus::Skipped)));
        for (id, status) in unfinished {
            records.push(NodeRecord {
                node: id,
                status,
                attempts: 0,
                started_at: None,
                duration_ms: 0.0,
                fuel_consumed: 0,
                peak_memory_bytes: 0,
                output_bytes: 0,
                error_code: None,
                error_detail: None,
                error_message: None,
                input_digest: None,
                output_digest: None,
                trace: Vec::new(),
                policy_violations: Vec::new(),
                metrics: BTreeMap::new(),
            });
        }

        // What the last writes left, checked once more at the end.
        if exceeded.is_none()
            && let Some((dir, limit)) = run_outputs
        {
            exceeded = over(dir, limit);
        }
        if let (Some(usage), Some((dir, limit))) = (exceeded, run_outputs) {
            clear_dir(dir);
            report.status = RunStatus::Failed;
            report.error_code = Some(ErrorCode::OutputLimit);
            report.error_detail = Some("outputs".to_owned());
            report.error_message = Some(format!(
                "/outputs went over its cap of {} bytes in {} files (it held at least {} bytes in {} entries); \
                 the run was stopped and its outputs removed",
                limit.max_bytes, limit.max_files, usage.bytes, usage.entries
            ));
            return (report, records, logs);
        }
        if cancelled {
            report.status = RunStatus::Cancelled;
            report.error_code = None;
            report.error_message = Some("the run was cancelled".to_owned());
            return (report, records, logs);
        }
        if self.plan.kind != GuestKind::Workflow {
            // A plain component: its one report is the run's report.
            let single = match failure {
                Some((_, report)) => report,
                None => last_report.expect("the main node ran"),
            };
            return (single, records, logs);
        }

        match failure {
            Some((node, node_report)) => {
                report.status = RunStatus::Failed;
                report.error_code = node_report.error_code;
                report.error_message =
                    Some(format!("node `{node}` failed: {}", node_report.error_message.unwrap_or_default()));
                report.node_error = node_report.node_error;
                report.failed_node = Some(node);
            }
            None => {
                let output = if self.plan.outputs.len() == 1 {
                    raw_outputs.remove(&self.plan.outputs[0])
                } else {
                    let object: serde_json::Map<String, Value> =
                        self.plan.outputs.iter().map(|id| (id.clone(), outputs[id].clone())).collect();
                    RawValue::from_string(Value::Object(object).to_string()).ok()
                };
                report.status = RunStatus::Succeeded;
                report.error_code = None;
                report.error_message = None;
                report.output = output;
            }
        }
        (report, records, logs)
    }

    /// Builds node `id`'s input. See `docs/bundle-format.md`.
    fn node_input(
        &self,
        id: &str,
        raw_input: &str,
        workflow_input: &Value,
        outputs: &BTreeMap<String, Value>,
    ) -> Result<String, String> {
        let Some(def) = &self.steps[id].def else { return Ok(raw_input.to_owned()) };
        if !def.inputs.is_empty() {
            let mut object = serde_json::Map::new();
            for (key, reference) in &def.inputs {
                let parsed = Reference::parse(reference).expect("validated at load");
                let mut value = match parsed.node {
                    None => workflow_input,
                    Some(node) => &outputs[node],
                };
                for field in &parsed.path {
                    value = value.get(field).ok_or_else(|| {
                        format!("node `{id}`: inputs.{key} = {reference:?}: there is no `{field}` in that value")
                    })?;
                }
                object.insert(key.clone(), value.clone());
            }
            return Ok(Value::Object(object).to_string());
        }
        if def.depends_on.is_empty() {
            return Ok(workflow_input.to_string());
        }
        let mut object = serde_json::Map::new();
        object.insert("input".to_owned(), workflow_input.clone());
        for dependency in &def.depends_on {
            object.insert(dependency.clone(), outputs[dependency].clone());
        }
        Ok(Value::Object(object).to_string())
    }

    fn request(&self, id: &str, input: String, grant: &Grant, execution: &Execution) -> RunRequest {
        let step = &self.steps[id];
        let granted: BTreeSet<&String> = step.def.iter().flat_map(|d| &d.secrets).collect();
        let secrets = granted.iter().map(|name| ((*name).clone(), execution.secrets.get(*name).cloned())).collect();
        RunRequest {
            input,
            args: execution.args.clone(),
            inherit_stdin: execution.inherit_stdin && self.plan.kind == GuestKind::Job,
            limits: grant.limits.get(id).cloned().unwrap_or_default(),
            grants: execution.grants.clone(),
            echo: execution.echo,
            services: NodeServices {
                config: Some(step.config.clone()),
                secrets: Some(Arc::new(secrets)),
                // Filled per attempt by the node task.
                state: None,
            },
        }
    }
}

/// What one execution of a run works in: its id, its state overlay, its
/// outputs directory and cap.
struct Scope<'a> {
    run_id: &'a str,
    overlay: Option<Arc<RunOverlay>>,
    outputs: Option<&'a (std::path::PathBuf, OutputsLimit)>,
}

/// How often a run's `/outputs` is measured while it runs.
const OUTPUTS_WATCH: std::time::Duration = std::time::Duration::from_millis(20);

/// `dir`'s usage, if it is over `limit`.
fn over(dir: &std::path::Path, limit: &OutputsLimit) -> Option<crate::store::outputs::Usage> {
    let usage = crate::store::outputs::usage(dir, limit.max_files);
    (usage.bytes > limit.max_bytes || usage.entries > limit.max_files).then_some(usage)
}

/// Empties `dir`, keeping it.
fn clear_dir(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let _ = match path.symlink_metadata() {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
    }
}

/// Resolves when `cancel` is notified; never, without one.
async fn notified(cancel: Option<&Arc<Notify>>) {
    match cancel {
        Some(cancel) => cancel.notified().await,
        None => std::future::pending().await,
    }
}

/// The nodes of a run in flight. A workflow's nodes run side by side, each
/// on a task of its own. A plain component's one node is polled on the
/// run's own task: no task to spawn, schedule and join for each run (the
/// daemon starts thousands a second).
enum Nodes {
    Tasks {
        set: JoinSet<(String, NodeRun)>,
        /// Node ids of the tasks still running, by tokio task id.
        ids: BTreeMap<tokio::task::Id, String>,
    },
    /// The node's id, and its run until it ends or is aborted.
    Inline(Option<(String, Option<InlineRun>)>),
}

/// A node's run polled on the run's own task.
type InlineRun = Pin<Box<dyn Future<Output = NodeRun> + Send>>;

/// How a node in flight came out. Returned once per node and matched at
/// once: boxing the large variant would cost an allocation per run.
#[allow(clippy::large_enum_variant)]
enum Joined {
    Ran(String, NodeRun),
    /// Aborted by [`Nodes::abort_all`]: its id stays among the unfinished.
    Aborted,
    /// The host panicked while running node `0`, saying `1`.
    Panicked(String, String),
}

impl Nodes {
    fn for_plan(kind: GuestKind) -> Nodes {
        match kind {
            GuestKind::Workflow => Nodes::Tasks { set: JoinSet::new(), ids: BTreeMap::new() },
            _ => Nodes::Inline(None),
        }
    }

    fn len(&self) -> usize {
        match self {
            Nodes::Tasks { set, .. } => set.len(),
            Nodes::Inline(node) => usize::from(node.as_ref().is_some_and(|(_, run)| run.is_some())),
        }
    }

    /// Starts node `id`, whose run is `run`.
    fn start(&mut self, id: String, run: impl Future<Output = NodeRun> + Send + 'static) {
        match self {
            Nodes::Tasks { set, ids } => {
                let node = id.clone();
                let handle = set.spawn(async move { (node, run.await) });
                ids.insert(handle.id(), id);
            }
            Nodes::Inline(slot) => {
                debug_assert!(slot.is_none(), "a plain component has one node");
                *slot = Some((id, Some(Box::pin(run))));
            }
        }
    }

    /// The next node to end, or `None` when none is in flight. Cancel-safe,
    /// as [`JoinSet::join_next`] is: a node polled inline stays in `self`.
    async fn next(&mut self) -> Option<Joined> {
        match self {
            Nodes::Tasks { set, ids } => Some(match set.join_next().await? {
                Ok((id, run)) => {
                    ids.retain(|_, node| *node != id);
                    Joined::Ran(id, run)
                }
                Err(e) if e.is_cancelled() => Joined::Aborted,
                Err(e) => match ids.remove(&e.id()) {
                    Some(id) => Joined::Panicked(id, e.to_string()),
                    None => Joined::Aborted,
                },
            }),
            Nodes::Inline(slot) => {
                let run = slot.as_mut()?.1.as_mut()?;
                let ended = std::future::poll_fn(|cx| {
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.as_mut().poll(cx))) {
                        Ok(Poll::Ready(run)) => Poll::Ready(Ok(run)),
                        Ok(Poll::Pending) => Poll::Pending,
                        Err(panic) => Poll::Ready(Err(panic)),
                    }
                })
                .await;
                let (id, _) = slot.take().expect("polled above");
                Some(match ended {
                    Ok(run) => Joined::Ran(id, run),
                    Err(panic) => Joined::Panicked(id, format!("the node panicked: {}", panic_message(&*panic))),
                })
            }
        }
    }

    /// Stops every node in flight: dropping a node's run drops its store.
    fn abort_all(&mut self) {
        match self {
            Nodes::Tasks { set, .. } => set.abort_all(),
            Nodes::Inline(slot) => {
                if let Some((_, run)) = slot {
                    *run = None;
                }
            }
        }
    }

    /// The ids of the nodes that did not end.
    fn unfinished(self) -> impl Iterator<Item = String> {
        let (tasks, inline) = match self {
            Nodes::Tasks { ids, .. } => (Some(ids.into_values()), None),
            Nodes::Inline(slot) => (None, slot.map(|(id, _)| id)),
        };
        tasks.into_iter().flatten().chain(inline)
    }
}

/// The next tick of `watch`; never, if there is none.
async fn tick(watch: &mut Option<tokio::time::Interval>) {
    match watch {
        Some(watch) => {
            watch.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// What a panic said, if it said it in text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("")
}

/// One node's attempts: a task of its own, or polled inline ([`Nodes`]).
struct NodeTask {
    sandbox: Arc<Sandbox>,
    program: Program,
    retry: Option<RetryPolicy>,
    overlay: Option<Arc<RunOverlay>>,
    request: RunRequest,
}

struct NodeRun {
    attempts: u32,
    started_at: Option<String>,
    input_digest: String,
    report: RunReport,
}

impl NodeTask {
    async fn run(mut self) -> NodeRun {
        let started_at = Some(now());
        let input_digest = digest(self.request.input.as_bytes());
        let max_attempts = self.retry.map(|r| r.max_attempts).unwrap_or(1);
        let (mut duration_ms, mut fuel, mut peak) = (0.0, 0, 0);
        let mut violations = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let attempt_state = self.overlay.as_ref().map(|overlay| Arc::new(AttemptState::new(overlay.clone())));
            self.request.services.state = attempt_state.clone().map(|s| s as Arc<dyn StateAccess>);
            let mut report = self.sandbox.run(&self.program, &self.request).await;
            duration_ms += report.duration_ms;
            fuel += report.fuel_consumed;
            peak = u64::max(peak, report.peak_memory_bytes);
            violations.append(&mut report.policy_violations);
            let retry = report.node_error.as_ref().is_some_and(|e| e.retryable) && attempt < max_attempts;
            if report.succeeded() {
                if let Some(state) = attempt_state {
                    state.commit();
                }
            } else if retry && let Some(policy) = self.retry {
                tokio::time::sleep(policy.backoff(attempt)).await;
                continue;
            }
            report.duration_ms = duration_ms;
            report.fuel_consumed = fuel;
            report.peak_memory_bytes = peak;
            report.policy_violations = violations;
            return NodeRun { attempts: attempt, started_at, input_digest, report };
        }
    }
}

fn node_record(
    id: &str,
    attempts: u32,
    started_at: Option<String>,
    report: &RunReport,
    input_digest: Option<&String>,
) -> NodeRecord {
    let output = report.output.as_ref().map(|o| o.get());
    NodeRecord {
        node: id.to_owned(),
        status: if report.succeeded() { NodeStatus::Succeeded } else { NodeStatus::Failed },
        attempts,
        started_at,
        duration_ms: report.duration_ms,
        fuel_consumed: report.fuel_consumed,
        peak_memory_bytes: report.peak_memory_bytes,
        output_bytes: output.map(|o| o.len() as u64).unwrap_or(0),
        error_code: report.error_code,
        error_detail: report.error_detail.clone(),
        error_message: report.error_message.clone(),
        input_digest: input_digest.cloned(),
        output_digest: output.map(|o| digest(o.as_bytes())),
        trace: report.trace.clone(),
        policy_violations: report.policy_violations.clone(),
        metrics: report.metrics.clone(),
    }
}

/// A component's top-level import names (it compiled, so it parses).
/// Records `end` and waits for its commit without holding up other tasks:
/// on a multi-threaded runtime (the daemon, a workflow) through the store's
/// run-end writer, where the ends of runs finishing together share a
/// commit; on a current-thread runtime (`wfrun exec` of one component),
/// where nothing else waits, here.
async fn finish(store: &Arc<Store>, end: RunEnd) -> (RunEnd, Result<(), StoreError>) {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => store.finish_run_shared(end).await,
        _ => {
            let finished = store.finish_run(&end);
            (end, finished)
        }
    }
}

/// Whether a node run left anything for its log file.
fn wrote_something(report: &RunReport) -> bool {
    !(report.logs.is_empty() && report.stdout.is_empty() && report.stderr.is_empty())
}

/// Node logs kept with the run's record: (node, text).
type NodeLogs = Vec<(String, String)>;

/// One node's captured log lines, stdout and stderr, as `wfrun runs logs`
/// shows them.
pub fn node_log_text(report: &RunReport) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for line in &report.logs {
        let _ = writeln!(text, "[{}] {}", line.level, line.message);
    }
    if !report.stdout.is_empty() {
        text.push_str("--- stdout ---\n");
        text.push_str(&report.stdout);
    }
    if !report.stderr.is_empty() {
        text.push_str("--- stderr ---\n");
        text.push_str(&report.stderr);
    }
    text
}

/// Writes one node's log `text` to `<state-dir>/logs/<run-id>/<node>.log`
/// (for a log over [`INLINE_LOG_MAX`](crate::store::runs::INLINE_LOG_MAX)).
pub fn write_node_log(store: &Store, run_id: &str, node: &str, text: &str) -> std::io::Result<()> {
    let dir = store.log_dir(run_id);
    crate::files::create_private_dir(&dir)?;
    let mut file = crate::files::create_private_file(&dir.join(format!("{node}.log")), false)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ran() -> NodeRun {
        let report = RunReport::rejected(ErrorCode::Trap, "a stand-in".to_owned());
        NodeRun { attempts: 1, started_at: None, input_digest: String::new(), report }
    }

    /// A workflow's nodes (tasks of their own) and a plain component's one
    /// node (polled inline).
    const KINDS: [GuestKind; 2] = [GuestKind::Workflow, GuestKind::Node];

    #[tokio::test]
    async fn a_node_that_ends_comes_out_once_under_its_id_and_is_not_unfinished() {
        for kind in KINDS {
            let mut nodes = Nodes::for_plan(kind);
            nodes.start("main".to_owned(), async {
                tokio::task::yield_now().await;
                ran()
            });
            assert_eq!(nodes.len(), 1);
            assert!(matches!(nodes.next().await, Some(Joined::Ran(id, _)) if id == "main"), "{kind:?}");
            assert!(nodes.next().await.is_none(), "{kind:?}");
            assert_eq!(nodes.unfinished().count(), 0, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn a_panic_while_a_node_runs_is_that_nodes_and_does_not_reach_the_run() {
        for kind in KINDS {
            let mut nodes = Nodes::for_plan(kind);
            nodes.start("main".to_owned(), async { panic!("the host fails on purpose") });
            assert!(matches!(nodes.next().await, Some(Joined::Panicked(id, _)) if id == "main"), "{kind:?}");
            assert!(nodes.next().await.is_none(), "{kind:?}");
            assert_eq!(nodes.unfinished().count(), 0, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn an_aborted_node_is_dropped_and_counted_unfinished() {
        for kind in KINDS {
            let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
            struct Flag(Arc<std::sync::atomic::AtomicBool>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let flag = Flag(dropped.clone());
            let mut nodes = Nodes::for_plan(kind);
            nodes.start("main".to_owned(), async move {
                let _flag = flag;
                std::future::pending::<()>().await;
                ran()
            });
            // Started (a task runs once it is polled), then aborted.
            let _ = tokio::time::timeout(Duration::from_millis(5), nodes.next()).await;
            nodes.abort_all();
            while let Some(joined) = nodes.next().await {
                assert!(matches!(joined, Joined::Aborted), "{kind:?}");
            }
            assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "{kind:?}: the run was not dropped");
            assert_eq!(nodes.unfinished().collect::<Vec<_>>(), ["main"], "{kind:?}");
        }
    }

    #[tokio::test]
    async fn waiting_for_a_node_can_be_given_up_and_taken_up_again() {
        for kind in KINDS {
            let mut nodes = Nodes::for_plan(kind);
            let (send, receive) = tokio::sync::oneshot::channel::<()>();
            nodes.start("main".to_owned(), async move {
                let _ = receive.await;
                ran()
            });
            // A `select!` whose other branch won drops the wait midway.
            assert!(tokio::time::timeout(Duration::from_millis(5), nodes.next()).await.is_err(), "{kind:?}");
            send.send(()).unwrap();
            assert!(matches!(nodes.next().await, Some(Joined::Ran(id, _)) if id == "main"), "{kind:?}");
        }
    }
}
