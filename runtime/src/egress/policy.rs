//! The effective egress policy: what the operator grants and the bundle
//! requests, the address checks, and the bounds on HTTP requests.
//!
//! A request passes when an operator rule matches it and, if the bundle
//! declares `capabilities.egress`, a requested rule matches it too. Then every
//! address its host resolves to is checked: loopback, private, link-local,
//! CGNAT, cloud-metadata, unspecified, multicast and reserved addresses (and
//! their IPv4-mapped and NAT64 forms) pass only where an explicit IP or CIDR
//! rule, in both sets, names them. The policy file format ([`PolicyFile`]) is
//! the `[egress]` table that release manifests will share.

use super::rule::{Host, Rule, RuleError, Scheme, Target};
pub use crate::outcome::{PolicyViolation, RuleSet};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

/// Bounds on each run's HTTP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest response body a guest may read; more ends the body with an error.
    pub max_response_bytes: u64,
    /// Longest wait for a connection (TCP and TLS), never past the run's deadline.
    pub connect_timeout: Duration,
    /// Longest wait for the response headers, never past the run's deadline.
    pub first_byte_timeout: Duration,
    /// Requests one run may have open at once.
    pub max_concurrent_requests: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_response_bytes: 16 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(30),
            max_concurrent_requests: 8,
        }
    }
}

/// The egress policy of a run.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    operator: Vec<Rule>,
    requested: Option<Vec<Rule>>,
    /// The bounds on requests.
    pub limits: HttpLimits,
}

impl EgressPolicy {
    /// Refuses everything.
    pub fn deny_all() -> EgressPolicy {
        EgressPolicy::default()
    }

    /// The operator's grant, with `limits`.
    pub fn new(operator: Vec<Rule>, limits: HttpLimits) -> EgressPolicy {
        EgressPolicy { operator, requested: None, limits }
    }

    /// This policy narrowed to what a bundle requests: a request must then
    /// match a rule of each. A bundle that declares nothing is not narrowed.
    pub fn with_requested(mut self, requested: Option<Vec<Rule>>) -> EgressPolicy {
        self.requested = requested;
        self
    }

    /// The operator's rules.
    pub fn operator_rules(&self) -> &[Rule] {
        &self.operator
    }

    /// The requested rules that no single operator rule covers: what the
    /// bundle asked for and will not (fully) get.
    pub fn not_granted(&self) -> Vec<&Rule> {
        let Some(requested) = &self.requested else { return Vec::new() };
        requested.iter().filter(|r| !self.operator.iter().any(|o| o.covers(r))).collect()
    }

    /// Whether any rule of `scheme` could allow something (for sockets:
    /// whether to offer TCP or UDP at all).
    pub fn allows_any(&self, scheme: Scheme) -> bool {
        let operator = self.operator.iter().any(|r| r.scheme == scheme);
        let requested = self.requested.as_ref().is_none_or(|rules| rules.iter().any(|r| r.scheme == scheme));
        operator && requested
    }

    /// Checks a target's scheme, host and port, before anything is resolved
    /// or connected.
    pub fn check_target(&self, target: &Target) -> Result<(), PolicyViolation> {
        let refuse =
            |rule_set, reason: String| PolicyViolation { rule_set, target: target.to_string(), reason, node: None };
        if !self.operator.iter().any(|r| r.matches(target)) {
            let reason = if self.operator.is_empty() {
                "no egress is granted (grant it with --allow-host RULE or --policy FILE)".to_owned()
            } else {
                format!("no operator rule allows it (rules: {})", list(&self.operator))
            };
            return Err(refuse(RuleSet::Operator, reason));
        }
        if let Some(requested) = &self.requested
            && !requested.iter().any(|r| r.matches(target))
        {
            let reason =
                format!("the bundle's capabilities.egress does not request it (requested: {})", list(requested));
            return Err(refuse(RuleSet::Bundle, reason));
        }
        if let Host::Ip(ip) = target.host {
            self.check_address(target, ip)?;
        }
        Ok(())
    }

    /// Checks one address `target`'s host resolved to (or names).
    pub fn check_address(&self, target: &Target, ip: IpAddr) -> Result<(), PolicyViolation> {
        let ip = ip.to_canonical();
        let Some(range) = special_range(ip) else { return Ok(()) };
        let named = |rules: &[Rule]| rules.iter().any(|r| r.names_address(target.scheme, ip, target.port));
        if named(&self.operator) && self.requested.as_deref().is_none_or(named) {
            return Ok(());
        }
        Err(PolicyViolation {
            rule_set: RuleSet::Address,
            target: target.to_string(),
            reason: format!("{ip} is a {range} address; only an IP or CIDR rule naming it allows it"),
            node: None,
        })
    }
}

fn list(rules: &[Rule]) -> String {
    if rules.is_empty() {
        return "none".to_owned();
    }
    rules.iter().map(Rule::as_str).collect::<Vec<_>>().join(", ")
}

/// The kind of address `ip` is, if it is one that egress refuses unless a
/// rule names it. `ip` must be canonical (IPv4-mapped made IPv4).
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => special_v4(ip),
        IpAddr::V6(ip) => special_v6(ip),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "cloud metadata",
        _ if a == 0 => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private (RFC 1918)",
        _ if ip.is_link_local() => "link-local",
        _ if a == 100 && (64..128).contains(&b) => "CGNAT (RFC 6598)",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() || a >= 240 => "reserved",
        // 192.0.0.0/24 (IETF protocol assignments) and 198.18.0.0/15 (benchmarking).
        _ if (a == 192 && b == 0 && ip.octets()[2] == 0) || (a == 198 && (b & 0xfe) == 18) => "reserved",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    Some(match () {
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => "cloud metadata",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if (segments[0] & 0xfe00) == 0xfc00 => "private (IPv6 ULA)",
        _ if (segments[0] & 0xffc0) == 0xfe80 => "link-local",
        _ if (segments[0] & 0xffc0) == 0xfec0 => "site-local",
        _ if ip.is_multicast() => "multicast",
        // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
        _ if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let v4 = Ipv4Addr::from(u128::from(ip) as u32);
            return special_v4(v4);
        }
        // IPv4-compatible (::a.b.c.d, deprecated) and the rest of ::/8.
        _ if segments[0] == 0 => "reserved",
        _ => return None,
    })
}

/// A policy file: `--policy policy.toml`, and the `[egress]` table of
/// release manifests.
///
/// ```toml
/// [egress]
/// allow = ["https://api.example.com", "http://127.0.0.1:8080"]
/// max_response_body = "16MiB"
/// connect_timeout = "10s"
/// first_byte_timeout = "30s"
/// max_concurrent_requests = 8
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// The egress grant.
    #[serde(default)]
    pub egress: EgressSection,
}

/// The `[egress]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSection {
    /// Rules `scheme://host[:port]`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Largest response body, e.g. `16MiB`.
    pub max_response_body: Option<String>,
    /// Connect timeout, e.g. `10s`.
    pub connect_timeout: Option<String>,
    /// First-byte timeout, e.g. `30s`.
    pub first_byte_timeout: Option<String>,
    /// Requests one run may have open at once.
    pub max_concurrent_requests: Option<usize>,
}

/// Why a policy could not be read; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("policy file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("policy file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with its line where known.
        reason: String,
    },
    /// A rule does not parse.
    #[error(transparent)]
    Rule(#[from] RuleError),
}

impl PolicyFile {
    /// Reads and validates a policy file.
    pub fn read(path: &Path) -> Result<EgressPolicy, PolicyError> {
        let shown = path.display().to_string();
        let text = crate::files::read_capped_text(path, crate::files::caps::SETTINGS)
            .map_err(|source| PolicyError::Read { path: shown.clone(), source })?;
        let file: PolicyFile =
            toml::from_str(&text).map_err(|e| PolicyError::Invalid { path: shown.clone(), reason: e.to_string() })?;
        file.egress.into_policy().map_err(|e| match e {
            PolicyError::Invalid { reason, .. } => PolicyError::Invalid { path: shown, reason },
            other => other,
        })
    }
}

impl EgressSection {
    /// The policy this table grants.
    pub fn into_policy(self) -> Result<EgressPolicy, PolicyError> {
        let invalid = |reason: String| PolicyError::Invalid { path: String::new(), reason };
        let rules = self.allow.iter().map(|r| Rule::parse(r)).collect::<Result<Vec<_>, _>>()?;
        let mut limits = HttpLimits::default();
        if let Some(size) = &self.max_response_body {
            limits.max_response_bytes = size
                .parse::<bytesize::ByteSize>()
                .map_err(|e| invalid(format!("egress.max_response_body {size:?}: {e}")))?
                .as_u64();
        }
        let duration = |key: &str, text: &Option<String>, default: Duration| match text {
            None => Ok(default),
            Some(text) => {
                humantime::parse_duration(text).map_err(|e| invalid(format!("egress.{key} {text:?}: {e}"))).and_then(
                    |d| if d.is_zero() { Err(invalid(format!("egress.{key} must be above zero"))) } else { Ok(d) },
                )
            }
        };
        limits.connect_timeout = duration("connect_timeout", &self.connect_timeout, limits.connect_timeout)?;
        limits.first_byte_timeout =
            duration("first_byte_timeout", &self.first_byte_timeout, limits.first_byte_timeout)?;
        if let Some(n) = self.max_concurrent_requests {
            if !(1..=1024).contains(&n) {
                return Err(invalid(format!("egress.max_concurrent_requests {n} is outside 1..=1024")));
            }
            limits.max_concurrent_requests = n;
        }
        Ok(EgressPolicy::new(rules, limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(texts: &[&str]) -> Vec<Rule> {
        texts.iter().map(|t| Rule::parse(t).unwrap()).collect()
    }

    fn target(scheme: Scheme, authority: &str) -> Target {
        Target::from_authority(scheme, authority).unwrap()
    }

    #[test]
    fn every_special_range_is_refused() {
        for (ip, range) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd12::1", "ULA"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("64:ff9b::a00:1", "private"),
        ] {
            let found = special_range(ip.parse::<IpAddr>().unwrap().to_canonical());
            assert!(found.is_some_and(|f| f.contains(range)), "{ip}: {found:?}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "100.128.0.1", "172.32.0.1"] {
            assert_eq!(special_range(public.parse().unwrap()), None, "{public}");
        }
    }

    #[test]
    fn mapped_addresses_are_checked_as_ipv4() {
        let policy = EgressPolicy::new(rules(&["http://*:*"]), HttpLimits::default());
        let mapped = target(Scheme::Http, "[::ffff:127.0.0.1]:8080");
        assert_eq!(policy.check_target(&mapped).unwrap_err().rule_set, RuleSet::Address);
        let mapped_metadata: IpAddr = "::ffff:169.254.169.254".parse().unwrap();
        let err = policy.check_address(&target(Scheme::Http, "example.com"), mapped_metadata).unwrap_err();
        assert!(err.reason.contains("cloud metadata"), "{}", err.reason);
    }

    #[test]
    fn wildcards_never_open_private_addresses_but_ip_rules_do() {
        let any = EgressPolicy::new(rules(&["http://*:8080"]), HttpLimits::default());
        let local = target(Scheme::Http, "localhost:8080");
        assert!(any.check_target(&local).is_ok(), "the name passes; its addresses are checked after lookup");
        assert!(any.check_address(&local, Ipv4Addr::LOCALHOST.into()).is_err());
        let named =
            EgressPolicy::new(rules(&["http://localhost:8080", "http://127.0.0.1:8080"]), HttpLimits::default());
        assert!(named.check_address(&local, Ipv4Addr::LOCALHOST.into()).is_ok());
        assert!(named.check_address(&local, "10.0.0.1".parse().unwrap()).is_err());
        // A rule for another port does not open the address on this one.
        let other_port = EgressPolicy::new(rules(&["http://*:8080", "http://127.0.0.1:9090"]), HttpLimits::default());
        assert!(other_port.check_address(&local, Ipv4Addr::LOCALHOST.into()).is_err());
    }

    #[test]
    fn the_effective_policy_is_what_both_allow() {
        let policy = EgressPolicy::new(rules(&["https://*.example.com", "http://127.0.0.1:80"]), HttpLimits::default())
            .with_requested(Some(rules(&["https://api.example.com", "https://other.org", "http://127.0.0.1"])));
        assert!(policy.check_target(&target(Scheme::Https, "api.example.com")).is_ok());
        let not_requested = policy.check_target(&target(Scheme::Https, "www.example.com")).unwrap_err();
        assert_eq!(not_requested.rule_set, RuleSet::Bundle);
        let not_granted = policy.check_target(&target(Scheme::Https, "other.org")).unwrap_err();
        assert_eq!(not_granted.rule_set, RuleSet::Operator);
        assert!(policy.check_target(&target(Scheme::Http, "127.0.0.1")).is_ok());
        let missing: Vec<&str> = policy.not_granted().iter().map(|r| r.as_str()).collect();
        assert_eq!(missing, ["https://other.org"]);
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let err = EgressPolicy::deny_all().check_target(&target(Scheme::Https, "example.com")).unwrap_err();
        assert_eq!(err.rule_set, RuleSet::Operator);
        assert!(err.reason.contains("--allow-host"), "{}", err.reason);
        assert!(!EgressPolicy::deny_all().allows_any(Scheme::Tcp));
    }

    #[test]
    fn policy_files_reject_unknown_keys_and_bad_values() {
        let parse = |text: &str| toml::from_str::<PolicyFile>(text).map_err(|e| e.to_string());
        assert!(parse("[egress]\nalow = []").unwrap_err().contains("alow"));
        let file =
            parse("[egress]\nallow = [\"https://x.org\"]\nmax_response_body = \"1MiB\"\nconnect_timeout = \"2s\"")
                .unwrap();
        let policy = file.egress.into_policy().unwrap();
        assert_eq!(policy.limits.max_response_bytes, 1024 * 1024);
        assert_eq!(policy.limits.connect_timeout, Duration::from_secs(2));
        let bad = parse("[egress]\nallow = [\"x.org\"]").unwrap().egress.into_policy().unwrap_err();
        assert!(bad.to_string().contains("x.org"));
        let zero = parse("[egress]\nfirst_byte_timeout = \"0s\"").unwrap().egress.into_policy().unwrap_err();
        assert!(zero.to_string().contains("first_byte_timeout"));
    }
}
