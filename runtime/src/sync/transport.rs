//! How the TUF client reaches the release origin: plain HTTP/1.1 GETs over
//! hyper (rustls with the webpki roots for `https://`), each bounded in
//! time and in bytes.
//!
//! A response longer than the length the client allows (the signed length
//! of a target, a role's cap for metadata) is cut and refused, however the
//! server frames it: an endless or slow body cannot hold the device.
//! 404 and 403 mean "not there" (the end of the root chain).

use sigstore_tuf::transport::FetchFuture;
use std::time::Duration;

/// How long each step of a fetch may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Resolving and connecting (and the TLS handshake).
    pub connect: Duration,
    /// The whole request, first byte to last.
    pub transfer: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(10), transfer: Duration::from_secs(120) }
    }
}

/// A release origin: where its metadata and its targets are served.
#[derive(Debug, Clone)]
pub struct Origin {
    metadata: http::Uri,
    targets: http::Uri,
    timeouts: Timeouts,
}

/// Why an origin URL is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("release origin {url:?}: {reason}")]
pub struct OriginError {
    /// The URL as given.
    pub url: String,
    /// What is wrong.
    pub reason: String,
}

fn base(url: &str, sub: &str) -> Result<http::Uri, OriginError> {
    let bad = |reason: &str| OriginError { url: url.to_owned(), reason: reason.to_owned() };
    let joined = match sub {
        "" => format!("{}/", url.trim_end_matches('/')),
        sub => format!("{}/{sub}/", url.trim_end_matches('/')),
    };
    let uri: http::Uri = joined.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("the origin must be http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

impl Origin {
    /// The origin at `url`, serving `URL/metadata/` and `URL/targets/` (as
    /// `wfrun release` lays a repository out).
    pub fn new(url: &str, timeouts: Timeouts) -> Result<Origin, OriginError> {
        Ok(Origin { metadata: base(url, "metadata")?, targets: base(url, "targets")?, timeouts })
    }

    /// An origin whose metadata and targets are at two URLs of their own.
    pub fn with_urls(metadata: &str, targets: &str, timeouts: Timeouts) -> Result<Origin, OriginError> {
        Ok(Origin { metadata: base(metadata, "")?, targets: base(targets, "")?, timeouts })
    }

    async fn get(&self, base: &http::Uri, name: &str, max_length: u64) -> sigstore_tuf::Result<Option<Vec<u8>>> {
        if name.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(sigstore_tuf::Error::transport(format!("refusing the path {name:?}")));
        }
        let url: http::Uri = format!("{base}{name}")
            .parse()
            .map_err(|_| sigstore_tuf::Error::transport(format!("{name:?} does not make a URL")))?;
        let fetch = fetch(&url, max_length, self.timeouts.connect);
        match tokio::time::timeout(self.timeouts.transfer, fetch).await {
            Ok(result) => result,
            Err(_) => Err(sigstore_tuf::Error::transport(format!(
                "{url}: no complete answer within {:?}",
                self.timeouts.transfer
            ))),
        }
    }
}

impl sigstore_tuf::Repository for Origin {
    fn fetch_metadata<'a>(&'a self, name: &'a str, max_length: u64) -> FetchFuture<'a> {
        Box::pin(async move {
            let bytes = self.get(&self.metadata, name, max_length).await?;
            let root = bytes.as_deref().filter(|_| name.ends_with("root.json"));
            if let Some(duplicate) = root.and_then(duplicate_key) {
                return Err(sigstore_tuf::Error::Malformed(format!("{name}: {duplicate}")));
            }
            Ok(bytes)
        })
    }

    fn fetch_target<'a>(&'a self, path: &'a str, max_length: u64) -> FetchFuture<'a> {
        Box::pin(self.get(&self.targets, path, max_length))
    }
}

/// Whether a root lists one public key under two key ids: a threshold of
/// "two keys" met by one. The TUF client counts distinct key ids, so such
/// a root is refused before it reaches it.
pub fn duplicate_key(root: &[u8]) -> Option<String> {
    let root: serde_json::Value = serde_json::from_slice(root).ok()?;
    let keys = root.get("signed")?.get("keys")?.as_object()?;
    let mut seen: std::collections::BTreeMap<String, &str> = std::collections::BTreeMap::new();
    for (id, key) in keys {
        let public = key.get("keyval").and_then(|v| v.get("public")).and_then(|p| p.as_str()).unwrap_or_default();
        let identity = format!("{}/{}", key.get("keytype").and_then(|t| t.as_str()).unwrap_or_default(), public);
        if let Some(other) = seen.insert(identity, id) {
            return Some(format!("key ids {other} and {id} are the same key"));
        }
    }
    None
}

async fn fetch(url: &http::Uri, max_length: u64, connect_timeout: Duration) -> sigstore_tuf::Result<Option<Vec<u8>>> {
    use crate::egress::exchange::{ExchangeError, exchange};
    let answer = exchange(http::Method::GET, url, &[], bytes::Bytes::new(), connect_timeout, max_length).await;
    let answer = answer.map_err(|e| match e {
        ExchangeError::TooLong { .. } => sigstore_tuf::Error::transport(format!("too long: {e}")),
        ExchangeError::Failed { .. } => sigstore_tuf::Error::transport(e.to_string()),
    })?;
    if answer.status == http::StatusCode::NOT_FOUND || answer.status == http::StatusCode::FORBIDDEN {
        return Ok(None);
    }
    if !answer.status.is_success() {
        return Err(sigstore_tuf::Error::transport(format!("{url}: answer: {}", answer.status)));
    }
    Ok(Some(answer.body))
}
