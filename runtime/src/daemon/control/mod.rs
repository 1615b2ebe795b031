//! The control plane: one dispatcher, two transports.
//!
//! A client sends one [`Request`] (`{"id": 1, "method": "jobs.list",
//! "params": {}}`) and gets one [`Response`] (`{"id": 1, "ok": true,
//! "result": ...}` or `{"id": 1, "ok": false, "error": {"code":
//! "not_found", "message": "..."}}`). [`dispatch`] knows nothing of the
//! transport: [`unix`] carries requests as JSON lines over the state
//! directory's socket (mode 0600; [`call`] is the client the CLI uses), and
//! [`http`] as `POST /v1/rpc` with a bearer token, beside the webhook
//! listener.
//!
//! Methods: `status`, `jobs.list`, `jobs.add {name, spec}`, `jobs.remove
//! {name}`, `jobs.pause {name}`, `jobs.resume {name}`, `trigger {name,
//! input?, count?}`, `runs.list {limit?, status?}`, `runs.show {run_id}` (the
//! record, and `settled`: false while the daemon may still retry the run),
//! `runs.logs {run_id}` (`[{node, text}]`), `cancel {run_id}`,
//! `sync.status`, `sync.now`, `rollback`, `shutdown`.

pub mod client;
pub mod http;
pub mod unix;

pub use client::{Endpoint, EndpointError, Remote};
pub use unix::{ClientError, call};

use super::scheduler::Source;
use super::{Daemon, DaemonError};
use crate::manifest::JobSpec;
use crate::outcome::RunStatus;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;

/// One request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Value,
    /// The method, e.g. `jobs.add`.
    pub method: String,
    /// Its parameters.
    #[serde(default)]
    pub params: Value,
}

/// One response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: Value,
    /// Whether it worked.
    pub ok: bool,
    /// The result, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A refusal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable: `not_found`, `invalid`, `busy`, `paused`, `shutting_down`, `internal`.
    pub code: String,
    /// A finer stable code, where there is one (e.g. `bad_cron` under `invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// In words.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddJob {
    name: String,
    spec: JobSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Trigger {
    name: String,
    #[serde(default)]
    input: Option<String>,
    /// Runs to start at once (1 unless given).
    #[serde(default)]
    count: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunId {
    run_id: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListRuns {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    status: Option<String>,
}

fn params<T: serde::de::DeserializeOwned>(method: &str, params: Value) -> Result<T, DaemonError> {
    let params = if params.is_null() { json!({}) } else { params };
    serde_json::from_value(params).map_err(|e| DaemonError::InvalidRequest(format!("{method}: bad params: {e}")))
}

/// Answers one request.
pub fn dispatch(daemon: &Arc<Daemon>, request: Request) -> Response {
    let id = request.id.clone();
    match handle(daemon, request) {
        Ok(result) => Response { id, ok: true, result: Some(result), error: None },
        Err(e) => Response {
            id,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code: e.code().to_owned(),
                detail: e.detail().map(str::to_owned),
                message: e.to_string(),
            }),
        },
    }
}

fn handle(daemon: &Arc<Daemon>, request: Request) -> Result<Value, DaemonError> {
    let method = request.method.as_str();
    match method {
        "status" => value(&daemon.status()?),
        "jobs.list" => value(&daemon.status()?.jobs),
        "jobs.add" => {
            let AddJob { name, spec } = params(method, request.params)?;
            daemon.add_job(&name, &spec)?;
            Ok(json!({ "name": name }))
        }
        "jobs.remove" => {
            let Named { name } = params(method, request.params)?;
            daemon.remove_job(&name)?;
            Ok(json!({ "name": name }))
        }
        "jobs.pause" | "jobs.resume" => {
            let Named { name } = params(method, request.params)?;
            daemon.set_paused(&name, method == "jobs.pause")?;
            Ok(json!({ "name": name }))
        }
        "trigger" => {
            let Trigger { name, input, count } = params(method, request.params)?;
            match count {
                None => {
                    let run_id = daemon.trigger(&name, input, Source::Manual)?;
                    Ok(json!({ "name": name, "run_id": run_id }))
                }
                Some(count) => {
                    let run_ids = daemon.trigger_many(&name, input, count, Source::Manual)?;
                    Ok(json!({ "name": name, "run_id": run_ids[0], "run_ids": run_ids }))
                }
            }
        }
        "cancel" => {
            let RunId { run_id } = params(method, request.params)?;
            let job = daemon.cancel(&run_id)?;
            Ok(json!({ "run_id": run_id, "job": job }))
        }
        "runs.list" => {
            let ListRuns { limit, status } = params(method, request.params)?;
            let status = match status {
                Some(text) => Some(
                    RunStatus::parse(&text)
                        .ok_or_else(|| DaemonError::InvalidRequest(format!("runs.list: unknown status {text:?}")))?,
                ),
                None => None,
            };
            value(&daemon.store().list_runs(status, limit.unwrap_or(20).min(1000))?)
        }
        "runs.show" => {
            let RunId { run_id } = params(method, request.params)?;
            // Asked before the record is read: a supervisor links a retry
            // (`retried_as`) before it lets the run settle, so a settled
            // answer always comes with a record that names any retry.
            let settled = daemon.settled(&run_id);
            match daemon.store().run(&run_id)? {
                Some(run) => {
                    let mut shown = value(&run)?;
                    shown["settled"] = json!(settled);
                    Ok(shown)
                }
                None => Err(DaemonError::RunNotFound { run_id }),
            }
        }
        "runs.logs" => {
            let RunId { run_id } = params(method, request.params)?;
            if daemon.store().run(&run_id)?.is_none() {
                return Err(DaemonError::RunNotFound { run_id });
            }
            let logs = daemon.store().logs(&run_id)?;
            Ok(Value::Array(logs.into_iter().map(|(node, text)| json!({ "node": node, "text": text })).collect()))
        }
        "sync.status" => value(&daemon.sync_status()?),
        "rollback" => {
            let version = daemon.rollback()?;
            Ok(json!({ "rolled_back": version }))
        }
        "sync.now" => {
            daemon.sync_now()?;
            Ok(json!({ "checking": true }))
        }
        "shutdown" => {
            daemon.stop();
            Ok(json!({ "stopping": true }))
        }
        other => Err(DaemonError::InvalidRequest(format!("unknown method {other:?}"))),
    }
}

fn value<T: Serialize>(v: &T) -> Result<Value, DaemonError> {
    serde_json::to_value(v).map_err(|e| DaemonError::Internal(e.to_string()))
}
