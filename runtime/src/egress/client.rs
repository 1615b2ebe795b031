//! The host side of `wasi:http/outgoing-handler` and `wasi:sockets` under an
//! [`EgressPolicy`].
//!
//! [`EgressRun`] is one run's view of the policy: its deadline, its count of
//! open requests and the violations recorded so far. Its
//! [`WasiHttpHooks::send_request`] checks the target, resolves the host once,
//! checks every address, and connects to an address it checked (no second
//! lookup, so a DNS answer cannot change between check and use). It never
//! follows redirects. Timeouts are clipped to the run's deadline and the
//! response body is cut at the policy's size. Each refusal is a WASI HTTP
//! error for the guest, a warning in wfrun's log, and a [`PolicyViolation`].

use super::policy::{EgressPolicy, PolicyViolation, RuleSet};
use super::rule::{Host, Scheme, Target};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Violations kept per run; later ones are counted, not stored.
const MAX_VIOLATIONS: usize = 256;

/// One run's egress: the policy, the deadline, and what was refused.
#[derive(Debug)]
pub struct EgressRun {
    policy: Arc<EgressPolicy>,
    deadline: Instant,
    open: Arc<Semaphore>,
    violations: Mutex<Violations>,
}

#[derive(Debug, Default)]
struct Violations {
    kept: Vec<PolicyViolation>,
    dropped: u64,
}

impl EgressRun {
    /// Egress for a run that must end by `deadline`.
    pub fn new(policy: Arc<EgressPolicy>, deadline: Instant) -> Arc<EgressRun> {
        let open = Arc::new(Semaphore::new(policy.limits.max_concurrent_requests));
        Arc::new(EgressRun { policy, deadline, open, violations: Mutex::default() })
    }

    /// The policy.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Records a refusal and logs it.
    fn refuse(&self, violation: PolicyViolation) {
        tracing::warn!(
            target: "wfrun::egress",
            "egress denied: {} ({:?}): {}",
            violation.target,
            violation.rule_set,
            violation.reason
        );
        let mut violations = self.violations.lock().unwrap();
        if violations.kept.len() < MAX_VIOLATIONS {
            violations.kept.push(violation);
        } else {
            violations.dropped += 1;
        }
    }

    /// The violations recorded so far, with a final summary entry if some
    /// were not kept.
    pub fn violations(&self) -> Vec<PolicyViolation> {
        let violations = self.violations.lock().unwrap();
        let mut list = violations.kept.clone();
        if violations.dropped > 0 {
            list.push(PolicyViolation {
                rule_set: RuleSet::Limits,
                target: String::new(),
                reason: format!("{} more violations were not recorded", violations.dropped),
                node: None,
            });
        }
        list
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The `wasi:sockets` address check: connections and datagrams go only
    /// where a `tcp://` or `udp://` rule allows; binds only to a wildcard
    /// address with an ephemeral port, for a granted protocol; no listening.
    pub fn check_socket(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        let (scheme, remote) = match use_ {
            SocketAddrUse::TcpConnect => (Scheme::Tcp, true),
            SocketAddrUse::UdpSend => (Scheme::Udp, true),
            // A datagram from elsewhere is dropped silently: recording it
            // would let any sender flood the log and the run record.
            SocketAddrUse::UdpReceive => {
                let target =
                    Target { scheme: Scheme::Udp, host: Host::Ip(addr.ip().to_canonical()), port: addr.port() };
                return self.policy.check_target(&target).is_ok();
            }
            SocketAddrUse::TcpBind => (Scheme::Tcp, false),
            SocketAddrUse::UdpBind => (Scheme::Udp, false),
            _ => {
                self.refuse(PolicyViolation {
                    rule_set: RuleSet::Operator,
                    target: format!("tcp://{addr}"),
                    reason: "listening for connections is not offered to guests".to_owned(),
                    node: None,
                });
                return false;
            }
        };
        if !remote {
            return addr.ip().is_unspecified() && addr.port() == 0 && self.policy.allows_any(scheme);
        }
        let target = Target { scheme, host: Host::Ip(addr.ip().to_canonical()), port: addr.port() };
        match self.policy.check_target(&target) {
            Ok(()) => true,
            Err(violation) => {
                self.refuse(violation);
                false
            }
        }
    }

    async fn send(
        self: Arc<Self>,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, SendIo), Error> {
        let uri = request.uri();
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(Error::HttpProtocolError),
        };
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let target = match Target::from_authority(scheme, authority) {
            Ok(target) => target,
            Err(reason) => {
                self.refuse(PolicyViolation {
                    rule_set: RuleSet::Operator,
                    target: format!("{}://{}", scheme.as_str(), authority.escape_debug()),
                    reason,
                    node: None,
                });
                return Err(Error::HttpRequestDenied);
            }
        };
        if let Err(violation) = self.policy.check_target(&target) {
            let error = if violation.rule_set == RuleSet::Address {
                Error::DestinationIpProhibited
            } else {
                Error::HttpRequestDenied
            };
            self.refuse(violation);
            return Err(error);
        }
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            self.refuse(PolicyViolation {
                rule_set: RuleSet::Limits,
                target: target.to_string(),
                reason: format!(
                    "the run already has {} requests open (max_concurrent_requests)",
                    self.policy.limits.max_concurrent_requests
                ),
                node: None,
            });
            return Err(Error::ConnectionLimitReached);
        };

        let limits = self.policy.limits;
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(limits.connect_timeout)
            .min(limits.connect_timeout)
            .min(self.remaining());
        let connect_by = Instant::now() + connect_timeout;
        let addresses = self.resolve(&target, connect_by).await?;
        let stream = connect(&addresses, connect_by).await?;
        let io = match (&target.host, scheme) {
            (_, Scheme::Http) => Stream::Plain(stream),
            (host, _) => {
                let name = match host {
                    Host::Name(name) => rustls::pki_types::ServerName::try_from(name.clone())
                        .map_err(|_| Error::HttpRequestUriInvalid)?,
                    Host::Ip(ip) => rustls::pki_types::ServerName::from(*ip),
                };
                let tls = tokio::time::timeout_at(connect_by.into(), tls_connector().connect(name, stream))
                    .await
                    .map_err(|_| Error::ConnectionTimeout)?
                    .map_err(Error::Tls)?;
                Stream::Tls(Box::new(tls))
            }
        };
        let (mut sender, connection) = tokio::time::timeout_at(
            connect_by.into(),
            hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
        // Drive the connection until it closes or the run's deadline passes.
        let deadline = self.deadline;
        let driver = tokio::spawn(async move {
            match tokio::time::timeout_at(deadline.into(), connection).await {
                Ok(result) => result.map_err(Error::from),
                Err(_) => Err(Error::HttpResponseTimeout),
            }
        });

        // The request line carries the path only; scheme and host were for us.
        let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
        *request.uri_mut() =
            http::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(limits.first_byte_timeout)
            .min(limits.first_byte_timeout)
            .min(self.remaining());
        let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;

        let max = limits.max_response_bytes;
        let declared = response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        if let Some(length) = declared.filter(|&length: &u64| length > max) {
            self.refuse(PolicyViolation {
                rule_set: RuleSet::Limits,
                target: target.to_string(),
                reason: format!("the response body is {length} bytes, more than max_response_body ({max} bytes)"),
                node: None,
            });
            return Err(Error::HttpResponseBodySize(Some(length)));
        }
        let run = self.clone();
        let response = response.map(|incoming| {
            LimitedBody { incoming, seen: 0, max, exceeded: false, target: target.to_string(), run, _permit: permit }
                .boxed_unsync()
        });
        let io: SendIo = Box::new(async move { driver.await.unwrap_or(Ok(())) });
        Ok((response, io))
    }

    /// The addresses `target` may connect to: its own if it is an IP, else
    /// what one lookup returned, minus refused ones. None left is a violation.
    async fn resolve(&self, target: &Target, by: Instant) -> Result<Vec<SocketAddr>, Error> {
        let name = match &target.host {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, target.port)]),
            Host::Name(name) => name.clone(),
        };
        let found: Vec<SocketAddr> =
            match tokio::time::timeout_at(by.into(), tokio::net::lookup_host((name.as_str(), target.port))).await {
                Err(_) => return Err(Error::DnsTimeout),
                Ok(Err(e)) => return Err(Error::DnsError { rcode: Some(e.to_string()), info_code: None }),
                Ok(Ok(found)) => found.collect(),
            };
        let mut allowed = Vec::new();
        let mut refused = None;
        for addr in found {
            let ip: IpAddr = addr.ip().to_canonical();
            match self.policy.check_address(target, ip) {
                Ok(()) => allowed.push(SocketAddr::new(ip, addr.port())),
                Err(violation) => {
                    refused.get_or_insert(violation);
                }
            }
        }
        if allowed.is_empty() {
            return Err(match refused {
                Some(violation) => {
                    self.refuse(violation);
                    Error::DestinationIpProhibited
                }
                None => Error::DestinationNotFound,
            });
        }
        Ok(allowed)
    }
}

type SendIo = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Tries each checked address in turn until one connects or time runs out.
async fn connect(addresses: &[SocketAddr], by: Instant) -> Result<TcpStream, Error> {
    let mut last = None;
    for addr in addresses {
        match tokio::time::timeout_at(by.into(), TcpStream::connect(addr)).await {
            Err(_) => return Err(Error::ConnectionTimeout),
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
        Some(e) => Error::Connect(e),
        None => Error::DestinationNotFound,
    })
}

/// The TLS connector wfrun's own HTTP clients use: rustls (ring) with the
/// webpki roots.
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    tokio_rustls::TlsConnector::from(CONFIG.get_or_init(|| client_config(Vec::new())).clone())
}

/// A TLS connector that trusts the webpki roots and `extra` (a private
/// CA's certificate, or a server's self-signed one).
pub fn tls_connector_trusting(extra: Vec<rustls::pki_types::CertificateDer<'static>>) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(client_config(extra))
}

/// rustls (ring) trusting the webpki roots and `extra`.
fn client_config(extra: Vec<rustls::pki_types::CertificateDer<'static>>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    roots.add_parsable_certificates(extra);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A connection, plain or TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A response body cut at `max` bytes. It holds the request's slot among
/// the run's open requests until it is dropped.
struct LimitedBody {
    incoming: hyper::body::Incoming,
    seen: u64,
    max: u64,
    exceeded: bool,
    target: String,
    run: Arc<EgressRun>,
    _permit: OwnedSemaphorePermit,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.exceeded {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.max {
                        this.run.refuse(PolicyViolation {
                            rule_set: RuleSet::Limits,
                            target: this.target.clone(),
                            reason: format!("the response body went past max_response_body ({} bytes)", this.max),
                            node: None,
                        });
                        // Past the cap the body is over: later polls end it.
                        this.exceeded = true;
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(None))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// The `wasi:http` hooks of one run.
pub struct EgressHooks(pub Arc<EgressRun>);

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, SendIo), Error>> + Send> {
        Box::new(self.0.clone().send(request, options))
    }
}
