//! The daemon's HTTP listeners: webhooks and the control API.
//!
//! **Webhooks** (`[webhook]`): `POST /hooks/JOB` starts a webhook job with
//! the request body as its input. The body is capped (`max_body`, 1 MiB by
//! default) and must be JSON. A job with a `webhook_secret` accepts only
//! requests whose `X-Wfrun-Signature` header is `sha256=<hex HMAC-SHA256 of
//! the body>`, compared in constant time. Answers are JSON: 202 with the run
//! id, or 4xx/5xx with a code and a message.
//!
//! **Control API** (`[control_http]`): `POST /v1/rpc` with one control
//! [`Request`](super::Request) as the body answers one
//! [`Response`](super::Response), through the same dispatcher as the
//! Unix socket. Every request needs `Authorization: Bearer <token>`
//! (compared in constant time).
//!
//! Both listen on loopback unless configured otherwise, and no connection
//! may last more than a minute.

use super::super::scheduler::Source;
use crate::daemon::{Daemon, DaemonError};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use sha2::Sha256;
use std::sync::Arc;
use wasmtime_wasi_http::io::TokioIo;

/// The header carrying a webhook's signature.
pub const SIGNATURE_HEADER: &str = "x-wfrun-signature";

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `POST /hooks/JOB`.
    Webhooks,
    /// `POST /v1/rpc`.
    Control,
}

/// Accepts connections until the task is dropped.
pub async fn serve(daemon: Arc<Daemon>, listener: tokio::net::TcpListener, routes: Routes) {
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
            let service = hyper::service::service_fn(move |request| {
                let daemon = daemon.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(match routes {
                        Routes::Webhooks => handle(&daemon, request).await,
                        Routes::Control => control(&daemon, request).await,
                    })
                }
            });
            // No connection may hold a task for long (a client that sends
            // its request slowly, or never finishes it).
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), connection).await;
        });
    }
}

/// Reads at most `max` bytes of body. A larger body is read to its end (up
/// to a bound) and refused with 413, so the client gets the answer rather
/// than a reset connection.
async fn read_body(mut body: hyper::body::Incoming, max: u64) -> Result<Vec<u8>, Response<Full<Bytes>>> {
    const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;
    let mut bytes = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| refuse(StatusCode::BAD_REQUEST, "invalid", format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len() as u64);
        if seen <= max {
            bytes.extend_from_slice(&data);
        } else if seen > max.saturating_add(DRAIN_LIMIT) {
            break;
        }
    }
    if seen > max {
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "invalid", format!("the body is larger than {max} bytes")));
    }
    Ok(bytes)
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Full<Bytes>> {
    answer(status, json!({ "ok": false, "error": { "code": code, "message": message.into() } }))
}

/// `POST /v1/rpc`: one control request, authorised by the bearer token.
async fn control(daemon: &Arc<Daemon>, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = read_body(body, 1024 * 1024).await;
    let Some(token) = daemon.control_token() else {
        return refuse(StatusCode::NOT_FOUND, "not_found", "the control API is not enabled");
    };
    let given = parts.headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let given = given.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return refuse(StatusCode::UNAUTHORIZED, "unauthorized", "send Authorization: Bearer <token>");
    }
    if parts.uri.path() != "/v1/rpc" {
        return refuse(StatusCode::NOT_FOUND, "not_found", "the control API is POST /v1/rpc");
    }
    if parts.method != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "invalid", "the control API takes POST");
    }
    let body = match body {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request: super::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "invalid", format!("not a control request: {e}")),
    };
    let response = super::dispatch(daemon, request);
    let status = if response.ok { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    answer(status, serde_json::to_value(&response).unwrap_or_default())
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(daemon: &Arc<Daemon>, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    // Read (or drain) the body before answering anything, so that even a
    // refusal reaches the client instead of a reset connection.
    let max = daemon.config.webhook_max_body;
    let body = read_body(body, max).await;
    let Some(name) = parts.uri.path().strip_prefix("/hooks/").map(str::to_owned) else {
        return refuse(StatusCode::NOT_FOUND, "not_found", "webhooks are POST /hooks/JOB");
    };
    if parts.method != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "invalid", "webhooks take POST");
    }
    let spec = match daemon.webhook_job(&name) {
        Ok(spec) => spec,
        Err(e) => return refuse(StatusCode::NOT_FOUND, e.code(), e.to_string()),
    };
    let body = match body {
        Ok(body) => body,
        Err(response) => return response,
    };
    let signature = parts.headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(secret) = &spec.webhook_secret {
        let key = hex::decode(secret).unwrap_or_default();
        let given = signature.as_deref().and_then(|s| s.strip_prefix("sha256=")).and_then(|h| hex::decode(h).ok());
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(&body);
        // verify_slice compares in constant time.
        if given.is_none_or(|given| mac.verify_slice(&given).is_err()) {
            tracing::warn!("webhook for job {name}: missing or bad signature; refused");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                format!("{SIGNATURE_HEADER} must be sha256=<hex HMAC-SHA256 of the body> with the job's secret"),
            );
        }
    }
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => Some(text),
            Err(_) => return refuse(StatusCode::BAD_REQUEST, "invalid", "the body is not UTF-8 JSON"),
        }
    };
    match daemon.trigger(&name, input, Source::Webhook) {
        Ok(run_id) => answer(StatusCode::ACCEPTED, json!({ "ok": true, "job": name, "run_id": run_id })),
        Err(e) => {
            let status = match &e {
                DaemonError::InvalidJob(_) | DaemonError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
                DaemonError::Busy { .. } | DaemonError::Paused { .. } => StatusCode::CONFLICT,
                DaemonError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                DaemonError::JobNotFound { .. }
                | DaemonError::NotAWebhook { .. }
                | DaemonError::RunNotFound { .. }
                | DaemonError::RunNotRunning { .. } => StatusCode::NOT_FOUND,
                DaemonError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            refuse(status, e.code(), e.to_string())
        }
    }
}
