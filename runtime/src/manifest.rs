//! The workflow and job formats: what a `workflow.toml`, a bundle's
//! embedded definition and a job definition say, field for field.
//!
//! [`WorkflowDef`] is a workflow as written (nodes, limit requests as text,
//! retries, requested [`Capabilities`], declared [`Trigger`]s), with unknown
//! keys refused; [`WorkflowDef::from_toml`] parses one. [`JobSpec`] is one
//! job of the daemon (a bundle, its input, one [`Trigger`], ceilings), as the
//! config file, `wfrun jobs add` and the control protocol give it. Planning
//! (validation, resolution into limits and retry policies) lives with the
//! executor in `workflow`; due times live with the daemon's scheduler. This
//! module imports nothing of the crate, so every layer may use it.
//!
//! `docs/bundle-format.md` documents the workflow format,
//! `docs/operations.md` the job format.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
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
    /// A writable `/outputs` directory for the run, kept with it (capped by
    /// the operator in bytes and files).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outputs: bool,
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

/// When something runs: declared in a workflow (`[[triggers]]`) and given
/// to every daemon job. Serialised in bundles as `{"kind": "interval",
/// "every": "30s"}`, `{"kind": "cron", "cron": "0 3 * * *", "timezone":
/// "Europe/Paris"}`, `{"kind": "webhook"}`, `{"kind": "manual"}` or
/// `{"kind": "always"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Every `every` (e.g. `"30s"`).
    Interval {
        /// The interval.
        #[serde(with = "duration_text")]
        every: Duration,
    },
    /// On a five-field cron expression, in UTC unless `timezone` is given.
    Cron {
        /// A standard cron expression.
        cron: String,
        /// An IANA zone name, e.g. `Europe/Paris`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
    },
    /// On an HTTP POST to the daemon's webhook address.
    Webhook,
    /// Only when triggered by hand.
    Manual,
    /// A service: started with the daemon (or when added), restarted
    /// whenever its run ends, with backoff; paused after too many failures
    /// in a row.
    Always,
}

/// Why the trigger options of a job do not make one trigger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// More than one of `every`, `cron`, `webhook` and `always`.
    #[error("give one of `every`, `cron`, `webhook` and `always`")]
    NotOne,
    /// A time zone without a cron expression.
    #[error("a timezone applies to cron jobs only")]
    TimezoneWithoutCron,
}

impl Trigger {
    /// The trigger chosen by at most one of `every`, `cron`, `webhook` and
    /// `always`; none of them is manual. `timezone` goes with `cron` only.
    pub fn choose(
        every: Option<Duration>,
        cron: Option<String>,
        timezone: Option<String>,
        webhook: bool,
        always: bool,
    ) -> Result<Trigger, TriggerError> {
        let trigger = match (every, cron, webhook, always) {
            (Some(every), None, false, false) => Trigger::Interval { every },
            (None, Some(cron), false, false) => return Ok(Trigger::Cron { cron, timezone }),
            (None, None, true, false) => Trigger::Webhook,
            (None, None, false, true) => Trigger::Always,
            (None, None, false, false) => Trigger::Manual,
            _ => return Err(TriggerError::NotOne),
        };
        match timezone {
            Some(_) => Err(TriggerError::TimezoneWithoutCron),
            None => Ok(trigger),
        }
    }
}

impl fmt::Display for Trigger {
    /// The trigger in words: `every 30s`, `cron "*/5 * * * *" (UTC)`,
    /// `webhook`, `manual`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Interval { every } => write!(f, "every {}", humantime::format_duration(*every)),
            Trigger::Cron { cron, timezone } => write!(f, "cron \"{cron}\" ({})", timezone.as_deref().unwrap_or("UTC")),
            Trigger::Webhook => f.write_str("webhook"),
            Trigger::Manual => f.write_str("manual"),
            Trigger::Always => f.write_str("always (a service)"),
        }
    }
}

/// One daemon job: a bundle, what to give it, when to run it, and the
/// ceilings its runs get. Its JSON form (the control protocol's `jobs.add`
/// and the `jobs` table) writes the trigger as `{"every": "30s"}`, `{"cron":
/// "..."}` (with `timezone` beside it), `"webhook"` or `"manual"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "wire::JobSpec", into = "wire::JobSpec")]
pub struct JobSpec {
    /// The bundle to run (absolute, or relative to the daemon's working
    /// directory for CLI jobs and to the config file for config jobs).
    pub bundle: PathBuf,
    /// Input JSON text for a node or workflow.
    pub input: String,
    /// Arguments for a job (a WASI command).
    pub args: Vec<String>,
    /// What starts it.
    pub trigger: Trigger,
    /// Let a new run start while the last one is still running.
    pub allow_overlap: bool,
    /// Memory ceiling for its nodes, in bytes.
    pub memory_bytes: Option<u64>,
    /// Wall-clock ceiling per node attempt.
    pub timeout: Option<Duration>,
    /// Fuel ceiling per node attempt.
    pub fuel: Option<u64>,
    /// HMAC-SHA256 key for webhook signatures (hex); unsigned POSTs are
    /// refused when set.
    pub webhook_secret: Option<String>,
    /// Give each run a writable `/outputs` directory, kept with the run.
    pub outputs: bool,
}

impl JobSpec {
    /// A manual job running `bundle` with input `{}` and no ceilings.
    pub fn manual(bundle: impl Into<PathBuf>) -> JobSpec {
        JobSpec {
            bundle: bundle.into(),
            input: "{}".to_owned(),
            args: Vec::new(),
            trigger: Trigger::Manual,
            allow_overlap: false,
            memory_bytes: None,
            timeout: None,
            fuel: None,
            webhook_secret: None,
            outputs: false,
        }
    }
}

/// The JSON form of a job, kept as it was before triggers had one type.
mod wire {
    use super::duration_text;
    use serde::{Deserialize, Serialize};
    use std::path::PathBuf;
    use std::time::Duration;

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Trigger {
        Every(#[serde(with = "duration_text")] Duration),
        Cron(String),
        Webhook,
        Manual,
        Always,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct JobSpec {
        pub bundle: PathBuf,
        #[serde(default = "empty_object")]
        pub input: String,
        #[serde(default)]
        pub args: Vec<String>,
        pub trigger: Trigger,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timezone: Option<String>,
        #[serde(default)]
        pub allow_overlap: bool,
        #[serde(default)]
        pub memory_bytes: Option<u64>,
        #[serde(default, with = "duration_text::option")]
        pub timeout: Option<Duration>,
        #[serde(default)]
        pub fuel: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub webhook_secret: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub outputs: bool,
    }

    fn empty_object() -> String {
        "{}".to_owned()
    }

    impl TryFrom<JobSpec> for super::JobSpec {
        type Error = super::TriggerError;

        fn try_from(wire: JobSpec) -> Result<Self, Self::Error> {
            let trigger = match wire.trigger {
                Trigger::Every(every) => super::Trigger::choose(Some(every), None, wire.timezone, false, false)?,
                Trigger::Cron(cron) => super::Trigger::Cron { cron, timezone: wire.timezone },
                Trigger::Webhook => super::Trigger::choose(None, None, wire.timezone, true, false)?,
                Trigger::Manual => super::Trigger::choose(None, None, wire.timezone, false, false)?,
                Trigger::Always => super::Trigger::choose(None, None, wire.timezone, false, true)?,
            };
            Ok(super::JobSpec {
                bundle: wire.bundle,
                input: wire.input,
                args: wire.args,
                trigger,
                allow_overlap: wire.allow_overlap,
                memory_bytes: wire.memory_bytes,
                timeout: wire.timeout,
                fuel: wire.fuel,
                webhook_secret: wire.webhook_secret,
                outputs: wire.outputs,
            })
        }
    }

    impl From<super::JobSpec> for JobSpec {
        fn from(spec: super::JobSpec) -> Self {
            let (trigger, timezone) = match spec.trigger {
                super::Trigger::Interval { every } => (Trigger::Every(every), None),
                super::Trigger::Cron { cron, timezone } => (Trigger::Cron(cron), timezone),
                super::Trigger::Webhook => (Trigger::Webhook, None),
                super::Trigger::Manual => (Trigger::Manual, None),
                super::Trigger::Always => (Trigger::Always, None),
            };
            JobSpec {
                bundle: spec.bundle,
                input: spec.input,
                args: spec.args,
                trigger,
                timezone,
                allow_overlap: spec.allow_overlap,
                memory_bytes: spec.memory_bytes,
                timeout: spec.timeout,
                fuel: spec.fuel,
                webhook_secret: spec.webhook_secret,
                outputs: spec.outputs,
            }
        }
    }
}

/// The release document of a channel: what a device activates. It is a
/// TUF target (`releases/CHANNEL.json`) of the release repository, so its
/// every byte is covered by signed metadata. `docs/releases.md` documents it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseDocument {
    /// [`RELEASE_FORMAT`].
    pub format: u32,
    /// The channel, e.g. `stable`.
    pub channel: String,
    /// The release's version (semver).
    pub version: String,
    /// The bundles, as TUF targets.
    pub bundles: Vec<ReleaseBundle>,
    /// The jobs that run them; each job's `bundle` is a bundle's target name.
    #[serde(default)]
    pub jobs: BTreeMap<String, JobSpec>,
    /// The policy the release needs, as its policy file's tables (e.g. `egress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// The oldest runner that may activate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_runner_version: Option<String>,
    /// The rollout ring: devices in rings up to this one take it.
    #[serde(default)]
    pub ring: u32,
    /// Whether it may replace a higher version on a device.
    #[serde(default)]
    pub rollback_approved: bool,
    /// The job whose success passes the release's trial (triggered once
    /// at activation), instead of every job's first runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// The version of the release document layout this wfrun writes and reads.
pub const RELEASE_FORMAT: u32 = 1;

/// One bundle of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBundle {
    /// Its file name as given to `wfrun release add`.
    pub name: String,
    /// Its TUF target name.
    pub target: String,
    /// Its length in bytes.
    pub length: u64,
    /// `sha256:<hex>`.
    pub digest: String,
}

impl WorkflowDef {
    /// Parses `workflow.toml` text; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<WorkflowDef, DefinitionError> {
        toml::from_str(text).map_err(|e| DefinitionError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }
}

/// Serde for durations as humantime text (`30s`, `5m`).
pub mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes `30s`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads `30s`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use super::*;

        /// Writes `30s` or nothing.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Reads `30s` or nothing.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| {
                    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
                })
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_specs_keep_their_json_form() {
        let mut job = JobSpec::manual("x.wasm");
        job.trigger = Trigger::Interval { every: Duration::from_secs(30) };
        job.timeout = Some(Duration::from_millis(1500));
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains(r#""trigger":{"every":"30s"}"#), "{text}");
        assert_eq!(serde_json::from_str::<JobSpec>(&text).unwrap(), job);
        let cron = r#"{"bundle":"x.wasm","trigger":{"cron":"0 3 * * *"},"timezone":"Europe/Paris"}"#;
        let parsed: JobSpec = serde_json::from_str(cron).unwrap();
        assert_eq!(parsed.trigger, Trigger::Cron { cron: "0 3 * * *".into(), timezone: Some("Europe/Paris".into()) });
        assert_eq!(serde_json::from_str::<JobSpec>(&serde_json::to_string(&parsed).unwrap()).unwrap(), parsed);
        let zone_without_cron = r#"{"bundle":"x.wasm","trigger":"manual","timezone":"Europe/Paris"}"#;
        assert!(serde_json::from_str::<JobSpec>(zone_without_cron).is_err());
    }

    #[test]
    fn workflow_triggers_keep_their_bundle_form() {
        let def = WorkflowDef::from_toml(
            "name = \"w\"\nversion = \"1\"\n[[triggers]]\nkind = \"interval\"\nevery = \"30s\"\n\
             [[triggers]]\nkind = \"cron\"\ncron = \"0 3 * * *\"\n[nodes.a]\ncomponent = \"a.wasm\"",
            "test",
        )
        .unwrap();
        assert_eq!(def.triggers[0], Trigger::Interval { every: Duration::from_secs(30) });
        let json = serde_json::to_string(&def.triggers).unwrap();
        assert_eq!(json, r#"[{"kind":"interval","every":"30s"},{"kind":"cron","cron":"0 3 * * *"}]"#);
        assert_eq!(def.triggers[1].to_string(), "cron \"0 3 * * *\" (UTC)");
    }

    #[test]
    fn one_trigger_at_most() {
        assert_eq!(Trigger::choose(None, None, None, false, false).unwrap(), Trigger::Manual);
        assert_eq!(
            Trigger::choose(Some(Duration::from_secs(1)), Some("* * * * *".into()), None, false, false),
            Err(TriggerError::NotOne)
        );
        assert_eq!(Trigger::choose(None, None, None, true, true), Err(TriggerError::NotOne));
        assert_eq!(Trigger::choose(None, None, None, false, true).unwrap(), Trigger::Always);
        assert_eq!(
            Trigger::choose(None, None, Some("UTC".into()), true, false),
            Err(TriggerError::TimezoneWithoutCron)
        );
    }
}
