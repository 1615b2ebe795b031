//! `wfrun fleet serve`: a fleet on one machine. It serves a release
//! repository directory as static files (the release origin) and receives
//! reports and heartbeats into its own SQLite database.
//!
//! It is the reference receiver of the protocol in `docs/reports.md`:
//! - every request needs `Authorization: Bearer TOKEN`, a token of the
//!   tokens file (`DEVICE_ID=TOKEN` a line), and may only speak for that
//!   device (401 without a known token, 403 for another device's reports);
//! - `POST /runner/v1/reports` stores each report once by its
//!   `report_id`, all of a batch in one transaction: a key seen before with
//!   the same body is acknowledged again, not stored twice; the same key
//!   with another body is refused with 422 (so is a report that lacks its
//!   key or names another device), and a body over 1 MiB with 413;
//! - `POST /runner/v1/heartbeat` keeps each device's latest heartbeat;
//! - `GET /metadata/…` and `GET /targets/…` serve the repository's files
//!   (regular files only, no `..`);
//! - at most [`connection_capacity`](crate::descriptors::connection_capacity)
//!   connections are open at once, each for at most 120 s.
//!
//! A large fleet serves releases from an object store or CDN and points
//! `[report] endpoint` at any service that speaks the same protocol.

use crate::report::{Heartbeat, UploadAnswer, UploadBatch};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime_wasi_http::io::TokioIo;

/// The largest report batch accepted.
pub const MAX_BATCH: u64 = 1024 * 1024;
/// The largest heartbeat accepted.
pub const MAX_HEARTBEAT: u64 = 64 * 1024;

/// Why the receiver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A file could not be read or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The tokens file is not `DEVICE_ID=TOKEN` lines.
    #[error("tokens file {} line {line}: {reason}", path.display())]
    Tokens {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One device as the receiver knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    /// Its id.
    pub device_id: String,
    /// When it first spoke.
    pub first_seen: String,
    /// When it last spoke.
    pub last_seen: String,
    /// Reports stored from it.
    pub reports: u64,
    /// Its latest heartbeat.
    pub heartbeat: Option<serde_json::Value>,
}

/// The receiver: its database, its tokens and the repository it serves.
#[derive(Debug)]
pub struct Receiver {
    db: Mutex<Connection>,
    tokens: BTreeMap<String, String>,
    repo: Option<PathBuf>,
}

/// Reads a tokens file: `DEVICE_ID=TOKEN` a line; blank lines and `#`
/// comments skipped. Returns token → device id.
pub fn read_tokens(path: &Path) -> Result<BTreeMap<String, String>, FleetError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FleetError::File { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut tokens = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad =
            |reason: &str| FleetError::Tokens { path: path.to_path_buf(), line: index + 1, reason: reason.into() };
        let (device, token) = line.split_once('=').ok_or_else(|| bad("not DEVICE_ID=TOKEN"))?;
        let (device, token) = (device.trim(), token.trim());
        if device.is_empty() || token.len() < 16 {
            return Err(bad("a device id and a token of at least 16 characters"));
        }
        if tokens.insert(token.to_owned(), device.to_owned()).is_some() {
            return Err(bad("this token is given to another device too"));
        }
    }
    Ok(tokens)
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({"error": code, "message": message.into()}))
}

async fn read_body(mut body: hyper::body::Incoming, max: u64) -> Result<Vec<u8>, Response<Full<Bytes>>> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| refuse(StatusCode::BAD_REQUEST, "invalid", format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() as u64 + data.len() as u64 > max {
            return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("more than {max} bytes")));
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

impl Receiver {
    /// Opens (creating if needed) the receiver's database in `state_dir`.
    pub fn open(
        state_dir: &Path,
        tokens: BTreeMap<String, String>,
        repo: Option<PathBuf>,
    ) -> Result<Receiver, FleetError> {
        let file = |reason: String| FleetError::File { path: state_dir.join("fleet.db"), reason };
        crate::files::create_private_dir(state_dir)
            .map_err(|e| FleetError::File { path: state_dir.to_path_buf(), reason: e.to_string() })?;
        let db = Connection::open(state_dir.join("fleet.db")).map_err(|e| file(e.to_string()))?;
        db.busy_timeout(std::time::Duration::from_secs(30)).map_err(|e| file(e.to_string()))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS devices (
                 device_id TEXT PRIMARY KEY, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, heartbeat TEXT);
             CREATE TABLE IF NOT EXISTS reports (
                 report_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
                 body_sha256 TEXT NOT NULL, received_at TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS reports_by_device ON reports (device_id, received_at);",
        )
        .map_err(|e| file(e.to_string()))?;
        Ok(Receiver { db: Mutex::new(db), tokens, repo })
    }

    /// Serves `listener` until the task is dropped. Past
    /// [`connection_capacity`](crate::descriptors::connection_capacity) open
    /// connections, a new one is closed at once.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let mut capped = crate::descriptors::Capped::new("fleet");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let Some(permit) = capped.admit() else {
                drop(stream);
                continue;
            };
            let receiver = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |request| {
                    let receiver = receiver.clone();
                    async move { Ok::<_, std::convert::Infallible>(receiver.handle(request).await) }
                });
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(120), connection).await;
            });
        }
    }

    /// The device a request's bearer token belongs to.
    fn device(&self, request: &Request<hyper::body::Incoming>) -> Option<String> {
        let header = request.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let token = header.strip_prefix("Bearer ")?;
        // Every known token is compared, each in constant time.
        let mut found = None;
        for (known, device) in &self.tokens {
            let same = known.len() == token.len()
                && known.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                found = Some(device.clone());
            }
        }
        found
    }

    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        match (request.method(), path.as_str()) {
            (&Method::GET, p) if p.starts_with("/metadata/") || p.starts_with("/targets/") => self.file(p),
            (&Method::POST, crate::report::REPORTS_PATH) | (&Method::POST, crate::report::HEARTBEAT_PATH) => {
                // The token before the body: an unknown caller costs no read.
                let Some(device) = self.device(&request) else {
                    return refuse(StatusCode::UNAUTHORIZED, "unauthorized", "a known bearer token is required");
                };
                let heartbeat = path == crate::report::HEARTBEAT_PATH;
                let max = if heartbeat { MAX_HEARTBEAT } else { MAX_BATCH };
                let declared: Option<u64> =
                    request.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
                if declared.is_some_and(|n| n > max) {
                    return refuse(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("more than {max} bytes"));
                }
                let body = match read_body(request.into_body(), max).await {
                    Ok(body) => body,
                    Err(response) => return response,
                };
                if heartbeat { self.heartbeat(&device, &body) } else { self.reports(&device, &body) }
            }
            _ => refuse(StatusCode::NOT_FOUND, "not_found", format!("no route {path}")),
        }
    }

    fn file(&self, path: &str) -> Response<Full<Bytes>> {
        let not_found = || refuse(StatusCode::NOT_FOUND, "not_found", path.to_owned());
        let Some(repo) = &self.repo else { return not_found() };
        let relative = path.trim_start_matches('/');
        if relative.split('/').any(|part| part.is_empty() || part == "." || part == ".." || part.contains('\\')) {
            return not_found();
        }
        let file = repo.join(relative);
        match std::fs::symlink_metadata(&file) {
            Ok(meta) if meta.is_file() => match std::fs::read(&file) {
                Ok(bytes) => Response::new(Full::new(Bytes::from(bytes))),
                Err(_) => not_found(),
            },
            _ => not_found(),
        }
    }

    fn heartbeat(&self, device: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let heartbeat: Heartbeat = match serde_json::from_slice(body) {
            Ok(h) => h,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, "invalid", format!("not a heartbeat: {e}")),
        };
        if heartbeat.device_id != device {
            return refuse(StatusCode::FORBIDDEN, "wrong_device", "a token speaks only for its own device");
        }
        let at = crate::store::now();
        let db = self.db.lock().unwrap();
        let stored = db.execute(
            "INSERT INTO devices (device_id, first_seen, last_seen, heartbeat) VALUES (?1, ?2, ?2, ?3)
             ON CONFLICT (device_id) DO UPDATE SET last_seen = ?2, heartbeat = ?3",
            params![device, at, String::from_utf8_lossy(body)],
        );
        match stored {
            Ok(_) => json(StatusCode::OK, serde_json::json!({"ok": true})),
            Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, "storage", e.to_string()),
        }
    }

    fn reports(&self, device: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let batch: UploadBatch = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, "invalid", format!("not a report batch: {e}")),
        };
        if batch.device_id != device {
            return refuse(StatusCode::FORBIDDEN, "wrong_device", "a token speaks only for its own device");
        }
        let at = crate::store::now();
        let mut db = self.db.lock().unwrap();
        let outcome = (|| -> rusqlite::Result<Result<UploadAnswer, (String, String)>> {
            let tx = db.transaction()?;
            let mut answer = UploadAnswer::default();
            for report in &batch.reports {
                let id = report.get("report_id").and_then(|v| v.as_str());
                let kind = report.get("kind").and_then(|v| v.as_str()).unwrap_or("");
                let Some(id) = id.filter(|id| !id.is_empty() && id.len() <= 64) else {
                    return Ok(Err(("invalid_report".into(), "a report without its report_id".into())));
                };
                if report.get("device_id").and_then(|v| v.as_str()) != Some(device) {
                    return Ok(Err(("wrong_device".into(), format!("report {id} names another device"))));
                }
                let text = report.to_string();
                let hash = hex::encode(sha2::Sha256::digest(text.as_bytes()));
                let seen: Option<String> = tx
                    .query_row("SELECT body_sha256 FROM reports WHERE report_id = ?1", params![id], |r| r.get(0))
                    .optional()?;
                match seen {
                    Some(same) if same == hash => answer.duplicates += 1,
                    Some(_) => {
                        return Ok(Err((
                            "key_reused".into(),
                            format!("report {id} was stored before with another body"),
                        )));
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO reports (report_id, device_id, kind, body, body_sha256, received_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![id, device, kind, text, hash, at],
                        )?;
                        answer.accepted += 1;
                    }
                }
            }
            tx.execute(
                "INSERT INTO devices (device_id, first_seen, last_seen) VALUES (?1, ?2, ?2)
                 ON CONFLICT (device_id) DO UPDATE SET last_seen = ?2",
                params![device, at],
            )?;
            tx.commit()?;
            Ok(Ok(answer))
        })();
        match outcome {
            Ok(Ok(answer)) => json(StatusCode::OK, serde_json::to_value(answer).expect("serialises")),
            Ok(Err((code, message))) => refuse(StatusCode::UNPROCESSABLE_ENTITY, &code, message),
            Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, "storage", e.to_string()),
        }
    }

    /// Every device, with its report count and latest heartbeat.
    pub fn devices(&self) -> rusqlite::Result<Vec<DeviceRow>> {
        let db = self.db.lock().unwrap();
        let mut stmt = db.prepare(
            "SELECT d.device_id, d.first_seen, d.last_seen, d.heartbeat,
                    (SELECT COUNT(*) FROM reports r WHERE r.device_id = d.device_id)
             FROM devices d ORDER BY d.device_id",
        )?;
        stmt.query_map([], |r| {
            let heartbeat: Option<String> = r.get(3)?;
            Ok(DeviceRow {
                device_id: r.get(0)?,
                first_seen: r.get(1)?,
                last_seen: r.get(2)?,
                heartbeat: heartbeat.and_then(|h| serde_json::from_str(&h).ok()),
                reports: r.get::<_, i64>(4)? as u64,
            })
        })?
        .collect()
    }

    /// Reports, oldest first (by arrival), optionally of one device.
    pub fn reports_of(&self, device: Option<&str>, limit: usize) -> rusqlite::Result<Vec<serde_json::Value>> {
        let db = self.db.lock().unwrap();
        let mut stmt = db.prepare(
            "SELECT body FROM reports WHERE (?1 IS NULL OR device_id = ?1) ORDER BY received_at, rowid LIMIT ?2",
        )?;
        stmt.query_map(params![device, limit as i64], |r| r.get::<_, String>(0))?
            .map(|body| body.map(|b| serde_json::from_str(&b).unwrap_or(serde_json::Value::Null)))
            .collect()
    }
}
