//! The host's own HTTP requests (to the release origin, to the report
//! receiver): one HTTP/1.1 exchange over plain TCP or rustls with the
//! webpki roots, with a connect timeout and a cap on the answer's body
//! however the server frames it. Guests never come here; their requests go
//! through [`super::client`] under the egress policy.

use super::client::{Stream, tls_connector};
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;

/// An answer: its status, headers and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: http::StatusCode,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body, whole.
    pub body: Vec<u8>,
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The answer's body is longer than allowed.
    #[error("{url}: the answer is longer than the {max} bytes allowed")]
    TooLong {
        /// The URL.
        url: String,
        /// The cap.
        max: u64,
    },
    /// Connecting, TLS, or HTTP failed.
    #[error("{url}: {what}: {reason}")]
    Failed {
        /// The URL.
        url: String,
        /// The step.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Sends `method url` with `headers` and `body`; reads an answer of at
/// most `max_answer` body bytes. Connecting (with the TLS handshake) may
/// take `connect_timeout`; the caller bounds the whole exchange.
pub async fn exchange(
    method: http::Method,
    url: &http::Uri,
    headers: &[(http::HeaderName, String)],
    body: Bytes,
    connect_timeout: Duration,
    max_answer: u64,
) -> Result<Answer, ExchangeError> {
    exchange_with(&tls_connector(), method, url, headers, body, connect_timeout, max_answer).await
}

/// [`exchange`], with `tls` verifying an `https` server (e.g.
/// [`tls_connector_trusting`](super::client::tls_connector_trusting) a
/// private CA's certificate).
pub async fn exchange_with(
    tls: &tokio_rustls::TlsConnector,
    method: http::Method,
    url: &http::Uri,
    headers: &[(http::HeaderName, String)],
    body: Bytes,
    connect_timeout: Duration,
    max_answer: u64,
) -> Result<Answer, ExchangeError> {
    let failed = |what: &'static str, e: &dyn std::fmt::Display| ExchangeError::Failed {
        url: url.to_string(),
        what,
        reason: e.to_string(),
    };
    let host = url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let connect = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| failed("connect", &e))?;
        if !https {
            return Ok(Stream::Plain(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| failed("TLS name", &e))?;
        let tls = tls.connect(name, tcp).await.map_err(|e| failed("TLS", &e))?;
        Ok::<_, ExchangeError>(Stream::Tls(Box::new(tls)))
    };
    let stream = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| failed("connect", &format!("no connection within {connect_timeout:?}")))??;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| failed("HTTP", &e))?;
    let driver = tokio::spawn(connection);
    let authority = url.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let mut request = http::Request::builder()
        .method(method)
        .uri(url.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, concat!("wfrun/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request.body(http_body_util::Full::new(body)).map_err(|e| failed("request", &e))?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| failed("request", &e))?;
        let (parts, mut body) = response.into_parts();
        let declared: Option<u64> =
            parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        let too_long = || ExchangeError::TooLong { url: url.to_string(), max: max_answer };
        if declared.is_some_and(|length| length > max_answer) {
            return Err(too_long());
        }
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| failed("body", &e))?;
            if let Ok(mut data) = frame.into_data() {
                if bytes.len() as u64 + data.remaining() as u64 > max_answer {
                    return Err(too_long());
                }
                while data.has_remaining() {
                    let chunk = data.chunk();
                    bytes.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
        }
        Ok(Answer { status: parts.status, headers: parts.headers, body: bytes })
    }
    .await;
    driver.abort();
    result
}
