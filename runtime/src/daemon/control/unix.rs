//! The control plane's Unix transport: JSON lines over the state
//! directory's socket, mode 0600, and the client the CLI uses.

use super::{ErrorBody, Request, Response, dispatch};
use crate::daemon::Daemon;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The longest request line accepted.
const MAX_LINE: usize = 1024 * 1024;

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
                crate::daemon::accept_failed(e).await;
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
                            detail: None,
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
    /// A remote daemon cannot be reached.
    #[error("no wfrun daemon answers at {url}: {reason}")]
    Unreachable {
        /// The control API's URL.
        url: String,
        /// Why not.
        reason: String,
    },
    /// A remote daemon refused the token.
    #[error("the daemon at {url} refused the token (401): check --token-file against its control token")]
    Unauthorized {
        /// The control API's URL.
        url: String,
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
    let socket = state_dir.join(crate::daemon::SOCKET_NAME);
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
