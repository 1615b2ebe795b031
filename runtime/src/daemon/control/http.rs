//! The daemon's HTTP listeners: webhooks and the control API.
//!
//! **Webhooks** (`[webhook]`): `POST /hooks/JOB` starts a webhook job with
//! the request body as its input. The body is capped (`max_body`, 1 MiB by
//! default) and must be JSON. A job with a `webhook_secret` accepts only
//! signed requests: `X-Wfrun-Timestamp` (Unix seconds, within five minutes
//! of the daemon's clock), `X-Wfrun-Delivery` (an id unique per request)
//! and `X-Wfrun-Signature: sha256=<hex HMAC-SHA256>` over
//! `v1:{timestamp}:{delivery}:{body}`, compared in constant time. A
//! delivery id seen within the window is refused as a replay. A job without
//! a secret refuses what a web page could send: a request with an `Origin`
//! header (a browser's), or whose `Host` is not a loopback name or the
//! listen address (DNS rebinding). Answers are JSON: 202 with the run id,
//! or 4xx/5xx with a code and a message.
//!
//! **Control API** (`[control_http]`): `POST /v1/rpc` with one control
//! [`Request`](super::Request) as the body answers one
//! [`Response`](super::Response), through the same dispatcher as the
//! Unix socket. Every request needs `Authorization: Bearer <token>`
//! (compared in constant time), checked before any of the body is read.
//! `GET /metrics` on the same listener, behind the same token, answers the
//! daemon's metrics ([`crate::daemon::metrics`]) in the OpenMetrics text
//! format. With `tls_cert` and `tls_key`, the listener speaks TLS only.
//!
//! Both listen on loopback unless configured otherwise. No connection may
//! last more than 30 s, and each listener holds at most
//! [`connection_capacity`](crate::descriptors::connection_capacity) connections at once (a quarter of the descriptor
//! limit): a flood of idle connections costs the attacker the listener,
//! never the descriptors the daemon's runs need.

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

/// The largest control request body.
const MAX_CONTROL_BODY: u64 = 1024 * 1024;

/// The header carrying a webhook's signature.
pub const SIGNATURE_HEADER: &str = "x-wfrun-signature";
/// The header carrying a signed webhook's time (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-wfrun-timestamp";
/// The header carrying a signed webhook's delivery id.
pub const DELIVERY_HEADER: &str = "x-wfrun-delivery";
/// How far a signed webhook's timestamp may be from the daemon's clock.
pub const SIGNATURE_TOLERANCE_S: u64 = 300;
/// The most delivery ids remembered at once (each for the tolerance window,
/// twice over).
const MAX_DELIVERIES: usize = 100_000;

/// The bytes a webhook signature covers.
pub fn signed_message(timestamp: &str, delivery: &str, body: &[u8]) -> Vec<u8> {
    let mut message = format!("v1:{timestamp}:{delivery}:").into_bytes();
    message.extend_from_slice(body);
    message
}

/// The delivery ids of signed webhooks accepted within the window, by job.
#[derive(Debug, Default)]
struct Deliveries {
    /// (job, delivery id) → when it may be forgotten (Unix seconds).
    seen: std::collections::HashMap<(String, String), u64>,
}

impl Deliveries {
    /// Records a delivery; false if it was seen (a replay) or the table is
    /// full of live ids.
    fn admit(&mut self, job: &str, delivery: &str, now: u64) -> Result<(), &'static str> {
        let key = (job.to_owned(), delivery.to_owned());
        if self.seen.get(&key).is_some_and(|until| *until > now) {
            return Err("replayed");
        }
        if self.seen.len() >= MAX_DELIVERIES {
            self.seen.retain(|_, until| *until > now);
            if self.seen.len() >= MAX_DELIVERIES {
                return Err("busy");
            }
        }
        self.seen.insert(key, now + 2 * SIGNATURE_TOLERANCE_S);
        Ok(())
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `POST /hooks/JOB`.
    Webhooks,
    /// `POST /v1/rpc`.
    Control,
}

/// Accepts connections until the task is dropped. Past
/// [`connection_capacity`](crate::descriptors::connection_capacity) open connections, a new one is closed at once.
pub async fn serve(daemon: Arc<Daemon>, listener: tokio::net::TcpListener, routes: Routes) {
    let mut capped = crate::descriptors::Capped::new(match routes {
        Routes::Webhooks => "webhook",
        Routes::Control => "control",
    });
    let deliveries = Arc::new(std::sync::Mutex::new(Deliveries::default()));
    let listen = listener.local_addr().ok();
    if routes == Routes::Webhooks {
        for job in daemon.jobs.all() {
            if job.spec.trigger == crate::manifest::Trigger::Webhook && job.spec.webhook_secret.is_none() {
                tracing::warn!(
                    "webhook job {} has no webhook_secret: any local process can trigger it (web pages cannot: \
                     requests with an Origin header or a foreign Host are refused)",
                    job.name
                );
            }
        }
    }
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::daemon::accept_failed(e).await;
                continue;
            }
        };
        let Some(permit) = capped.admit() else {
            drop(stream);
            continue;
        };
        let daemon = daemon.clone();
        let deliveries = deliveries.clone();
        let tls = if routes == Routes::Control { daemon.control_tls.clone() } else { None };
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let daemon = daemon.clone();
                let deliveries = deliveries.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(match routes {
                        Routes::Webhooks => handle(&daemon, request, &deliveries, listen).await,
                        Routes::Control => control(&daemon, request).await,
                    })
                }
            });
            // No connection may hold a task for long (a client that sends
            // its request slowly, or never finishes it, or stalls the TLS
            // handshake).
            let http = hyper::server::conn::http1::Builder::new().keep_alive(false).clone();
            let connection = async move {
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), connection).await;
        });
    }
}

/// The control API's TLS from its PEM files: the certificate chain and
/// the private key, checked to match.
pub fn tls_acceptor(files: &crate::daemon::config::TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| anyhow::anyhow!("control_http.tls_cert {}: {e}", files.cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "control_http.tls_cert {}: no certificate in the file", files.cert.display());
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("control_http.tls_key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "control_http: the key {} does not go with the certificate {}: {e}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
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
    // The token before the body: an unauthenticated caller gets its 401
    // without a byte of its body read or buffered.
    let (parts, body) = request.into_parts();
    let Some(token) = daemon.control_token() else {
        return refuse(StatusCode::NOT_FOUND, "not_found", "the control API is not enabled");
    };
    let given = parts.headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let given = given.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return refuse(StatusCode::UNAUTHORIZED, "unauthorized", "send Authorization: Bearer <token>");
    }
    if parts.uri.path() == "/metrics" {
        if parts.method != Method::GET {
            return refuse(StatusCode::METHOD_NOT_ALLOWED, "invalid", "/metrics takes GET");
        }
        return match daemon.metrics_text() {
            Ok(text) => Response::builder()
                .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                .body(Full::new(Bytes::from(text)))
                .expect("a valid response"),
            Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        };
    }
    if parts.uri.path() != "/v1/rpc" {
        return refuse(StatusCode::NOT_FOUND, "not_found", "the control API is POST /v1/rpc");
    }
    if parts.method != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "invalid", "the control API takes POST");
    }
    let body = match read_body(body, MAX_CONTROL_BODY).await {
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

/// Whether a request's `Host` names this listener: a loopback name or
/// address, or the listen address, with any port.
fn host_is_ours(host: Option<&str>, listen: Option<std::net::SocketAddr>) -> bool {
    let Some(host) = host else { return false };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || listen.is_some_and(|l| l.ip() == ip))
}

async fn handle(
    daemon: &Arc<Daemon>,
    request: Request<hyper::body::Incoming>,
    deliveries: &std::sync::Mutex<Deliveries>,
    listen: Option<std::net::SocketAddr>,
) -> Response<Full<Bytes>> {
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
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(secret) = &spec.webhook_secret {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let timestamp = header(TIMESTAMP_HEADER).unwrap_or_default();
        let fresh = timestamp.parse::<u64>().is_ok_and(|t| t.abs_diff(now) <= SIGNATURE_TOLERANCE_S);
        if !fresh {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "stale_signature",
                format!(
                    "{TIMESTAMP_HEADER} must be the Unix time, within {SIGNATURE_TOLERANCE_S} s of the daemon's clock"
                ),
            );
        }
        let delivery = header(DELIVERY_HEADER).unwrap_or_default();
        let delivery_ok = (1..=128).contains(&delivery.len())
            && delivery.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        let key = hex::decode(secret).unwrap_or_default();
        let given = header(SIGNATURE_HEADER);
        let given = given.as_deref().and_then(|s| s.strip_prefix("sha256=")).and_then(|h| hex::decode(h).ok());
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(&signed_message(&timestamp, &delivery, &body));
        // verify_slice compares in constant time.
        if !delivery_ok || given.is_none_or(|given| mac.verify_slice(&given).is_err()) {
            tracing::warn!("webhook for job {name}: missing or bad signature; refused");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                format!(
                    "{SIGNATURE_HEADER} must be sha256=<hex HMAC-SHA256 of v1:TIMESTAMP:DELIVERY:BODY> with the \
                     job's secret, and {DELIVERY_HEADER} 1 to 128 characters of [A-Za-z0-9-_.:]"
                ),
            );
        }
        if let Err(why) = deliveries.lock().unwrap().admit(&name, &delivery, now) {
            tracing::warn!("webhook for job {name}: delivery {delivery} {why}; refused");
            let status = if why == "replayed" { StatusCode::CONFLICT } else { StatusCode::TOO_MANY_REQUESTS };
            return refuse(status, why, format!("delivery {delivery}: {why}"));
        }
    } else {
        // No secret: refuse what a web page can make a browser send.
        if parts.headers.contains_key(hyper::header::ORIGIN) {
            return refuse(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "a job without a webhook_secret takes no browser requests",
            );
        }
        if !host_is_ours(header("host").as_deref(), listen) {
            return refuse(StatusCode::FORBIDDEN, "bad_host", "the Host header must name this listener");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_taken_once_per_job_within_the_window() {
        let mut deliveries = Deliveries::default();
        assert_eq!(deliveries.admit("hook", "d1", 1000), Ok(()));
        assert_eq!(deliveries.admit("hook", "d1", 1100), Err("replayed"));
        assert_eq!(deliveries.admit("other", "d1", 1100), Ok(()), "ids are per job");
        assert_eq!(deliveries.admit("hook", "d1", 1000 + 2 * SIGNATURE_TOLERANCE_S + 1), Ok(()), "forgotten after");
    }

    #[test]
    fn only_loopback_names_and_the_listen_address_are_our_host() {
        let listen = Some("10.0.0.5:8787".parse().unwrap());
        for ours in ["127.0.0.1:8787", "localhost:8787", "LOCALHOST", "[::1]:8787", "10.0.0.5:8787", "127.0.0.2"] {
            assert!(host_is_ours(Some(ours), listen), "{ours}");
        }
        for theirs in ["evil.example:8787", "10.0.0.6:8787", "127.0.0.1.evil.example", "", "[::2]:1"] {
            assert!(!host_is_ours(Some(theirs), listen), "{theirs}");
        }
        assert!(!host_is_ours(None, listen));
    }
}
