//! The control plane's client: one [`Request`] in, one [`Response`] out,
//! over the local daemon's socket or a remote daemon's HTTP control API
//! (`POST /v1/rpc`, a bearer token, TLS verified against the webpki roots
//! and an optional CA file). Both transports carry the same requests and
//! answers, so a command cannot tell them apart.

use super::{ClientError, Request, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest answer read from a remote daemon (a run's logs may be large).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// How long connecting (with the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one remote request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the daemon is.
#[derive(Debug)]
pub enum Endpoint {
    /// The daemon of this state directory, through its socket.
    Local(PathBuf),
    /// A daemon's control API.
    Remote(Remote),
}

/// A remote daemon's control API and how to reach it.
pub struct Remote {
    /// `http(s)://HOST:PORT`, the control listener.
    pub url: http::Uri,
    token: String,
    tls: tokio_rustls::TlsConnector,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Why a remote endpoint cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL is not `http(s)://HOST[:PORT]`.
    #[error("remote {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A remote daemon needs a token.
    #[error("remote {url}: no token file (give --token-file FILE, WFRUN_TOKEN_FILE, or token_file in the profile)")]
    NoToken {
        /// The URL.
        url: String,
    },
    /// The token or CA file cannot be used.
    #[error("{what} {path}: {reason}")]
    File {
        /// `token file` or `CA file`.
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl Remote {
    /// A remote daemon at `url`, authorised by the token in `token_file`;
    /// `ca_file` (PEM) adds certificates to trust beside the webpki roots.
    pub fn new(url: &str, token_file: Option<&Path>, ca_file: Option<&Path>) -> Result<Remote, EndpointError> {
        let bad = |reason: &str| EndpointError::BadUrl { url: url.to_owned(), reason: reason.to_owned() };
        let uri: http::Uri =
            url.trim_end_matches('/').parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad("the scheme must be https (or http to a loopback address)"));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        let loopback = {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
            host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        };
        if uri.scheme_str() == Some("http") && !loopback {
            return Err(bad("plain http only to a loopback address: the token would cross the network readable"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
            return Err(bad("give the listener only, without a path (e.g. https://10.0.0.5:8788)"));
        }
        let token_file = token_file.ok_or_else(|| EndpointError::NoToken { url: url.to_owned() })?;
        let file_error =
            |what, path: &Path, reason: String| EndpointError::File { what, path: path.display().to_string(), reason };
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| file_error("token file", token_file, e.to_string()))?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(file_error("token file", token_file, "it is empty".to_owned()));
        }
        let mut extra = Vec::new();
        if let Some(ca_file) = ca_file {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            extra = CertificateDer::pem_file_iter(ca_file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error("CA file", ca_file, e.to_string()))?;
            if extra.is_empty() {
                return Err(file_error("CA file", ca_file, "no certificate in it".to_owned()));
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(&format!("no runtime for the client: {e}")))?;
        let tls = crate::egress::client::tls_connector_trusting(extra);
        Ok(Remote { url: uri, token, tls, runtime })
    }

    fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let rpc: http::Uri = format!("{}/v1/rpc", self.url.to_string().trim_end_matches('/'))
            .parse()
            .expect("a checked URL with a path is a URL");
        let broken = |reason: String| ClientError::Broken { socket: self.url.to_string(), reason };
        let body = Bytes::from(serde_json::to_vec(request).expect("requests serialise"));
        let headers = [
            (http::header::AUTHORIZATION, format!("Bearer {}", self.token)),
            (http::header::CONTENT_TYPE, "application/json".to_owned()),
        ];
        let exchange = crate::egress::exchange::exchange_with(
            &self.tls,
            http::Method::POST,
            &rpc,
            &headers,
            body,
            CONNECT_TIMEOUT,
            MAX_ANSWER,
        );
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, exchange).await })
            .map_err(|_| broken(format!("no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| match &e {
                crate::egress::exchange::ExchangeError::Failed { what: "connect", .. } => {
                    ClientError::Unreachable { url: self.url.to_string(), reason: e.to_string() }
                }
                _ => broken(e.to_string()),
            })?;
        if answer.status == http::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized { url: self.url.to_string() });
        }
        serde_json::from_slice::<Response>(&answer.body).map_err(|e| {
            let text = String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)]).into_owned();
            broken(format!("HTTP {}: not a control response ({e}): {text:?}", answer.status))
        })
    }
}

impl Endpoint {
    /// Sends `method` with `params` and returns the daemon's response.
    pub fn call(&self, method: &str, params: Value) -> Result<Response, ClientError> {
        match self {
            Endpoint::Local(state_dir) => super::call(state_dir, method, params),
            Endpoint::Remote(remote) => remote.call(&Request { id: json!(1), method: method.to_owned(), params }),
        }
    }
}
