//! What the operator allows: one place for every grant a run gets.
//!
//! A [`Policy`] holds the operator's side of every decision about a bundle:
//! the limit ceilings and how a request is granted against them, the retry
//! policy of failed runs ([`RetryPolicy`], the same type a workflow's node
//! retries use), the trust requirement ([`TrustPolicy`]: trusted keys and
//! `require_signed`, enforced by [`TrustPolicy::verify`] before anything is
//! compiled), which node components may run ([`NodeRules`]), the state
//! quota ceiling, and the egress grant (wrapping [`EgressPolicy`]).
//!
//! [`Policy::admit`] takes a workflow's [`Plan`] and answers with what its
//! runs get ([`Admitted`]: a [`Grant`] per run) or why it may not run at all
//! ([`Refused`]). By default a request above a ceiling is held to the
//! ceiling; with [`Policy::strict_limits`] it is refused, which is what the
//! release activation uses to refuse a bundle that asks for more than the
//! device allows. `wfrun exec` and the daemon build their policy from flags
//! and the config file, and admit every run through it.

pub use crate::workflow::{RetryError, RetryPolicy};

use crate::bundle::signature::{KeyError, PublicKey, load_keys};
use crate::bundle::{Bundle, BundleError, Remembered};
use crate::egress::EgressPolicy;
use crate::limits::{LimitRequest, OverCeiling};
use crate::manifest::StateQuota;
use crate::workflow::{DEFAULT_MAX_PARALLEL, Grant, Plan};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The most state any workflow may ask for, whatever its quota says.
pub const STATE_QUOTA_CEILING: StateQuota =
    StateQuota { max_keys: 100_000, max_value_bytes: 1024 * 1024, max_total_bytes: 64 * 1024 * 1024 };

/// The operator's side of every run.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Limit ceilings: each node gets what it requests, never more than
    /// these (each `None` meaning the default limit).
    pub ceilings: LimitRequest,
    /// Nodes of one run at once, at most (`None`: [`DEFAULT_MAX_PARALLEL`]).
    pub max_parallel: Option<usize>,
    /// Refuse a plan that requests more than a ceiling, instead of holding
    /// it to the ceiling.
    pub strict_limits: bool,
    /// Which keys bundles must be signed by, and whether they must be.
    pub trust: TrustPolicy,
    /// Which node components may run.
    pub nodes: NodeRules,
    /// The most durable state a workflow may have.
    pub state_ceiling: StateQuota,
    /// Where HTTP requests and sockets may go (the operator's grant; each
    /// workflow narrows it to what it requests).
    pub egress: Arc<EgressPolicy>,
    /// How failed runs of a daemon job are retried.
    pub retry: RetryPolicy,
}

impl Default for Policy {
    /// Default ceilings, unsigned bundles allowed, every component allowed,
    /// no egress.
    fn default() -> Self {
        Policy {
            ceilings: LimitRequest::default(),
            max_parallel: None,
            strict_limits: false,
            trust: TrustPolicy::default(),
            nodes: NodeRules::default(),
            state_ceiling: STATE_QUOTA_CEILING,
            egress: Arc::new(EgressPolicy::deny_all()),
            retry: RetryPolicy::JOB_DEFAULT,
        }
    }
}

/// What an admitted plan's runs get.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Limits per node, the egress policy, parallelism, the state quota.
    pub grant: Grant,
    /// Requests held to a ceiling: (node, what).
    pub capped: Vec<(String, OverCeiling)>,
}

/// One reason a plan may not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    /// The node's component is on the deny list.
    #[error("node `{node}`: component {component} is denied by the operator's policy")]
    NodeDenied {
        /// The node.
        node: String,
        /// Its component digest.
        component: String,
    },
    /// An allow list is set and the node's component is not on it.
    #[error("node `{node}`: component {component} is not on the operator's allow list")]
    NodeNotAllowed {
        /// The node.
        node: String,
        /// Its component digest.
        component: String,
    },
    /// The node's name is on the deny list.
    #[error("node `{node}` is denied by the operator's policy")]
    NodeNameDenied {
        /// The node.
        node: String,
    },
    /// The node's component imports a denied interface.
    #[error("node `{node}` imports {import}, which the operator's policy denies")]
    ImportDenied {
        /// The node.
        node: String,
        /// The import.
        import: String,
    },
    /// A request above a ceiling, under [`Policy::strict_limits`].
    #[error("node `{node}`: requests {key} {requested}, more than the operator's ceiling of {ceiling}")]
    OverCeiling {
        /// The node.
        node: String,
        /// The limit (`memory`, `timeout`, ...).
        key: &'static str,
        /// What it asks for.
        requested: String,
        /// The ceiling.
        ceiling: String,
    },
}

impl Refusal {
    /// The stable detail code under `invalid_bundle`.
    pub fn detail(&self) -> &'static str {
        match self {
            Refusal::NodeDenied { .. } => "node_denied",
            Refusal::NodeNotAllowed { .. } => "node_not_allowed",
            Refusal::NodeNameDenied { .. } => "node_name_denied",
            Refusal::ImportDenied { .. } => "import_denied",
            Refusal::OverCeiling { .. } => "over_ceiling",
        }
    }
}

/// Why a plan may not run: every reason found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by the operator's policy: {}", refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Refused {
    /// Each reason, in node order.
    pub refusals: Vec<Refusal>,
}

impl Refused {
    /// The detail code of the first reason.
    pub fn detail(&self) -> &'static str {
        self.refusals.first().map_or("policy_refused", Refusal::detail)
    }
}

impl Policy {
    /// Decides what `plan`'s runs get, or refuses it.
    pub fn admit(&self, plan: &Plan) -> Result<Admitted, Refused> {
        let mut refusals = Vec::new();
        let mut capped = Vec::new();
        let mut limits = std::collections::BTreeMap::new();
        for node in &plan.order {
            let component = plan.components.get(node).map_or("", String::as_str);
            let imports = plan.imports.get(node).map_or(&[][..], Vec::as_slice);
            if let Err(refusal) = self.nodes.check(node, component, imports) {
                refusals.push(refusal);
            }
            let request = plan.limits.get(node).copied().unwrap_or_default();
            for over in request.over(&self.ceilings) {
                if self.strict_limits {
                    refusals.push(Refusal::OverCeiling {
                        node: node.clone(),
                        key: over.key.name(),
                        requested: over.requested,
                        ceiling: over.ceiling,
                    });
                } else {
                    capped.push((node.clone(), over));
                }
            }
            limits.insert(node.clone(), request.grant(&self.ceilings));
        }
        if !refusals.is_empty() {
            return Err(Refused { refusals });
        }
        let quota = StateQuota {
            max_keys: plan.quota.max_keys.min(self.state_ceiling.max_keys),
            max_value_bytes: plan.quota.max_value_bytes.min(self.state_ceiling.max_value_bytes),
            max_total_bytes: plan.quota.max_total_bytes.min(self.state_ceiling.max_total_bytes),
        };
        let egress = Arc::new(EgressPolicy::clone(&self.egress).with_requested(plan.egress.clone()));
        let max_parallel = plan.max_parallel.min(self.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL)).max(1);
        Ok(Admitted { grant: Grant { limits, egress, max_parallel, quota }, capped })
    }
}

/// Which keys bundles must be signed by, and whether they must be signed.
///
/// A present signature must always verify. With trusted keys, a bundle must
/// be signed by one of them (an unsigned one is refused with
/// `signature_missing`); `require_signed` says so explicitly and needs keys,
/// so that a configuration asking for signatures can never silently accept
/// unsigned bundles because its key list is empty.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    keys: Vec<PublicKey>,
    require_signed: bool,
}

/// How a trust policy treats unsigned bundles, as `wfrun status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustMode {
    /// Only bundles signed by a trusted key run.
    SignedOnly,
    /// Unsigned bundles run (a present signature must still verify).
    UnsignedAllowed,
}

/// Why a trust policy cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// A trusted key does not load.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// `require_signed` with no trusted key: nothing could ever run.
    #[error("require_signed needs at least one trusted key (--trust KEY, or trust.trusted_keys)")]
    RequireSignedWithoutKeys,
}

impl TrustPolicy {
    /// Trusts `keys`; `require_signed` refuses unsigned bundles and needs a key.
    pub fn new(keys: Vec<PublicKey>, require_signed: bool) -> Result<TrustPolicy, TrustError> {
        if require_signed && keys.is_empty() {
            return Err(TrustError::RequireSignedWithoutKeys);
        }
        Ok(TrustPolicy { keys, require_signed })
    }

    /// The same from key texts (`.pub` files or `ed25519:<hex>`).
    pub fn load(keys: &[String], require_signed: bool) -> Result<TrustPolicy, TrustError> {
        TrustPolicy::new(load_keys(keys)?, require_signed)
    }

    /// Whether an unsigned bundle is refused.
    pub fn requires_signature(&self) -> bool {
        self.require_signed || !self.keys.is_empty()
    }

    /// Signed only, or unsigned allowed.
    pub fn mode(&self) -> TrustMode {
        if self.requires_signature() { TrustMode::SignedOnly } else { TrustMode::UnsignedAllowed }
    }

    /// The trusted keys' ids.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(PublicKey::key_id).collect()
    }

    /// Checks `bundle`'s signature (embedded, else `BUNDLE.sig`) against
    /// this policy. Returns the signer's key id, `None` for an unsigned
    /// bundle this policy lets run.
    pub fn verify(&self, bundle: &Bundle) -> Result<Option<String>, BundleError> {
        let detached = if bundle.is_signed() { None } else { bundle.read_detached()? };
        bundle.verify(detached.as_ref(), &self.keys, self.requires_signature())
    }

    /// [`verify`](Self::verify) for a bundle known by its remembered
    /// digest: its detached signature, if any, is checked against it.
    pub fn verify_remembered(&self, bundle: &Remembered) -> Result<Option<String>, BundleError> {
        bundle.verify(bundle.read_detached()?.as_ref(), &self.keys, self.requires_signature())
    }
}

/// Which nodes may run: by component digest (`sha256:<hex>`), by node
/// name, and by what a component imports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRules {
    /// If set, only these components run.
    pub allow: Option<BTreeSet<String>>,
    /// These components never run.
    pub deny: BTreeSet<String>,
    /// Nodes of these names never run.
    pub deny_names: BTreeSet<String>,
    /// A component importing an interface that starts with one of these
    /// never runs: `wasi:http` denies every node that could make HTTP
    /// requests, `wasi:sockets` every node that could open sockets.
    pub deny_imports: Vec<String>,
}

impl NodeRules {
    /// Whether node `node`, whose component has digest `component` and
    /// imports `imports`, may run.
    pub fn check(&self, node: &str, component: &str, imports: &[String]) -> Result<(), Refusal> {
        if self.deny_names.contains(node) {
            return Err(Refusal::NodeNameDenied { node: node.to_owned() });
        }
        if let Some(import) =
            imports.iter().find(|i| self.deny_imports.iter().any(|prefix| i.starts_with(prefix.as_str())))
        {
            return Err(Refusal::ImportDenied { node: node.to_owned(), import: import.clone() });
        }
        if self.deny.contains(component) {
            return Err(Refusal::NodeDenied { node: node.to_owned(), component: component.to_owned() });
        }
        if self.allow.as_ref().is_some_and(|allow| !allow.contains(component)) {
            return Err(Refusal::NodeNotAllowed { node: node.to_owned(), component: component.to_owned() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::WorkflowDef;
    use std::time::Duration;

    fn plan() -> Plan {
        let def = WorkflowDef::from_toml(
            "name = \"w\"\nversion = \"1\"\n[limits]\ntimeout = \"60s\"\nmemory = \"1MiB\"\n\
             [capabilities]\negress = [\"https://api.example.com\"]\n\
             [nodes.a]\ncomponent = \"a.wasm\"\n[nodes.b]\ncomponent = \"b.wasm\"\ndepends_on = [\"a\"]",
            "test",
        )
        .unwrap();
        let mut plan = Plan::of(&def).unwrap();
        plan.components = [("a".to_owned(), "sha256:aa".to_owned()), ("b".to_owned(), "sha256:bb".to_owned())].into();
        plan
    }

    #[test]
    fn requests_over_a_ceiling_are_held_to_it_or_refused_when_strict() {
        let policy = Policy::default();
        let admitted = policy.admit(&plan()).unwrap();
        assert_eq!(admitted.grant.limits["a"].timeout, Duration::from_secs(30));
        assert_eq!(admitted.grant.limits["a"].memory_bytes, 1024 * 1024, "asked for less: gets less");
        assert_eq!(admitted.capped.len(), 2, "one timeout held per node");
        let strict = Policy { strict_limits: true, ..Policy::default() };
        let refused = strict.admit(&plan()).unwrap_err();
        assert_eq!(refused.detail(), "over_ceiling");
        assert_eq!(refused.refusals.len(), 2);
        let raised = Policy {
            strict_limits: true,
            ceilings: LimitRequest { timeout: Some(Duration::from_secs(120)), ..Default::default() },
            ..Policy::default()
        };
        assert_eq!(raised.admit(&plan()).unwrap().grant.limits["b"].timeout, Duration::from_secs(60));
    }

    #[test]
    fn denied_and_unlisted_components_are_refused() {
        let deny = Policy {
            nodes: NodeRules { deny: ["sha256:bb".to_owned()].into(), ..NodeRules::default() },
            ..Policy::default()
        };
        let refused = deny.admit(&plan()).unwrap_err();
        assert_eq!(refused.refusals, [Refusal::NodeDenied { node: "b".into(), component: "sha256:bb".into() }]);
        let allow = Policy {
            nodes: NodeRules { allow: Some(["sha256:aa".to_owned()].into()), ..NodeRules::default() },
            ..Policy::default()
        };
        assert_eq!(allow.admit(&plan()).unwrap_err().detail(), "node_not_allowed");
        let by_name = Policy {
            nodes: NodeRules { deny_names: ["a".to_owned()].into(), ..NodeRules::default() },
            ..Policy::default()
        };
        assert_eq!(by_name.admit(&plan()).unwrap_err().detail(), "node_name_denied");
        let mut http = plan();
        http.imports.insert("b".to_owned(), vec!["wasi:http/outgoing-handler@0.2.3".to_owned()]);
        let no_http = Policy {
            nodes: NodeRules { deny_imports: vec!["wasi:http".to_owned()], ..NodeRules::default() },
            ..Policy::default()
        };
        let refused = no_http.admit(&http).unwrap_err();
        assert_eq!(
            refused.refusals,
            [Refusal::ImportDenied { node: "b".into(), import: "wasi:http/outgoing-handler@0.2.3".into() }]
        );
        assert!(no_http.admit(&plan()).is_ok(), "a plan importing nothing denied is admitted");
    }

    #[test]
    fn the_egress_grant_is_narrowed_to_what_the_workflow_requests() {
        let operator = crate::egress::Rule::parse("https://*.example.com").unwrap();
        let other = crate::egress::Rule::parse("https://other.org").unwrap();
        let policy = Policy {
            egress: Arc::new(EgressPolicy::new(vec![operator, other], Default::default())),
            ..Policy::default()
        };
        let grant = policy.admit(&plan()).unwrap().grant;
        assert!(grant.egress.not_granted().is_empty(), "api.example.com is within *.example.com");
        assert_eq!(grant.max_parallel, 4);
    }

    #[test]
    fn require_signed_needs_a_key_and_keys_imply_signatures() {
        assert_eq!(TrustPolicy::new(Vec::new(), true).unwrap_err(), TrustError::RequireSignedWithoutKeys);
        assert_eq!(TrustPolicy::default().mode(), TrustMode::UnsignedAllowed);
        let key = crate::bundle::signature::SecretKey::from_seed([1; 32]).public();
        let keys_only = TrustPolicy::new(vec![key.clone()], false).unwrap();
        assert!(keys_only.requires_signature(), "trusted keys given: unsigned bundles are refused");
        assert_eq!(TrustPolicy::new(vec![key], true).unwrap().mode(), TrustMode::SignedOnly);
    }
}
