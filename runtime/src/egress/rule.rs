//! Egress rules (`scheme://host[:port]`) and the targets they match.
//!
//! A [`Rule`] names a scheme (`http`, `https`, or `tcp`/`udp` for sockets), a
//! host pattern and a port pattern. `*.example.com` matches subdomains, not
//! the apex; `*` matches any host; an IP literal or a CIDR matches addresses;
//! an omitted port is the scheme's default, `*` any port. A [`Target`] is what
//! a request asks for, with its host parsed the same way, so that one
//! spelling of an address cannot pass where another would be refused.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// The protocol a rule or a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP; allowed only where a rule names `http`.
    Http,
    /// HTTP over TLS.
    Https,
    /// A TCP connection through `wasi:sockets`.
    Tcp,
    /// UDP datagrams through `wasi:sockets`.
    Udp,
}

impl Scheme {
    fn parse(text: &str) -> Option<Scheme> {
        match text {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "tcp" => Some(Scheme::Tcp),
            "udp" => Some(Scheme::Udp),
            _ => None,
        }
    }

    /// The scheme as written in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Tcp => "tcp",
            Scheme::Udp => "udp",
        }
    }

    /// The port an omitted one stands for; sockets have none.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Http => Some(80),
            Scheme::Https => Some(443),
            Scheme::Tcp | Scheme::Udp => None,
        }
    }

    /// Whether this is a socket scheme rather than HTTP.
    pub fn is_socket(self) -> bool {
        matches!(self, Scheme::Tcp | Scheme::Udp)
    }
}

/// The host position of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any host name or address (the address checks still apply).
    Any,
    /// One host name, lower-case, without a trailing dot.
    Name(String),
    /// `*.suffix`: every name ending in `.suffix`, not `suffix` itself.
    Subdomains(String),
    /// An IP literal (a /32 or /128) or a CIDR.
    Net(IpNet),
}

/// The port position of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    /// `*`.
    Any,
    /// One port.
    Port(u16),
}

impl PortPattern {
    fn matches(self, port: u16) -> bool {
        match self {
            PortPattern::Any => true,
            PortPattern::Port(p) => p == port,
        }
    }
}

/// One egress rule, as parsed from `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The scheme.
    pub scheme: Scheme,
    /// The host pattern.
    pub host: HostPattern,
    /// The port pattern.
    pub port: PortPattern,
    text: String,
}

/// Why a rule does not parse; the message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress rule {rule:?}: {reason}")]
pub struct RuleError {
    rule: String,
    reason: String,
}

impl Rule {
    /// Parses `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let fail = |reason: &str| RuleError { rule: text.to_owned(), reason: reason.to_owned() };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| fail("expected scheme://host[:port]"))?;
        let scheme = Scheme::parse(scheme).ok_or_else(|| fail("the scheme must be http, https, tcp or udp"))?;
        if rest.contains(['/', '?', '#', '@']) && !looks_like_cidr(rest) {
            return Err(fail("a rule names a scheme, a host and a port: no path, query or user"));
        }
        let (host, port) = split_host_port(rest).map_err(|reason| fail(&reason))?;
        let host = parse_host_pattern(host).map_err(|reason| fail(&reason))?;
        let port = match port {
            None => match scheme.default_port() {
                Some(port) => PortPattern::Port(port),
                None => return Err(fail("tcp and udp rules need a port (or `*`)")),
            },
            Some("*") => PortPattern::Any,
            Some(port) => match port.parse::<u16>() {
                Ok(0) | Err(_) => return Err(fail("the port must be 1-65535 or `*`")),
                Ok(port) => PortPattern::Port(port),
            },
        };
        if scheme.is_socket() && matches!(host, HostPattern::Name(_) | HostPattern::Subdomains(_)) {
            return Err(fail("socket rules name addresses (an IP, a CIDR or `*`), not host names"));
        }
        Ok(Rule { scheme, host, port, text: text.to_owned() })
    }

    /// The rule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the rule allows `target`'s scheme, host and port.
    pub fn matches(&self, target: &Target) -> bool {
        self.scheme == target.scheme
            && self.port.matches(target.port)
            && match (&self.host, &target.host) {
                (HostPattern::Any, _) => true,
                (HostPattern::Name(name), Host::Name(host)) => name == host,
                (HostPattern::Subdomains(suffix), Host::Name(host)) => is_subdomain(host, suffix),
                (HostPattern::Net(net), Host::Ip(ip)) => net.contains(ip),
                _ => false,
            }
    }

    /// Whether the rule names `ip` explicitly (an IP or CIDR, not `*`) for
    /// this scheme and port: what lets a loopback or private address through.
    pub fn names_address(&self, scheme: Scheme, ip: IpAddr, port: u16) -> bool {
        self.scheme == scheme
            && self.port.matches(port)
            && matches!(&self.host, HostPattern::Net(net) if net.contains(&ip))
    }

    /// Whether everything `other` allows, this rule allows too.
    pub fn covers(&self, other: &Rule) -> bool {
        let port = match (self.port, other.port) {
            (PortPattern::Any, _) => true,
            (PortPattern::Port(a), PortPattern::Port(b)) => a == b,
            (PortPattern::Port(_), PortPattern::Any) => false,
        };
        let host = match (&self.host, &other.host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Name(a), HostPattern::Name(b)) => a == b,
            (HostPattern::Subdomains(a), HostPattern::Name(b)) => is_subdomain(b, a),
            (HostPattern::Subdomains(a), HostPattern::Subdomains(b)) => a == b || is_subdomain(b, a),
            (HostPattern::Net(a), HostPattern::Net(b)) => a.contains(b),
            _ => false,
        };
        self.scheme == other.scheme && port && host
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

fn is_subdomain(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() + 1 && host.ends_with(suffix) && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

fn looks_like_cidr(rest: &str) -> bool {
    // `10.0.0.0/8:443` and `[fd00::/8]:443` carry a `/` that is a prefix length.
    let host = rest.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(h, _)| h);
    let host = host.unwrap_or_else(|| rest.rsplit_once(':').map(|(h, _)| h).unwrap_or(rest));
    host.parse::<IpNet>().is_ok()
}

/// Splits `host[:port]`, with IPv6 in brackets.
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("an IPv6 address needs its closing `]`")?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("unexpected {after:?} after the IPv6 address")),
            },
        };
    }
    match text.split_once(':') {
        Some((host, port)) if port.contains(':') => {
            Err(format!("{host}:{port}: an IPv6 address goes in brackets, e.g. [::1]:8080"))
        }
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((text, None)),
    }
}

fn parse_host_pattern(host: &str) -> Result<HostPattern, String> {
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if let Ok(net) = host.parse::<IpNet>() {
        return Ok(HostPattern::Net(canonical_net(net)));
    }
    if let Some(ip) = parse_ip(host)? {
        return Ok(HostPattern::Net(IpNet::from(ip)));
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        let suffix = parse_name(suffix)?;
        return Ok(HostPattern::Subdomains(suffix));
    }
    Ok(HostPattern::Name(parse_name(host)?))
}

/// An IPv4-mapped IPv6 network names the IPv4 addresses it maps.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// Reads `text` as an IP address if it is one. An IPv4-mapped IPv6 address
/// is its IPv4 address. A host that ends in a numeric label but is not a
/// canonical dotted quad (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) is
/// refused: resolvers read such spellings as addresses, rules do not.
pub fn parse_ip(text: &str) -> Result<Option<IpAddr>, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Some(ip.to_canonical()));
    }
    let last = text.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .or_else(|| last.strip_prefix("0X"))
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())));
    if numeric {
        return Err(format!(
            "{text:?} is not a canonical IP address (write IPv4 as four decimal numbers, e.g. {})",
            Ipv4Addr::LOCALHOST
        ));
    }
    Ok(None)
}

/// A DNS name: letters, digits, `-` and `.`, lower-cased, no trailing dot.
fn parse_name(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        let hint = if name.contains('*') { " (`*` stands alone or as the first label: `*.example.com`)" } else { "" };
        return Err(format!("{name:?} is not a host name, an IP address or a CIDR{hint}"));
    }
    Ok(name)
}

/// A request's host: a name still to be resolved, or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lower-case, without a trailing dot.
    Name(String),
    /// An IP address (IPv4-mapped IPv6 already made IPv4).
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// What one request or connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its scheme.
    pub scheme: Scheme,
    /// Its host.
    pub host: Host,
    /// Its port (the scheme's default when the request names none).
    pub port: u16,
}

impl Target {
    /// Reads a request's scheme and authority (`host[:port]`, IPv6 in
    /// brackets). The error says why the host is unusable.
    pub fn from_authority(scheme: Scheme, authority: &str) -> Result<Target, String> {
        // User info would travel in the Host header past the check.
        if authority.contains('@') {
            return Err(format!("{authority:?}: user info (`user@`) is not allowed in a request's authority"));
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None | Some("") => scheme.default_port().ok_or("no port")?,
            Some(port) => port.parse::<u16>().map_err(|_| format!("{port:?} is not a port"))?,
        };
        let host = match parse_ip(host)? {
            Some(ip) => Host::Ip(ip),
            None => Host::Name(parse_name(host)?),
        };
        Ok(Target { scheme, host, port })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(scheme: Scheme, authority: &str) -> Target {
        Target::from_authority(scheme, authority).unwrap()
    }

    #[test]
    fn subdomain_wildcards_exclude_the_apex() {
        let rule = Rule::parse("https://*.example.com").unwrap();
        assert!(rule.matches(&target(Scheme::Https, "api.example.com")));
        assert!(rule.matches(&target(Scheme::Https, "a.b.example.com:443")));
        assert!(!rule.matches(&target(Scheme::Https, "example.com")));
        assert!(!rule.matches(&target(Scheme::Https, "badexample.com")));
        assert!(!rule.matches(&target(Scheme::Https, "api.example.com:8443")));
    }

    #[test]
    fn scheme_and_default_ports_must_match() {
        let rule = Rule::parse("https://api.example.com").unwrap();
        assert_eq!(rule.port, PortPattern::Port(443));
        assert!(rule.matches(&target(Scheme::Https, "API.Example.com.")));
        assert!(!rule.matches(&target(Scheme::Http, "api.example.com:443")));
        let http = Rule::parse("http://api.example.com:*").unwrap();
        assert!(http.matches(&target(Scheme::Http, "api.example.com:8080")));
        assert!(!http.matches(&target(Scheme::Https, "api.example.com")));
    }

    #[test]
    fn ip_and_cidr_rules_match_addresses_in_any_spelling_that_is_canonical() {
        let rule = Rule::parse("http://127.0.0.0/8:8080").unwrap();
        assert!(rule.matches(&target(Scheme::Http, "127.0.0.1:8080")));
        // The IPv4-mapped form is the same address.
        assert!(rule.matches(&target(Scheme::Http, "[::ffff:127.0.0.1]:8080")));
        assert!(!rule.matches(&target(Scheme::Http, "localhost:8080")));
        let v6 = Rule::parse("https://[fd00::/8]:*").unwrap();
        assert!(v6.matches(&target(Scheme::Https, "[fd12::1]:9")));
        assert!(v6.names_address(Scheme::Https, "fd12::1".parse().unwrap(), 9));
        assert!(!Rule::parse("https://*").unwrap().names_address(Scheme::Https, "fd12::1".parse().unwrap(), 443));
    }

    #[test]
    fn numeric_host_spellings_that_are_not_canonical_are_refused() {
        for host in ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001", "1.2.3.04"] {
            assert!(Target::from_authority(Scheme::Http, host).is_err(), "{host} was accepted");
        }
        assert_eq!(target(Scheme::Http, "10.1.2.3").host, Host::Ip("10.1.2.3".parse().unwrap()));
        assert_eq!(target(Scheme::Http, "1.example.com").host, Host::Name("1.example.com".to_owned()));
    }

    #[test]
    fn user_info_in_a_request_is_refused() {
        assert!(Target::from_authority(Scheme::Https, "user:pw@api.example.com").is_err());
        assert!(Target::from_authority(Scheme::Https, "api.example.com@127.0.0.1").is_err());
    }

    #[test]
    fn malformed_rules_are_named() {
        for (rule, words) in [
            ("example.com", "scheme://"),
            ("ftp://example.com", "http, https, tcp or udp"),
            ("https://example.com/path", "no path"),
            ("https://example.com:0", "1-65535"),
            ("https://api.*.com", "first label"),
            ("tcp://10.0.0.1", "need a port"),
            ("tcp://db.internal:5432", "not host names"),
            ("https://::1:443", "brackets"),
            ("https://2130706433", "canonical"),
        ] {
            let error = Rule::parse(rule).unwrap_err().to_string();
            assert!(error.contains(rule) && error.contains(words), "{rule}: {error}");
        }
    }

    #[test]
    fn covering_is_set_inclusion() {
        let rule = |text| Rule::parse(text).unwrap();
        assert!(rule("https://*").covers(&rule("https://api.example.com")));
        assert!(rule("https://*.example.com").covers(&rule("https://a.example.com")));
        assert!(rule("https://*.example.com").covers(&rule("https://*.a.example.com")));
        assert!(!rule("https://*.example.com").covers(&rule("https://example.com")));
        assert!(!rule("https://api.example.com").covers(&rule("http://api.example.com")));
        assert!(!rule("https://api.example.com").covers(&rule("https://api.example.com:*")));
        assert!(rule("tcp://10.0.0.0/8:*").covers(&rule("tcp://10.1.0.0/16:5432")));
    }
}
