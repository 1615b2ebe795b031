//! Outgoing HTTP over `wasi:http`, for nodes the operator grants egress.
//!
//! ```ignore
//! let zen = wfrun_sdk::http::get("https://api.github.com/zen")?.text()?.to_owned();
//! let created: Value = wfrun_sdk::http::post_json("https://api.example.com/items", &json!({"n": 1}))?.json()?;
//! ```
//!
//! Every request goes through the host's egress policy: a request it refuses
//! fails with [`HttpError::Denied`] (and the run records the refusal). The
//! host never follows redirects; these helpers do, up to
//! [`Request::DEFAULT_MAX_REDIRECTS`] hops, each hop a new request that the
//! policy checks again, so a redirect cannot lead anywhere a request could
//! not go. A redirect never downgrades https to http, and one to another
//! host drops the `Authorization`, `Cookie` and `Proxy-Authorization`
//! headers. Failures convert into a [`NodeError`](crate::NodeError) with
//! `?`; transport failures are marked retryable.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{self, ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not `http(s)://host[:port][/path][?query]`.
    InvalidUrl(String),
    /// The host's egress policy refused the request (or a redirect hop).
    Denied(String),
    /// Connecting, sending or receiving failed.
    Transport(String),
    /// The response went past the host's size limit.
    BodyTooLarge,
    /// More redirects than allowed.
    TooManyRedirects(usize),
    /// The body is not what was asked for (UTF-8 text, JSON).
    Decode(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl(url) => write!(f, "{url:?} is not an http(s) URL"),
            HttpError::Denied(why) => write!(f, "egress denied by the host: {why}"),
            HttpError::Transport(why) => write!(f, "request failed: {why}"),
            HttpError::BodyTooLarge => write!(f, "the response body is larger than the host allows"),
            HttpError::TooManyRedirects(max) => write!(f, "more than {max} redirects"),
            HttpError::Decode(why) => write!(f, "cannot decode the response: {why}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::NodeError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Transport(_) => crate::NodeError::retryable("http-transport", e.to_string()),
            HttpError::Denied(_) => crate::NodeError::new("http-denied", e.to_string()),
            _ => crate::NodeError::new("http", e.to_string()),
        }
    }
}

impl From<ErrorCode> for HttpError {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::HttpRequestDenied => HttpError::Denied("the request's scheme, host or port".to_owned()),
            ErrorCode::DestinationIpProhibited => HttpError::Denied("the address the host resolves to".to_owned()),
            ErrorCode::HttpResponseBodySize(_) => HttpError::BodyTooLarge,
            other => HttpError::Transport(format!("{other:?}")),
        }
    }
}

/// A response, read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, in order; values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
    /// The URL that answered (after redirects).
    pub url: String,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.body).map_err(|e| HttpError::Decode(e.to_string()))
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Decode(e.to_string()))
    }
}

/// `GET url`, following redirects.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// `POST url` with `body` as JSON, following redirects.
pub fn post_json<B: Serialize + ?Sized>(url: &str, body: &B) -> Result<Response, HttpError> {
    Request::post(url).json(body)?.send()
}

/// A request to build and send.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    max_redirects: usize,
}

impl Request {
    /// Redirects followed unless [`Request::max_redirects`] says otherwise.
    pub const DEFAULT_MAX_REDIRECTS: usize = 5;

    /// A request with any method (`GET`, `PUT`, ...).
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            max_redirects: Self::DEFAULT_MAX_REDIRECTS,
        }
    }

    /// A `GET`.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// A `POST`.
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, with its content type.
    pub fn json<B: Serialize + ?Sized>(self, value: &B) -> Result<Request, HttpError> {
        let body = serde_json::to_vec(value).map_err(|e| HttpError::Decode(e.to_string()))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Follows at most `n` redirects (0: return the redirect response).
    pub fn max_redirects(mut self, n: usize) -> Request {
        self.max_redirects = n;
        self
    }

    /// Sends the request, following redirects, and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let mut request = self;
        let mut hops = 0;
        loop {
            let url = Url::parse(&request.url)?;
            let response = send_once(&request, &url)?;
            let location = match response.status {
                301 | 302 | 303 | 307 | 308 => response.header("location").map(str::to_owned),
                _ => None,
            };
            let Some(location) = location else { return Ok(response) };
            if request.max_redirects == 0 {
                return Ok(response);
            }
            if hops == request.max_redirects {
                return Err(HttpError::TooManyRedirects(request.max_redirects));
            }
            hops += 1;
            let next = url.join(&location)?;
            if url.https && !next.https {
                return Err(HttpError::Denied(format!("a redirect from https to http ({next}) is not followed")));
            }
            // Credentials are for the origin that was asked, not the one a
            // redirect names.
            if next.authority != url.authority {
                request.headers.retain(|(n, _)| {
                    !["authorization", "cookie", "proxy-authorization"].iter().any(|c| n.eq_ignore_ascii_case(c))
                });
            }
            request.url = next.to_string();
            // 303, and 301/302 after a POST, turn into a GET without a body.
            if response.status == 303 || (matches!(response.status, 301 | 302) && request.method == "POST") {
                request.method = "GET".to_owned();
                request.body.clear();
                request.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
            }
        }
    }
}

fn send_once(request: &Request, url: &Url) -> Result<Response, HttpError> {
    let headers = Fields::new();
    for (name, value) in &request.headers {
        headers.append(name, value).map_err(|e| HttpError::Transport(format!("header {name}: {e:?}")))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    };
    let invalid = |_| HttpError::InvalidUrl(url.to_string());
    outgoing.set_method(&method).map_err(|()| HttpError::Transport(format!("method {}", request.method)))?;
    outgoing.set_scheme(Some(if url.https { &Scheme::Https } else { &Scheme::Http })).map_err(invalid)?;
    outgoing.set_authority(Some(&url.authority)).map_err(invalid)?;
    outgoing.set_path_with_query(Some(&url.path)).map_err(invalid)?;
    let body = outgoing.body().map_err(|()| HttpError::Transport("request body taken twice".to_owned()))?;
    // Send first, then stream the body: the host reads it as it is written.
    let future = outgoing_handler::handle(outgoing, None)?;
    if !request.body.is_empty() {
        let stream = body.write().map_err(|()| HttpError::Transport("request body stream".to_owned()))?;
        for chunk in request.body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(stream_error)?;
        }
    }
    OutgoingBody::finish(body, None)?;
    future.subscribe().block();
    let incoming = match future.get() {
        Some(Ok(result)) => result?,
        Some(Err(())) => return Err(HttpError::Transport("response taken twice".to_owned())),
        None => return Err(HttpError::Transport("no response after waiting for it".to_owned())),
    };
    let status = incoming.status();
    let headers = incoming.headers().entries();
    let body = incoming.consume().map_err(|()| HttpError::Transport("response body taken twice".to_owned()))?;
    let mut bytes = Vec::new();
    {
        let stream = body.stream().map_err(|()| HttpError::Transport("response body stream".to_owned()))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(stream_error(e)),
            }
        }
    }
    drop(IncomingBody::finish(body));
    Ok(Response { status, headers, body: bytes, url: url.to_string() })
}

fn stream_error(e: StreamError) -> HttpError {
    match e {
        StreamError::Closed => HttpError::Transport("the connection closed early".to_owned()),
        StreamError::LastOperationFailed(error) => match types::http_error_code(&error) {
            Some(code) => code.into(),
            None => {
                // wasmtime 48 reports a body cut by the host's size limit
                // without an error code; its text is all there is to go on.
                let text = error.to_debug_string();
                if text.contains("response body size exceeds limit") {
                    HttpError::BodyTooLarge
                } else {
                    HttpError::Transport(text)
                }
            }
        },
    }
}

/// An absolute `http(s)` URL, split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    https: bool,
    authority: String,
    /// Path and query, starting with `/`.
    path: String,
}

impl Url {
    fn parse(text: &str) -> Result<Url, HttpError> {
        let invalid = || HttpError::InvalidUrl(text.to_owned());
        let (scheme, rest) = text.split_once("://").ok_or_else(invalid)?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(invalid()),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains(char::is_whitespace) {
            return Err(invalid());
        }
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Url { https, authority: authority.to_owned(), path })
    }

    /// Resolves a `Location` header against this URL.
    fn join(&self, location: &str) -> Result<Url, HttpError> {
        if location.contains("://") {
            return Url::parse(location);
        }
        let scheme = if self.https { "https" } else { "http" };
        if let Some(rest) = location.strip_prefix("//") {
            return Url::parse(&format!("{scheme}://{rest}"));
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(1)];
            format!("{dir}{location}")
        };
        Url::parse(&format!("{scheme}://{}{path}", self.authority))
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", if self.https { "https" } else { "http" }, self.authority, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let url = Url::parse("https://api.example.com:8443/v1/items?x=1#frag").unwrap();
        assert_eq!(
            (url.https, url.authority.as_str(), url.path.as_str()),
            (true, "api.example.com:8443", "/v1/items?x=1")
        );
        assert_eq!(Url::parse("http://[::1]:80").unwrap().path, "/");
        assert_eq!(Url::parse("http://h?q").unwrap().path, "/?q");
        for bad in ["ftp://x", "example.com", "https:///path", "http://a b/"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirect_locations_resolve_against_the_current_url() {
        let base = Url::parse("http://a.example:8080/dir/page?x").unwrap();
        assert_eq!(base.join("https://b.example/x").unwrap().to_string(), "https://b.example/x");
        assert_eq!(base.join("//c.example/y").unwrap().to_string(), "http://c.example/y");
        assert_eq!(base.join("/root").unwrap().to_string(), "http://a.example:8080/root");
        assert_eq!(base.join("other?q=1").unwrap().to_string(), "http://a.example:8080/dir/other?q=1");
    }
}
