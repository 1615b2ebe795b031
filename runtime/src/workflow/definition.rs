//! The workflow definition (`workflow.toml`) and its validation.
//!
//! [`WorkflowDef`] is the file's shape, field for field, with unknown keys
//! rejected (the TOML parser names the key and its line). [`WorkflowDef::plan`]
//! checks everything that can be checked without running: node ids, that
//! dependencies exist and form no cycle, that input mappings only reference
//! dependencies, that limits, retries and secrets are well-formed. The result
//! is a [`Plan`]: nodes in a deterministic dependency order with their
//! resolved limits. The same checks run at pack time and at load time.
//!
//! `docs/bundle-format.md` documents the format.

use crate::sandbox::Limits;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Why a workflow definition is unusable. Every variant names where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{source_name}: {message}")]
    Parse {
        /// The file (or `bundle`) the definition came from.
        source_name: String,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A field that must not be empty is.
    #[error("`{field}` must not be empty")]
    Empty {
        /// The field's dotted path.
        field: String,
    },
    /// A node id with characters outside `[A-Za-z0-9_-]`, or a reserved one.
    #[error("node id {id:?} is not allowed: use letters, digits, `_` and `-`, and not `input`")]
    BadNodeId {
        /// The offending id.
        id: String,
    },
    /// `depends_on` names a node that does not exist.
    #[error("node `{node}` depends on `{dependency}`, which is not a node of this workflow")]
    UnknownDependency {
        /// The node with the dependency.
        node: String,
        /// The missing node.
        dependency: String,
    },
    /// The dependencies form a cycle.
    #[error("the dependencies form a cycle through: {}", nodes.join(" → "))]
    Cycle {
        /// The nodes on the cycle (or left unordered by it).
        nodes: Vec<String>,
    },
    /// An `inputs` mapping that cannot work.
    #[error("node `{node}`: inputs.{key} = {reference:?}: {reason}")]
    BadMapping {
        /// The node.
        node: String,
        /// The input key being mapped.
        key: String,
        /// The reference as written.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A limit, retry or quota value that does not parse or is out of range.
    #[error("{location} = {value:?}: {reason}")]
    BadValue {
        /// The dotted path of the value.
        location: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A node asks for a secret the workflow does not declare.
    #[error("node `{node}` names secret `{secret}`, which capabilities.secrets does not declare")]
    UndeclaredSecret {
        /// The node.
        node: String,
        /// The secret name.
        secret: String,
    },
    /// `output` names a node that does not exist.
    #[error("output = {node:?} is not a node of this workflow")]
    UnknownOutput {
        /// The name given.
        node: String,
    },
}

/// A workflow as written in `workflow.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDef {
    /// The workflow's name; also the scope of its durable state.
    pub name: String,
    /// The workflow's version, shown in run records.
    pub version: String,
    /// What the workflow does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Nodes run at the same time, at most.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: usize,
    /// The node whose output is the workflow's output. Default: the only
    /// node nothing depends on, else an object of all such nodes' outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Default limits for every node.
    #[serde(default)]
    pub limits: LimitSpec,
    /// When the daemon runs this workflow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// What the workflow asks the operator to grant.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// The nodes, by id.
    pub nodes: BTreeMap<String, NodeDef>,
}

fn default_max_parallel() -> usize {
    4
}

/// One node of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    /// The node's component file, relative to `workflow.toml`.
    pub component: String,
    /// Nodes that must succeed before this one runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The node's input, key by key: `"$input"`, `"$input.path"`, `"node"`
    /// or `"node.path"`. Without it, see `docs/bundle-format.md`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Values the node reads through the `config` import.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, serde_json::Value>,
    /// Secrets this node may read; each must be in `capabilities.secrets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Retries for retryable node errors.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Limits for this node, over the workflow's defaults.
    #[serde(default)]
    pub limits: LimitSpec,
}

/// Limits as written: sizes like `"64MiB"`, durations like `"2s"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Fuel units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory, e.g. `"64MiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Wall-clock limit per attempt, e.g. `"5s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Output JSON size, e.g. `"1MiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output: Option<String>,
    /// Captured stdout and stderr, each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stdio: Option<String>,
    /// Log bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log: Option<String>,
}

/// Retry policy for retryable node errors, with exponential backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included (1 = no retry).
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// The wait before the first retry.
    #[serde(default = "initial_backoff")]
    pub initial_backoff: String,
    /// Each later wait is the previous one times this.
    #[serde(default = "two")]
    pub multiplier: f64,
    /// No wait is longer than this.
    #[serde(default = "max_backoff")]
    pub max_backoff: String,
}

fn one() -> u32 {
    1
}
fn two() -> f64 {
    2.0
}
fn initial_backoff() -> String {
    "100ms".to_owned()
}
fn max_backoff() -> String {
    "10s".to_owned()
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec { max_attempts: 1, initial_backoff: initial_backoff(), multiplier: 2.0, max_backoff: max_backoff() }
    }
}

/// When the daemon runs the workflow. Declared here, used by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Every `every` (e.g. `"30s"`).
    Interval {
        /// The interval.
        every: String,
    },
    /// On a cron schedule, UTC unless `timezone` is given.
    Cron {
        /// A standard cron expression.
        cron: String,
        /// An IANA zone name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
    },
    /// On an HTTP POST to the daemon's webhook address.
    Webhook,
    /// Only when triggered by hand.
    Manual,
}

/// What a workflow asks for. A bundle can only ask; the operator grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Egress rules `scheme://host[:port]` the workflow asks for; the
    /// operator's grant narrowed to these is what its nodes get.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    /// The state quota.
    #[serde(default)]
    pub state: StateQuota,
    /// Names of secrets some node may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// Bounds on a workflow's durable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateQuota {
    /// Keys, at most.
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
    /// Bytes of one value, at most.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: u64,
    /// Bytes of all keys and values, at most.
    #[serde(default = "default_max_total_bytes")]
    pub max_total_bytes: u64,
}

fn default_max_keys() -> u64 {
    1_000
}
fn default_max_value_bytes() -> u64 {
    64 * 1024
}
fn default_max_total_bytes() -> u64 {
    4 * 1024 * 1024
}

impl Default for StateQuota {
    fn default() -> Self {
        StateQuota {
            max_keys: default_max_keys(),
            max_value_bytes: default_max_value_bytes(),
            max_total_bytes: default_max_total_bytes(),
        }
    }
}

/// A validated workflow: nodes in dependency order with resolved settings.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Node ids, every node after all of its dependencies; ties by id.
    pub order: Vec<String>,
    /// The limits each node requests (the workflow's `[limits]`, then the
    /// node's own); the operator's ceilings cap them when it runs.
    pub limits: BTreeMap<String, LimitRequest>,
    /// Resolved retry policy per node.
    pub retries: BTreeMap<String, RetryPolicy>,
    /// The nodes whose outputs make up the workflow's output.
    pub outputs: Vec<String>,
}

/// Limits as a bundle requests them: each `None` means "whatever the
/// operator allows". [`LimitRequest::grant`] turns a request into the limits a
/// run gets, capped by the operator's ceilings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitRequest {
    /// Fuel units.
    pub fuel: Option<u64>,
    /// Linear memory bytes.
    pub memory_bytes: Option<u64>,
    /// Wall-clock limit per attempt.
    pub timeout: Option<Duration>,
    /// Output bytes.
    pub output_bytes: Option<u64>,
    /// Captured stdout and stderr bytes, each.
    pub stdio_bytes: Option<u64>,
    /// Log bytes.
    pub log_bytes: Option<u64>,
}

impl LimitRequest {
    /// The limits a run gets: each requested value, but never more than
    /// the operator's ceiling (`ceilings`, each `None` meaning the default
    /// from [`Limits::default`]). An unrequested value gets the ceiling.
    pub fn grant(&self, ceilings: &LimitRequest) -> Limits {
        fn pick<T: Ord + Copy>(request: Option<T>, ceiling: Option<T>, default: T) -> T {
            let ceiling = ceiling.unwrap_or(default);
            request.map_or(ceiling, |r| r.min(ceiling))
        }
        let d = Limits::default();
        Limits {
            fuel: pick(self.fuel, ceilings.fuel, d.fuel),
            memory_bytes: pick(self.memory_bytes, ceilings.memory_bytes, d.memory_bytes),
            timeout: pick(self.timeout, ceilings.timeout, d.timeout),
            output_bytes: pick(self.output_bytes, ceilings.output_bytes, d.output_bytes),
            stdio_bytes: pick(self.stdio_bytes, ceilings.stdio_bytes, d.stdio_bytes),
            log_bytes: pick(self.log_bytes, ceilings.log_bytes, d.log_bytes),
            ..d
        }
    }
}

/// The longest wait a retry policy may ask for.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// A resolved retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, at least 1.
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Growth of each later wait.
    pub multiplier: f64,
    /// Cap on any wait.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.powi(attempt.saturating_sub(1) as i32);
        let wait = self.initial_backoff.as_secs_f64() * factor;
        // Both ends are validated to at most MAX_BACKOFF, so this is finite.
        Duration::try_from_secs_f64(wait.min(self.max_backoff.as_secs_f64())).unwrap_or(MAX_BACKOFF)
    }
}

impl WorkflowDef {
    /// Parses `workflow.toml` text; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<WorkflowDef, DefinitionError> {
        toml::from_str(text).map_err(|e| DefinitionError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Checks the definition and resolves it into a [`Plan`].
    pub fn plan(&self) -> Result<Plan, DefinitionError> {
        for (field, value) in [("name", &self.name), ("version", &self.version)] {
            if value.trim().is_empty() {
                return Err(DefinitionError::Empty { field: field.to_owned() });
            }
        }
        if self.nodes.is_empty() {
            return Err(DefinitionError::Empty { field: "nodes".to_owned() });
        }
        if self.max_parallel == 0 {
            return Err(bad("max_parallel", "0", "must be at least 1"));
        }
        for (index, rule) in self.capabilities.egress.iter().enumerate() {
            if let Err(e) = crate::egress::Rule::parse(rule) {
                return Err(bad(&format!("capabilities.egress[{index}]"), rule, &e.to_string()));
            }
        }
        let declared: BTreeSet<&str> = self.capabilities.secrets.iter().map(String::as_str).collect();
        for (id, node) in &self.nodes {
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
                if !self.nodes.contains_key(dependency) {
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
        let order = topological_order(&self.nodes)?;
        let defaults = resolve_limits(&LimitRequest::default(), &self.limits, "limits")?;
        let mut limits = BTreeMap::new();
        let mut retries = BTreeMap::new();
        for (id, node) in &self.nodes {
            limits.insert(id.clone(), resolve_limits(&defaults, &node.limits, &format!("nodes.{id}.limits"))?);
            retries.insert(id.clone(), resolve_retry(&node.retry, &format!("nodes.{id}.retry"))?);
        }
        let outputs = match &self.output {
            Some(node) if self.nodes.contains_key(node) => vec![node.clone()],
            Some(node) => return Err(DefinitionError::UnknownOutput { node: node.clone() }),
            None => {
                let depended: BTreeSet<&String> = self.nodes.values().flat_map(|n| &n.depends_on).collect();
                self.nodes.keys().filter(|id| !depended.contains(id)).cloned().collect()
            }
        };
        Ok(Plan { order, limits, retries, outputs })
    }
}

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
    let mut waiting: BTreeMap<&str, usize> = nodes.iter().map(|(id, n)| (id.as_str(), n.depends_on.len())).collect();
    let mut order = Vec::with_capacity(nodes.len());
    // Lowest id among the ready ones each time: a deterministic order.
    while let Some(next) = waiting.iter().find(|(_, deps)| **deps == 0).map(|(id, _)| *id) {
        waiting.remove(next);
        for (id, node) in nodes {
            if let Some(count) = waiting.get_mut(id.as_str()) {
                *count -= node.depends_on.iter().filter(|d| *d == next).count();
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

fn parse_size(location: &str, text: &str) -> Result<u64, DefinitionError> {
    text.parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .map_err(|e| bad(location, text, &format!("not a size like 64MiB: {e}")))
}

fn parse_duration(location: &str, text: &str) -> Result<Duration, DefinitionError> {
    humantime::parse_duration(text).map_err(|e| bad(location, text, &format!("not a duration like 2s: {e}")))
}

fn resolve_limits(base: &LimitRequest, spec: &LimitSpec, at: &str) -> Result<LimitRequest, DefinitionError> {
    let mut limits = *base;
    if let Some(fuel) = spec.fuel {
        limits.fuel = Some(fuel);
    }
    if let Some(text) = &spec.memory {
        limits.memory_bytes = Some(parse_size(&format!("{at}.memory"), text)?);
    }
    if let Some(text) = &spec.timeout {
        let location = format!("{at}.timeout");
        let timeout = parse_duration(&location, text)?;
        if timeout.is_zero() || timeout > Limits::MAX_TIMEOUT {
            return Err(bad(&location, text, "must be between 1ms and 7 days"));
        }
        limits.timeout = Some(timeout);
    }
    if let Some(text) = &spec.max_output {
        limits.output_bytes = Some(parse_size(&format!("{at}.max_output"), text)?);
    }
    if let Some(text) = &spec.max_stdio {
        limits.stdio_bytes = Some(parse_size(&format!("{at}.max_stdio"), text)?);
    }
    if let Some(text) = &spec.max_log {
        limits.log_bytes = Some(parse_size(&format!("{at}.max_log"), text)?);
    }
    Ok(limits)
}

fn resolve_retry(spec: &RetrySpec, at: &str) -> Result<RetryPolicy, DefinitionError> {
    if !(1..=100).contains(&spec.max_attempts) {
        return Err(bad(&format!("{at}.max_attempts"), &spec.max_attempts.to_string(), "must be 1 to 100"));
    }
    if !(1.0..=100.0).contains(&spec.multiplier) {
        return Err(bad(&format!("{at}.multiplier"), &spec.multiplier.to_string(), "must be 1.0 to 100.0"));
    }
    let backoff = |field: &str, text: &str| {
        let location = format!("{at}.{field}");
        let wait = parse_duration(&location, text)?;
        if wait > MAX_BACKOFF {
            return Err(bad(&location, text, "must be at most 1h"));
        }
        Ok(wait)
    };
    Ok(RetryPolicy {
        max_attempts: spec.max_attempts,
        initial_backoff: backoff("initial_backoff", &spec.initial_backoff)?,
        multiplier: spec.multiplier,
        max_backoff: backoff("max_backoff", &spec.max_backoff)?,
    })
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
        WorkflowDef::from_toml(text, "workflow.toml")?.plan()
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
    fn a_bundle_gets_what_it_asks_for_but_never_more_than_the_operator_allows() {
        let request =
            LimitRequest { timeout: Some(Duration::from_secs(60)), memory_bytes: Some(1024), ..Default::default() };
        let defaults = request.grant(&LimitRequest::default());
        assert_eq!(defaults.timeout, Limits::DEFAULT_TIMEOUT, "capped by the default ceiling");
        assert_eq!(defaults.memory_bytes, 1024, "asked for less: gets less");
        assert_eq!(defaults.fuel, Limits::DEFAULT_FUEL, "unrequested: gets the ceiling");
        let raised = LimitRequest { timeout: Some(Duration::from_secs(120)), ..Default::default() };
        assert_eq!(request.grant(&raised).timeout, Duration::from_secs(60));
        let huge_wait =
            GOOD.replace("retry = { max_attempts = 3 }", "retry = { max_attempts = 3, max_backoff = \"500000years\" }");
        assert!(
            matches!(with(&huge_wait).unwrap_err(), DefinitionError::BadValue { location, .. } if location.ends_with("max_backoff"))
        );
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
    }
}
