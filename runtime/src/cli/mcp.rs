//! `wfrun mcp`: the control plane as Model Context Protocol tools, over
//! stdio (the official Rust SDK, `rmcp`), for an agent to drive.
//!
//! The control tools (`status`, `runs_list`, `runs_show`, `runs_logs`,
//! `jobs_list`, `jobs_add`, `jobs_pause`, `jobs_resume`, `trigger` with
//! `wait`, `cancel`) send the same requests as the CLI, to the daemon the
//! server's own flags name (the local one, `--remote`, or a profile). The
//! `exec` tool runs `wfrun exec` on a bundle with exactly the exec flags the
//! server was started with (after `--`): the tool takes a bundle, an input
//! and arguments, and nothing that could widen a grant or a limit. Each
//! tool's arguments are checked against its schema (unknown ones refused).

use super::GlobalArgs;
use super::target::TargetArgs;
use crate::daemon::control::Endpoint;
use crate::outcome::ExitStatus;
use clap::{Args, Parser};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::sync::Arc;

const MCP_HELP: &str = "\
Speaks MCP (JSON-RPC) on stdin and stdout; diagnostics go to stderr. An MCP
client (an agent's host) starts it as a subprocess, for example:

  {\"command\": \"wfrun\", \"args\": [\"mcp\", \"--\", \"--memory\", \"64MiB\", \"--timeout\", \"10s\"]}

The control tools need a running daemon (the local one, or --remote/--profile)
and act with the same authority as the CLI on this machine: jobs_add can add
any job `wfrun jobs add` could, under the daemon's own policy. Give
--read-only to offer only the tools that read. The exec tool runs bundles
with only the exec flags given after `--`: the agent cannot ask for more (no
directories, hosts, environment or larger limits than those). Give --no-exec
to offer no exec tool at all.";

#[derive(Debug, Args)]
#[command(after_help = MCP_HELP)]
pub struct McpCommand {
    /// Offer no `exec` tool.
    #[arg(long)]
    no_exec: bool,
    /// Offer only the tools that read (status, runs, jobs_list): no
    /// jobs_add, jobs_pause, jobs_resume, trigger, cancel or exec.
    #[arg(long)]
    read_only: bool,
    #[command(flatten)]
    target: TargetArgs,
    /// The `wfrun exec` flags every exec tool call runs with (limits and
    /// grants), e.g. `-- --memory 64MiB --allow-host https://api.example.com`.
    #[arg(last = true, value_name = "EXEC_FLAGS")]
    exec_flags: Vec<String>,
}

/// The MCP server's state.
#[derive(Clone)]
struct Server {
    endpoint: Arc<Endpoint>,
    state_dir: PathBuf,
    /// `None`: no exec tool.
    exec_flags: Option<Arc<Vec<String>>>,
    /// Only the tools that read.
    read_only: bool,
}

impl McpCommand {
    /// Serves until the client closes stdin.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        // Bad exec flags fail here, not at the agent's first call.
        let exec_flags = if self.no_exec || self.read_only {
            None
        } else {
            for flag in &self.exec_flags {
                let name = flag.split('=').next().unwrap_or(flag);
                if ["--input", "--input-file", "--json", "--quiet", "-q", "--state-dir"].contains(&name) {
                    eprintln!("wfrun: mcp: {name} is set by each exec call, not the server's exec flags");
                    return Ok(ExitStatus::Usage);
                }
            }
            let mut probe = vec!["wfrun".to_owned(), "exec".to_owned()];
            probe.extend(self.exec_flags.iter().cloned());
            probe.push("bundle.wasm".to_owned());
            if let Err(e) = super::Cli::try_parse_from(&probe) {
                eprintln!("wfrun: mcp: the exec flags after `--` are not valid `wfrun exec` flags:\n{e}");
                return Ok(ExitStatus::Usage);
            }
            Some(Arc::new(self.exec_flags))
        };
        let endpoint = match super::daemon::endpoint(global, &self.target) {
            Ok(endpoint) => Arc::new(endpoint),
            Err(status) => return Ok(status),
        };
        let server = Server { endpoint, state_dir: global.state_dir(), exec_flags, read_only: self.read_only };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(async move {
            let service = server.serve(rmcp::transport::stdio()).await?;
            service.waiting().await?;
            anyhow::Ok(())
        })?;
        Ok(ExitStatus::Success)
    }
}

/// A JSON schema for an object with `properties`, `required` of them, and
/// nothing else.
fn schema(properties: Value, required: &[&str]) -> Map<String, Value> {
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    schema.as_object().cloned().expect("an object")
}

/// The tools that only read.
const READING: [&str; 5] = ["status", "runs_list", "runs_show", "runs_logs", "jobs_list"];

fn tools(exec: bool, read_only: bool) -> Vec<Tool> {
    let run_id = json!({ "run_id": { "type": "string", "description": "A run id" } });
    let name = json!({ "name": { "type": "string", "description": "The job's name" } });
    let mut tools = vec![
        Tool::new("status", "The daemon's jobs, services, runs in flight, release and reports", schema(json!({}), &[])),
        Tool::new(
            "runs_list",
            "Recorded runs, newest first",
            schema(
                json!({
                    "limit": { "type": "integer", "minimum": 1, "maximum": 1000 },
                    "status": { "type": "string", "enum": ["pending", "running", "succeeded", "failed", "cancelled", "interrupted"] }
                }),
                &[],
            ),
        ),
        Tool::new("runs_show", "One run: status, error, output, node records", schema(run_id.clone(), &["run_id"])),
        Tool::new("runs_logs", "A run's captured logs, per node", schema(run_id.clone(), &["run_id"])),
        Tool::new("jobs_list", "The daemon's jobs", schema(json!({}), &[])),
        Tool::new(
            "jobs_add",
            "Add or replace a daemon job",
            schema(
                json!({
                    "name": { "type": "string" },
                    "spec": {
                        "type": "object",
                        "description": "bundle (absolute path), input (JSON text), args, trigger ({\"every\": \"30s\"}, {\"cron\": \"...\"}, \"webhook\", \"manual\" or \"always\"), allow_overlap, memory_bytes, timeout, fuel"
                    }
                }),
                &["name", "spec"],
            ),
        ),
        Tool::new("jobs_pause", "Pause a job (a service's run is cancelled)", schema(name.clone(), &["name"])),
        Tool::new("jobs_resume", "Resume a paused job", schema(name.clone(), &["name"])),
        Tool::new(
            "trigger",
            "Start a job now; with wait, wait for its end (following retries) and return the run",
            schema(
                json!({
                    "name": { "type": "string" },
                    "input": { "type": "string", "description": "Input JSON text instead of the job's own" },
                    "wait": { "type": "boolean" },
                    "wait_s": { "type": "integer", "minimum": 1, "maximum": 3600, "description": "The longest wait, in seconds (300 unless given); the run goes on past it" }
                }),
                &["name"],
            ),
        ),
        Tool::new("cancel", "Cancel a running run", schema(run_id, &["run_id"])),
    ];
    if read_only {
        tools.retain(|tool| READING.contains(&tool.name.as_ref()));
    }
    if exec {
        tools.push(Tool::new(
            "exec",
            "Run a bundle once with `wfrun exec`, under the limits and grants the server was started with",
            schema(
                json!({
                    "bundle": { "type": "string", "description": "The bundle file" },
                    "input": { "description": "The node's input (any JSON)" },
                    "args": { "type": "array", "items": { "type": "string" }, "description": "A job's arguments" }
                }),
                &["bundle"],
            ),
        ));
    }
    tools
}

/// A tool's refusal of its arguments.
fn bad(message: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(message.into(), None)
}

/// Checks `arguments` against tool `tool`'s schema: only its properties,
/// its required ones present, each of the declared JSON type.
fn check(tool: &Tool, arguments: &Map<String, Value>) -> Result<(), ErrorData> {
    let properties = tool.input_schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    for (key, value) in arguments {
        let Some(declared) = properties.get(key) else {
            return Err(bad(format!("{}: unknown argument {key:?}", tool.name)));
        };
        let fits = match declared.get("type").and_then(Value::as_str) {
            Some("string") => value.is_string(),
            Some("integer") => value.is_u64(),
            Some("boolean") => value.is_boolean(),
            Some("object") => value.is_object(),
            Some("array") => value.as_array().is_some_and(|items| items.iter().all(Value::is_string)),
            _ => true,
        };
        if !fits {
            return Err(bad(format!("{}: argument {key:?} has the wrong type", tool.name)));
        }
    }
    for required in tool.input_schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(key) = required.as_str().filter(|key| !arguments.contains_key(*key)) {
            return Err(bad(format!("{}: missing argument {key:?}", tool.name)));
        }
    }
    Ok(())
}

impl Server {
    /// Sends one control request; a refusal is the tool's error result. A
    /// list is answered as `{"items": [...]}` (structured content is an
    /// object).
    fn control(&self, method: &str, params: Value) -> CallToolResult {
        match self.endpoint.call(method, params) {
            Ok(response) if response.ok => match response.result.unwrap_or(Value::Null) {
                object @ Value::Object(_) => CallToolResult::structured(object),
                other => CallToolResult::structured(json!({ "items": other })),
            },
            Ok(response) => CallToolResult::structured_error(json!({ "error": response.error })),
            Err(e) => CallToolResult::structured_error(
                json!({ "error": { "code": "unreachable", "message": e.to_string() } }),
            ),
        }
    }

    fn call(&self, name: &str, args: Map<String, Value>) -> CallToolResult {
        let arg = |key: &str| args.get(key).cloned().unwrap_or(Value::Null);
        match name {
            "status" => self.control("status", json!({})),
            "jobs_list" => self.control("jobs.list", json!({})),
            "runs_list" => self.control("runs.list", json!({ "limit": arg("limit"), "status": arg("status") })),
            "runs_show" => self.control("runs.show", json!({ "run_id": arg("run_id") })),
            "runs_logs" => self.control("runs.logs", json!({ "run_id": arg("run_id") })),
            "jobs_add" => self.control("jobs.add", json!({ "name": arg("name"), "spec": arg("spec") })),
            "jobs_pause" => self.control("jobs.pause", json!({ "name": arg("name") })),
            "jobs_resume" => self.control("jobs.resume", json!({ "name": arg("name") })),
            "cancel" => self.control("cancel", json!({ "run_id": arg("run_id") })),
            "trigger" => {
                let started = self.control("trigger", json!({ "name": arg("name"), "input": arg("input") }));
                if arg("wait") != true || started.is_error == Some(true) {
                    return started;
                }
                let run_id = started.structured_content.as_ref().and_then(|r| r["run_id"].as_str()).unwrap_or_default();
                let wait = std::time::Duration::from_secs(arg("wait_s").as_u64().unwrap_or(300).clamp(1, 3600));
                let deadline = Some(std::time::Instant::now() + wait);
                match super::runs::await_end(&self.endpoint, run_id, deadline, |_, _| {}) {
                    Ok(run) => {
                        let status = ExitStatus::of_ended(run.status, run.error_code, run.exit_code);
                        let mut shown = serde_json::to_value(&run).unwrap_or_default();
                        shown["exit_status"] = json!(status.code());
                        if status == ExitStatus::Success {
                            CallToolResult::structured(shown)
                        } else {
                            CallToolResult::structured_error(shown)
                        }
                    }
                    Err(super::runs::WaitFailure::Client(e)) => CallToolResult::structured_error(
                        json!({ "error": { "code": "unreachable", "message": e.to_string() } }),
                    ),
                    Err(super::runs::WaitFailure::Refused(e)) => {
                        CallToolResult::structured_error(json!({ "error": { "code": "refused", "message": e } }))
                    }
                    Err(super::runs::WaitFailure::TimedOut(run_id)) => CallToolResult::structured_error(json!({
                        "error": { "code": "still_running", "message": format!("run {run_id} had not ended after {wait:?}; ask runs_show later") },
                        "run_id": run_id,
                    })),
                }
            }
            "exec" => self.exec(&args),
            _ => {
                CallToolResult::structured_error(json!({ "error": { "code": "not_found", "message": "no such tool" } }))
            }
        }
    }

    /// `wfrun exec` with the server's flags, the bundle, the input and the
    /// arguments; its `--json` report is the result.
    fn exec(&self, args: &Map<String, Value>) -> CallToolResult {
        let Some(flags) = &self.exec_flags else {
            return CallToolResult::structured_error(
                json!({ "error": { "code": "not_found", "message": "exec is off" } }),
            );
        };
        let bundle = PathBuf::from(args.get("bundle").and_then(Value::as_str).unwrap_or_default());
        // Absolute, so it can never read as a flag.
        let bundle = std::path::absolute(&bundle).unwrap_or(bundle);
        let input = match args.get("input") {
            Some(Value::String(text)) => text.clone(),
            Some(value) => value.to_string(),
            None => "{}".to_owned(),
        };
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("wfrun"));
        let mut command = std::process::Command::new(exe);
        command.arg("--state-dir").arg(&self.state_dir).arg("exec").args(flags.iter());
        // One argument, so an input starting with `-` is never read as a flag.
        command.arg("--json").arg(format!("--input={input}")).arg(&bundle);
        let guest_args: Vec<&str> =
            args.get("args").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        if !guest_args.is_empty() {
            command.arg("--").args(guest_args);
        }
        let output = match command.stdin(std::process::Stdio::null()).output() {
            Ok(output) => output,
            Err(e) => {
                return CallToolResult::structured_error(
                    json!({ "error": { "code": "internal", "message": e.to_string() } }),
                );
            }
        };
        let code = output.status.code().unwrap_or(1);
        let mut report = serde_json::from_slice::<Value>(&output.stdout).unwrap_or_else(|_| {
            json!({ "error": { "code": "internal", "message": String::from_utf8_lossy(&output.stderr).trim().to_owned() } })
        });
        report["exit_status"] = json!(code);
        if code == 0 { CallToolResult::structured(report) } else { CallToolResult::structured_error(report) }
    }
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("wfrun", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "wfrun runs WebAssembly bundles in a sandbox. Use the tools to inspect and drive the wfrun daemon \
                 (jobs, triggers, runs) and to exec bundles under the operator's limits.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools(self.exec_flags.is_some(), self.read_only)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tools = tools(self.exec_flags.is_some(), self.read_only);
        let Some(tool) = tools.iter().find(|t| t.name == request.name) else {
            return Err(bad(format!("no tool named {:?}", request.name)));
        };
        let arguments = request.arguments.unwrap_or_default();
        check(tool, &arguments)?;
        let server = self.clone();
        let name = request.name.to_string();
        // The control client and `exec` block: off the protocol's threads.
        let result = tokio::task::spawn_blocking(move || server.call(&name, arguments))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(result.into())
    }
}
