//! The control plane: JSON lines over a Unix socket.
//!
//! Each line from a client is one [`Request`] (`{"id": 1, "method":
//! "jobs.list", "params": {}}`) and gets one [`Response`] line (`{"id": 1,
//! "ok": true, "result": ...}` or `{"id": 1, "ok": false, "error": {"code":
//! "not_found", "message": "..."}}`). [`dispatch`] knows nothing of the
//! transport, so an HTTP transport can reuse it. The socket is created in the
//! state directory with mode 0600. [`call`] is the client side the CLI uses.
//!
//! Methods: `status`, `jobs.list`, `jobs.add {name, spec}`, `jobs.remove
//! {name}`, `jobs.pause {name}`, `jobs.resume {name}`, `trigger {name,
//! input?}`, `runs.list {limit?, status?}`, `runs.show {run_id}`, `cancel
//! {run_id}`, `shutdown`.

use super::{Daemon, DaemonError, jobs::JobSpec};
use crate::store::RunState;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The longest request line accepted.
const MAX_LINE: usize = 1024 * 1024;

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
    serde_json::from_value(params).map_err(|e| DaemonError::new("invalid", format!("{method}: bad params: {e}")))
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
            error: Some(ErrorBody { code: e.code.to_owned(), message: e.message }),
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
            let Trigger { name, input } = params(method, request.params)?;
            let run_id = daemon.trigger(&name, input)?;
            Ok(json!({ "name": name, "run_id": run_id }))
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
                    RunState::parse(&text)
                        .ok_or_else(|| DaemonError::new("invalid", format!("runs.list: unknown status {text:?}")))?,
                ),
                None => None,
            };
            value(&daemon.store().list_runs(status, limit.unwrap_or(20).min(1000))?)
        }
        "runs.show" => {
            let RunId { run_id } = params(method, request.params)?;
            match daemon.store().run(&run_id)? {
                Some(run) => value(&run),
                None => Err(DaemonError::new("not_found", format!("no run {run_id}"))),
            }
        }
        "shutdown" => {
            daemon.stop();
            Ok(json!({ "stopping": true }))
        }
        other => Err(DaemonError::new("invalid", format!("unknown method {other:?}"))),
    }
}

fn value<T: Serialize>(v: &T) -> Result<Value, DaemonError> {
    serde_json::to_value(v).map_err(|e| DaemonError::new("internal", e.to_string()))
}

/// Binds the control socket at `path` (mode 0600), replacing a stale one.
pub fn listen(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // The daemon holds the state directory's lock, so a socket file here is
    // left over from a daemon that did not stop cleanly.
    let _ = std::fs::remove_file(path);
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves clients until the task is dropped.
pub async fn serve(daemon: Arc<Daemon>, listener: tokio::net::UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                super::accept_failed(e).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read);
            let mut line = String::new();
            loop {
                line.clear();
                match (&mut lines).take(MAX_LINE as u64).read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let too_long = !line.ends_with('\n') && line.len() >= MAX_LINE;
                let parsed = if too_long {
                    Err(format!("request line longer than {MAX_LINE} bytes"))
                } else {
                    serde_json::from_str::<Request>(line.trim_end()).map_err(|e| e.to_string())
                };
                let response = match parsed {
                    Ok(request) => dispatch(&daemon, request),
                    Err(e) => Response {
                        id: Value::Null,
                        ok: false,
                        result: None,
                        error: Some(ErrorBody {
                            code: "invalid".to_owned(),
                            message: format!("not a request line: {e}"),
                        }),
                    },
                };
                let mut text = serde_json::to_string(&response).expect("responses serialise");
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() || too_long {
                    return;
                }
            }
        });
    }
}

/// Why a client call failed before the daemon answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no wfrun daemon is running for state directory {dir} (start one with `wfrun daemon`, or point at its state directory with --state-dir)"
    )]
    NotRunning {
        /// The state directory.
        dir: String,
    },
    /// The connection broke or the answer was not a response.
    #[error("talking to the daemon at {socket}: {reason}")]
    Broken {
        /// The socket.
        socket: String,
        /// What went wrong.
        reason: String,
    },
}

/// Sends one request to the daemon of `state_dir` and returns its response.
pub fn call(state_dir: &Path, method: &str, params: Value) -> Result<Response, ClientError> {
    let socket = state_dir.join(super::SOCKET_NAME);
    let broken = |reason: String| ClientError::Broken { socket: socket.display().to_string(), reason };
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(ClientError::NotRunning { dir: state_dir.display().to_string() });
        }
        Err(e) => return Err(broken(e.to_string())),
    };
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| broken(e.to_string()))?;
    let request = Request { id: json!(1), method: method.to_owned(), params };
    let mut line = serde_json::to_string(&request).expect("requests serialise");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(|e| broken(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(|e| broken(e.to_string()))?;
    serde_json::from_str(&answer).map_err(|e| broken(format!("not a response ({e}): {answer:?}")))
}
