//! Planning: a workflow definition checked and resolved into a [`Plan`].
//!
//! [`Plan::of`] checks everything that can be checked without running: node
//! ids, that dependencies exist and form no cycle, that input mappings only
//! reference dependencies, that egress rules parse, that limits, retries and
//! secrets are well-formed. The result holds the nodes in a deterministic
//! dependency order with the limits each requests ([`LimitRequest`], parsed
//! by the one limit parser) and its [`RetryPolicy`]. The same checks run at
//! pack time and at load time. A plain component plans as one node,
//! [`Plan::single`]. The operator's side (ceilings, what is granted) is
//! `policy`'s.

use crate::egress::Rule;
use crate::limits::{LimitKey, LimitRequest};
use crate::manifest::{DefinitionError, LimitSpec, NodeDef, RetrySpec, StateQuota, WorkflowDef};
use crate::outcome::GuestKind;
use crate::units::{self, UnitError};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The node id of a plain component run as a one-node workflow.
pub const MAIN_NODE: &str = "main";

/// A validated workflow: nodes in dependency order with resolved settings.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workflow's name (a plain component's file stem).
    pub name: String,
    /// Its version (`-` for a plain component).
    pub version: String,
    /// Workflow, node or job.
    pub kind: GuestKind,
    /// Node ids, every node after all of its dependencies; ties by id.
    pub order: Vec<String>,
    /// The limits each node requests (the workflow's `[limits]`, then the
    /// node's own); the operator's ceilings cap them when it runs.
    pub limits: BTreeMap<String, LimitRequest>,
    /// Resolved retry policy per node.
    pub retries: BTreeMap<String, RetryPolicy>,
    /// The nodes whose outputs make up the workflow's output.
    pub outputs: Vec<String>,
    /// Nodes at once, as the workflow asks.
    pub max_parallel: usize,
    /// The state quota the workflow asks for.
    pub quota: StateQuota,
    /// Whether the workflow asks for an `/outputs` directory.
    pub outputs_dir: bool,
    /// The egress a workflow requests; `None` for a plain component, which
    /// gets the operator's grant as it is.
    pub egress: Option<Vec<Rule>>,
    /// `sha256:<hex>` of each node's component, once loaded.
    pub components: BTreeMap<String, String>,
    /// Each node's component's top-level imports, once loaded.
    pub imports: BTreeMap<String, Vec<String>>,
}

impl Plan {
    /// The plan of a plain component: one node, [`MAIN_NODE`], asking for
    /// nothing (it gets the ceilings).
    pub fn single(name: String, kind: GuestKind, digest: String) -> Plan {
        Plan {
            name,
            version: "-".to_owned(),
            kind,
            order: vec![MAIN_NODE.to_owned()],
            limits: BTreeMap::from([(MAIN_NODE.to_owned(), LimitRequest::default())]),
            retries: BTreeMap::new(),
            outputs: vec![MAIN_NODE.to_owned()],
            max_parallel: 1,
            quota: StateQuota::default(),
            outputs_dir: false,
            egress: None,
            components: BTreeMap::from([(MAIN_NODE.to_owned(), digest)]),
            imports: BTreeMap::new(),
        }
    }

    /// Checks `def` and resolves it into a plan (its `components` still empty).
    pub fn of(def: &WorkflowDef) -> Result<Plan, DefinitionError> {
        for (field, value) in [("name", &def.name), ("version", &def.version)] {
            if value.trim().is_empty() {
                return Err(DefinitionError::Empty { field: field.to_owned() });
            }
        }
        if def.nodes.is_empty() {
            return Err(DefinitionError::Empty { field: "nodes".to_owned() });
        }
        if def.nodes.len() > MAX_NODES {
            return Err(bad(
                "nodes",
                &def.nodes.len().to_string(),
                &format!("a workflow has at most {MAX_NODES} nodes"),
            ));
        }
        if def.max_parallel == 0 {
            return Err(bad("max_parallel", "0", "must be at least 1"));
        }
        let mut egress = Vec::new();
        for (index, rule) in def.capabilities.egress.iter().enumerate() {
            match Rule::parse(rule) {
                Ok(rule) => egress.push(rule),
                Err(e) => return Err(bad(&format!("capabilities.egress[{index}]"), rule, &e.to_string())),
            }
        }
        let declared: BTreeSet<&str> = def.capabilities.secrets.iter().map(String::as_str).collect();
        for (id, node) in &def.nodes {
            let id_ok = !id.is_empty()
                && id != "input"
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !id_ok {
                return Err(DefinitionError::BadNodeId { id: id.clone() });
            }
            if node.component.trim().is_empty() {
                return Err(DefinitionError::Empty { field: format!("nodes.{id}.component") });
            }
            for dependency in &node.depends_on {
                if !def.nodes.contains_key(dependency) {
                    return Err(DefinitionError::UnknownDependency {
                        node: id.clone(),
                        dependency: dependency.clone(),
                    });
                }
            }
            for (key, reference) in &node.inputs {
                check_mapping(id, node, key, reference)?;
            }
            for secret in &node.secrets {
                if !declared.contains(secret.as_str()) {
                    return Err(DefinitionError::UndeclaredSecret { node: id.clone(), secret: secret.clone() });
                }
            }
        }
        let order = topological_order(&def.nodes)?;
        let defaults = resolve_limits(&LimitRequest::default(), &def.limits, "limits")?;
        let mut limits = BTreeMap::new();
        let mut retries = BTreeMap::new();
        for (id, node) in &def.nodes {
            limits.insert(id.clone(), resolve_limits(&defaults, &node.limits, &format!("nodes.{id}.limits"))?);
            retries.insert(id.clone(), resolve_retry(&node.retry, &format!("nodes.{id}.retry"))?);
        }
        let outputs = match &def.output {
            Some(node) if def.nodes.contains_key(node) => vec![node.clone()],
            Some(node) => return Err(DefinitionError::UnknownOutput { node: node.clone() }),
            None => {
                let depended: BTreeSet<&String> = def.nodes.values().flat_map(|n| &n.depends_on).collect();
                def.nodes.keys().filter(|id| !depended.contains(id)).cloned().collect()
            }
        };
        Ok(Plan {
            name: def.name.clone(),
            version: def.version.clone(),
            kind: GuestKind::Workflow,
            order,
            limits,
            retries,
            outputs,
            max_parallel: def.max_parallel,
            quota: def.capabilities.state,
            outputs_dir: def.capabilities.outputs,
            egress: Some(egress),
            components: BTreeMap::new(),
            imports: BTreeMap::new(),
        })
    }
}

/// The longest wait a retry policy may ask for.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How failed attempts are retried: a node's retryable errors (its
/// workflow's `retry` table) and a daemon job's failed runs (`[retry]`)
/// alike. Waits grow exponentially from `initial_backoff` by `multiplier`,
/// capped at `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Growth of each later wait.
    pub multiplier: f64,
    /// Cap on any wait.
    pub max_backoff: Duration,
}

/// A retry setting out of range: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value:?}: {reason}")]
pub struct RetryError {
    /// `max_attempts`, `initial_backoff`, `multiplier` or `max_backoff`.
    pub field: &'static str,
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RetryPolicy {
    /// A node's default: one attempt (100 ms, ×2, up to 10 s if raised).
    pub const NODE_DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        initial_backoff: Duration::from_millis(100),
        multiplier: 2.0,
        max_backoff: Duration::from_secs(10),
    };

    /// A daemon job's default: 5 attempts, 1 s doubling up to 30 s.
    pub const JOB_DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_secs(1),
        multiplier: 2.0,
        max_backoff: Duration::from_secs(30),
    };

    /// This policy with each given setting replaced, every one
    /// range-checked: attempts 1 to 100, multiplier 1 to 100, waits up to 1h.
    pub fn with(
        self,
        max_attempts: Option<u32>,
        initial_backoff: Option<&str>,
        multiplier: Option<f64>,
        max_backoff: Option<&str>,
    ) -> Result<RetryPolicy, RetryError> {
        let mut policy = self;
        if let Some(n) = max_attempts {
            if !(1..=100).contains(&n) {
                return Err(RetryError {
                    field: "max_attempts",
                    value: n.to_string(),
                    reason: "must be 1 to 100".into(),
                });
            }
            policy.max_attempts = n;
        }
        if let Some(m) = multiplier {
            if !(1.0..=100.0).contains(&m) {
                return Err(RetryError {
                    field: "multiplier",
                    value: m.to_string(),
                    reason: "must be 1.0 to 100.0".into(),
                });
            }
            policy.multiplier = m;
        }
        let wait = |field: &'static str, text: &str| {
            units::duration(text, Duration::ZERO..=MAX_BACKOFF).map_err(|e| RetryError {
                field,
                value: text.to_owned(),
                reason: match e {
                    UnitError::OutOfRange { .. } => "must be at most 1h".to_owned(),
                    other => other.to_string(),
                },
            })
        };
        if let Some(text) = initial_backoff {
            policy.initial_backoff = wait("initial_backoff", text)?;
        }
        if let Some(text) = max_backoff {
            policy.max_backoff = wait("max_backoff", text)?;
        }
        Ok(policy)
    }

    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        self.initial_backoff.mul_f64(factor.min(1e9)).min(self.max_backoff)
    }
}

/// The most nodes a workflow may have. Planning is linear in nodes and
/// edges; the cap bounds what one definition can cost to plan and run.
pub const MAX_NODES: usize = 10_000;

fn bad(location: &str, value: &str, reason: &str) -> DefinitionError {
    DefinitionError::BadValue { location: location.to_owned(), value: value.to_owned(), reason: reason.to_owned() }
}

/// A mapping reference: `$input[.path]` or `node[.path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    /// `None` for the workflow input, else the node id.
    pub node: Option<&'a str>,
    /// Object keys to walk into, in order.
    pub path: Vec<&'a str>,
}

impl<'a> Reference<'a> {
    /// Parses a reference; `None` if it is malformed.
    pub fn parse(text: &'a str) -> Option<Reference<'a>> {
        let mut parts = text.split('.');
        let head = parts.next()?;
        let path: Vec<&str> = parts.collect();
        if head.is_empty() || path.iter().any(|p| p.is_empty()) {
            return None;
        }
        let node = if head == "$input" { None } else { Some(head) };
        Some(Reference { node, path })
    }
}

fn check_mapping(id: &str, node: &NodeDef, key: &str, reference: &str) -> Result<(), DefinitionError> {
    let error = |reason: &str| DefinitionError::BadMapping {
        node: id.to_owned(),
        key: key.to_owned(),
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = Reference::parse(reference)
        .ok_or_else(|| error("expected `$input`, `$input.field`, `node` or `node.field`"))?;
    if let Some(source) = parsed.node
        && !node.depends_on.iter().any(|d| d == source)
    {
        return Err(error(&format!("`{source}` is not in this node's depends_on, so its output is not available")));
    }
    Ok(())
}

fn topological_order(nodes: &BTreeMap<String, NodeDef>) -> Result<Vec<String>, DefinitionError> {
    // Kahn's algorithm: each node and each dependency edge is visited once.
    let mut waiting: BTreeMap<&str, usize> = nodes.iter().map(|(id, n)| (id.as_str(), n.depends_on.len())).collect();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, node) in nodes {
        for dependency in &node.depends_on {
            dependents.entry(dependency.as_str()).or_default().push(id.as_str());
        }
    }
    let mut ready: BTreeSet<&str> = waiting.iter().filter(|(_, deps)| **deps == 0).map(|(id, _)| *id).collect();
    let mut order = Vec::with_capacity(nodes.len());
    // Lowest id among the ready ones each time: a deterministic order.
    while let Some(next) = ready.pop_first() {
        waiting.remove(next);
        for dependent in dependents.get(next).into_iter().flatten() {
            if let Some(count) = waiting.get_mut(dependent) {
                *count -= 1;
                if *count == 0 {
                    ready.insert(dependent);
                }
            }
        }
        order.push(next.to_owned());
    }
    if waiting.is_empty() {
        Ok(order)
    } else {
        Err(DefinitionError::Cycle { nodes: waiting.keys().map(|id| (*id).to_owned()).collect() })
    }
}

fn resolve_limits(base: &LimitRequest, spec: &LimitSpec, at: &str) -> Result<LimitRequest, DefinitionError> {
    let mut limits = *base;
    let fuel = spec.fuel.map(|f| f.to_string());
    let fields = [
        (LimitKey::Fuel, fuel.as_ref()),
        (LimitKey::Memory, spec.memory.as_ref()),
        (LimitKey::Timeout, spec.timeout.as_ref()),
        (LimitKey::MaxOutput, spec.max_output.as_ref()),
        (LimitKey::MaxStdio, spec.max_stdio.as_ref()),
        (LimitKey::MaxLog, spec.max_log.as_ref()),
    ];
    for (key, text) in fields {
        if let Some(text) = text {
            limits.set(key, text).map_err(|e| bad(&format!("{at}.{}", key.name()), text, &e.to_string()))?;
        }
    }
    Ok(limits)
}

fn resolve_retry(spec: &RetrySpec, at: &str) -> Result<RetryPolicy, DefinitionError> {
    RetryPolicy::NODE_DEFAULT
        .with(Some(spec.max_attempts), Some(&spec.initial_backoff), Some(spec.multiplier), Some(&spec.max_backoff))
        .map_err(|e| bad(&format!("{at}.{}", e.field), &e.value, &e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        name = "orders"
        version = "1.0.0"
        [limits]
        memory = "32MiB"
        [capabilities]
        secrets = ["TOKEN"]
        [nodes.parse]
        component = "parse.wasm"
        [nodes.total]
        component = "total.wasm"
        depends_on = ["parse"]
        inputs = { rows = "parse.rows", currency = "$input.currency" }
        secrets = ["TOKEN"]
        retry = { max_attempts = 3 }
        limits = { timeout = "2s" }
        [nodes.format]
        component = "format.wasm"
        depends_on = ["total"]
    "#;

    fn with(text: &str) -> Result<Plan, DefinitionError> {
        Plan::of(&WorkflowDef::from_toml(text, "workflow.toml")?)
    }

    #[test]
    fn a_good_definition_plans_in_dependency_order() {
        let plan = with(GOOD).unwrap();
        assert_eq!(plan.order, ["parse", "total", "format"]);
        assert_eq!(plan.outputs, ["format"]);
        assert_eq!(plan.limits["total"].timeout, Some(Duration::from_secs(2)));
        assert_eq!(plan.limits["total"].memory_bytes, Some(32 * 1024 * 1024), "inherits the workflow default");
        assert_eq!(plan.limits["total"].fuel, None, "unrequested: the operator decides");
        assert_eq!(plan.retries["total"].max_attempts, 3);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name_and_line() {
        let text = GOOD.replace("[nodes.format]", "[nodes.format]\ncolour = \"red\"");
        let err = with(&text).unwrap_err();
        let DefinitionError::Parse { message, .. } = &err else { panic!("{err:?}") };
        assert!(message.contains("colour") && message.contains("line"), "{message}");
    }

    #[test]
    fn cycles_unknown_dependencies_and_bad_mappings_are_each_named() {
        let cycle = GOOD.replace("component = \"parse.wasm\"", "component = \"parse.wasm\"\ndepends_on = [\"format\"]");
        assert!(matches!(with(&cycle).unwrap_err(), DefinitionError::Cycle { nodes } if nodes.len() == 3));
        let unknown = GOOD.replace("depends_on = [\"total\"]", "depends_on = [\"totl\"]");
        assert!(
            matches!(with(&unknown).unwrap_err(), DefinitionError::UnknownDependency { dependency, .. } if dependency == "totl")
        );
        let not_a_dependency = GOOD.replace("rows = \"parse.rows\"", "rows = \"format.rows\"");
        assert!(
            matches!(with(&not_a_dependency).unwrap_err(), DefinitionError::BadMapping { key, .. } if key == "rows")
        );
        let malformed = GOOD.replace("rows = \"parse.rows\"", "rows = \"parse..rows\"");
        assert!(matches!(with(&malformed).unwrap_err(), DefinitionError::BadMapping { .. }));
    }

    #[test]
    fn bad_values_name_their_location() {
        let text = GOOD.replace("timeout = \"2s\"", "timeout = \"soon\"");
        assert!(
            matches!(with(&text).unwrap_err(), DefinitionError::BadValue { location, .. } if location == "nodes.total.limits.timeout")
        );
        let text = GOOD.replace("secrets = [\"TOKEN\"]\n        retry", "secrets = [\"OTHER\"]\n        retry");
        assert!(
            matches!(with(&text).unwrap_err(), DefinitionError::UndeclaredSecret { secret, .. } if secret == "OTHER")
        );
        let text = GOOD.replace("[nodes.parse]", "[nodes.input]");
        assert!(matches!(with(&text).unwrap_err(), DefinitionError::BadNodeId { .. }));
    }

    #[test]
    fn waits_that_cannot_be_right_are_refused_with_their_location() {
        let huge_wait =
            GOOD.replace("retry = { max_attempts = 3 }", "retry = { max_attempts = 3, max_backoff = \"500000years\" }");
        assert!(
            matches!(with(&huge_wait).unwrap_err(), DefinitionError::BadValue { location, .. } if location.ends_with("max_backoff"))
        );
        let zero = GOOD.replace("limits = { timeout = \"2s\" }", "limits = { timeout = \"0s\" }");
        assert!(
            matches!(with(&zero).unwrap_err(), DefinitionError::BadValue { location, .. } if location == "nodes.total.limits.timeout")
        );
    }

    #[test]
    fn a_long_chain_plans_in_order_and_more_nodes_than_the_cap_are_refused() {
        let chain = |n: usize| {
            let mut text = String::from("name = \"chain\"\nversion = \"1\"\n");
            for i in 0..n {
                text += &format!("[nodes.n{i:05}]\ncomponent = \"c.wasm\"\n");
                if i > 0 {
                    text += &format!("depends_on = [\"n{:05}\"]\n", i - 1);
                }
            }
            text
        };
        let plan = with(&chain(MAX_NODES)).unwrap();
        assert_eq!(plan.order.len(), MAX_NODES);
        assert!(plan.order.windows(2).all(|w| w[0] < w[1]), "each after the one it depends on");
        let refused = with(&chain(MAX_NODES + 1)).unwrap_err();
        assert!(matches!(refused, DefinitionError::BadValue { .. }), "{refused}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(300),
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(300));
        assert_eq!(policy.backoff(1000), Duration::from_millis(300), "a huge attempt count cannot overflow");
    }

    #[test]
    fn job_backoff_doubles_up_to_the_cap() {
        let waits: Vec<u64> = (1..=7).map(|a| RetryPolicy::JOB_DEFAULT.backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    }
}
