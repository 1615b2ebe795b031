//! The daemon's configuration file (`wfrun.toml`).
//!
//! Unknown keys are refused with their name and line. Relative paths
//! (`state_dir`, job bundles, trusted keys) are relative to the file's own
//! directory, so a config can be moved with what it names. Sizes and
//! durations go through the one parser ([`crate::units`], [`crate::limits`]),
//! range-checked. Every mistake is a typed [`ConfigProblem`] naming its key;
//! [`ConfigError`] adds the file. The state directory's precedence is
//! [`crate::settings::state_dir`]'s. [`DaemonConfig::policy`] turns the
//! file's operator settings into the [`Policy`] every run is admitted by.

use super::jobs::{self, JobError};
use crate::egress::{EgressPolicy, EgressSection, PolicyError};
use crate::limits::{LimitKey, LimitRequest, Limits};
use crate::manifest::{JobSpec, Trigger, TriggerError};
use crate::policy::{NodeRules, Policy, RetryError, RetryPolicy, TrustError, TrustPolicy};
use crate::units::{self, UnitError};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Everything the daemon runs with, resolved.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where the database, logs, cache and socket live.
    pub state_dir: Option<PathBuf>,
    /// Runs at once, across all jobs.
    pub max_concurrent_runs: usize,
    /// How long a stop waits for running runs before cancelling them.
    pub grace_period: Duration,
    /// The largest memory ceiling a job may have (and the default one): the
    /// size of each memory slot of the daemon's pooling allocator.
    pub max_memory_bytes: u64,
    /// Instances of costly programs (an interpreter's) made ahead of their
    /// next run, at most; 0 makes none (see `sandbox::spare`).
    pub spare_instances: u32,
    /// Retries and pausing.
    pub retry: RetryPolicy,
    /// How services (`always` jobs) are restarted and given up on.
    pub service: ServicePolicy,
    /// What a run's `/outputs` may hold.
    pub outputs: crate::limits::OutputsLimit,
    /// Where webhooks are received; `None`: no webhook listener.
    pub webhook_listen: Option<SocketAddr>,
    /// The largest webhook body accepted.
    pub webhook_max_body: u64,
    /// Where the HTTP control API listens; `None`: Unix socket only.
    pub control_http_listen: Option<SocketAddr>,
    /// The file holding its bearer token; `None`: `<state-dir>/control.token`,
    /// generated on first use.
    pub control_token_file: Option<PathBuf>,
    /// The control API's certificate chain and key (PEM); `None`: plain
    /// HTTP, allowed on a loopback address only.
    pub control_tls: Option<TlsFiles>,
    /// The egress every job's runs get (narrowed by each workflow).
    pub egress: EgressPolicy,
    /// Public keys (files or `ed25519:<hex>`) bundles may be signed by.
    pub trusted_keys: Vec<String>,
    /// Refuse unsigned bundles.
    pub require_signed: bool,
    /// Which node components may run.
    pub nodes: NodeRules,
    /// Jobs declared in the file.
    pub jobs: BTreeMap<String, JobSpec>,
    /// Pulling releases from a release origin; `None`: no sync.
    pub sync: Option<SyncSettings>,
    /// This device's id; `None`: the one made once and kept in the state
    /// directory.
    pub device_id: Option<String>,
    /// Reporting runs and release events to a receiver; `None`: no reports.
    pub report: Option<crate::report::ReportSettings>,
    /// What of the run history is kept (pruned at start and hourly).
    pub retention: crate::store::Retention,
}

/// The `[service]` table: restarts of `always` jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePolicy {
    /// The wait before the first restart, and after a run that succeeded.
    pub initial_backoff: Duration,
    /// The longest wait: each failure in a row doubles it up to this.
    pub max_backoff: Duration,
    /// Failures in a row, each within `failure_window` of the first, after
    /// which the service is paused.
    pub max_failures: u32,
    /// See `max_failures`.
    pub failure_window: Duration,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        ServicePolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_failures: 5,
            failure_window: Duration::from_secs(600),
        }
    }
}

impl ServicePolicy {
    /// The wait before restart number `failures + 1` after `failures`
    /// failures in a row (none: the initial backoff).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubled = self.initial_backoff.saturating_mul(1u32 << failures.min(20));
        doubled.min(self.max_backoff)
    }
}

/// The `[sync]` table: where releases come from and how they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    /// The release origin (serving `metadata/` and `targets/`).
    pub url: String,
    /// The channel this device follows.
    pub channel: String,
    /// Its rollout ring.
    pub ring: u32,
    /// How often the origin is polled (each wait jittered by up to a tenth).
    pub interval: Duration,
    /// The `root.json` pinned at provisioning.
    pub trusted_root: PathBuf,
    /// Successful runs of each of a release's jobs before its trial passes.
    pub trial_runs: u32,
    /// How long a trial may take to pass before the release is rolled
    /// back; `None`: no deadline.
    pub trial_deadline: Option<Duration>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: None,
            max_concurrent_runs: 4,
            grace_period: Duration::from_secs(10),
            max_memory_bytes: Limits::DEFAULT_MEMORY_BYTES,
            spare_instances: crate::sandbox::PoolingOptions::DEFAULT_SPARES,
            retry: RetryPolicy::JOB_DEFAULT,
            service: ServicePolicy::default(),
            outputs: crate::limits::OutputsLimit::default(),
            webhook_listen: None,
            webhook_max_body: 1024 * 1024,
            control_http_listen: None,
            control_token_file: None,
            control_tls: None,
            egress: EgressPolicy::deny_all(),
            trusted_keys: Vec::new(),
            require_signed: false,
            nodes: NodeRules::default(),
            jobs: BTreeMap::new(),
            sync: None,
            device_id: None,
            report: None,
            retention: crate::store::Retention::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
    retry: RetrySection,
    #[serde(default)]
    service: ServiceSection,
    #[serde(default)]
    outputs: OutputsSection,
    webhook: Option<WebhookSection>,
    control_http: Option<ControlHttpSection>,
    #[serde(default)]
    egress: EgressSection,
    #[serde(default)]
    trust: TrustSection,
    #[serde(default)]
    policy: PolicySection,
    #[serde(default)]
    jobs: BTreeMap<String, JobSection>,
    sync: Option<SyncSection>,
    #[serde(default)]
    device: DeviceSection,
    report: Option<ReportSection>,
    #[serde(default)]
    retention: RetentionSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionSection {
    max_age: Option<String>,
    max_runs: Option<u64>,
    max_log_size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportSection {
    endpoint: String,
    token_file: Option<PathBuf>,
    heartbeat: Option<String>,
    batch_reports: Option<usize>,
    batch_bytes: Option<String>,
    outbox_max_reports: Option<u64>,
    outbox_max_bytes: Option<String>,
    backoff_min: Option<String>,
    backoff_max: Option<String>,
    retry_after_max: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncSection {
    url: String,
    channel: String,
    #[serde(default)]
    ring: u32,
    interval: Option<String>,
    trusted_root: PathBuf,
    trial_runs: Option<u32>,
    trial_deadline: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceSection {
    id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    max_concurrent_runs: Option<usize>,
    grace_period: Option<String>,
    max_memory: Option<String>,
    spare_instances: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySection {
    initial_backoff: Option<String>,
    multiplier: Option<f64>,
    max_backoff: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputsSection {
    max_bytes: Option<String>,
    max_files: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
    max_failures: Option<u32>,
    failure_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    listen: Option<String>,
    max_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlHttpSection {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// A TLS certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustSection {
    #[serde(default)]
    trusted_keys: Vec<String>,
    #[serde(default)]
    require_signed: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    allow_components: Option<Vec<String>>,
    #[serde(default)]
    deny_components: Vec<String>,
    #[serde(default)]
    deny_nodes: Vec<String>,
    #[serde(default)]
    deny_imports: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSection {
    bundle: PathBuf,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    every: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    #[serde(default)]
    webhook: bool,
    #[serde(default)]
    always: bool,
    #[serde(default)]
    allow_overlap: bool,
    memory: Option<String>,
    timeout: Option<String>,
    fuel: Option<u64>,
    webhook_secret: Option<String>,
    #[serde(default)]
    outputs: bool,
}

/// What is wrong with a config file; each names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// The file cannot be read.
    #[error("{0}")]
    Read(std::io::Error),
    /// Not TOML, an unknown key, or a value of the wrong type (the parser
    /// names the key and its line).
    #[error("{0}")]
    Parse(String),
    /// A size, duration, count or address that is unusable.
    #[error("{key} = {error}")]
    Value {
        /// The dotted key, e.g. `daemon.max_memory`.
        key: String,
        /// What is wrong.
        error: ValueError,
    },
    /// A job that does not validate.
    #[error(transparent)]
    Job(#[from] JobError),
    /// A job's trigger options that do not make one trigger.
    #[error("jobs.{name}: {error}")]
    Trigger {
        /// The job.
        name: String,
        /// What is wrong.
        error: TriggerError,
    },
    /// Trust settings that cannot work.
    #[error("trust: {0}")]
    Trust(#[from] TrustError),
    /// The `[egress]` table is unusable.
    #[error("egress: {0}")]
    Egress(#[from] PolicyError),
    /// The `[control_http]` table cannot be served safely.
    #[error("control_http: {0}")]
    ControlHttp(&'static str),
}

/// What is wrong with one value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A size or duration that does not parse or is out of range.
    #[error(transparent)]
    Unit(#[from] UnitError),
    /// A retry setting out of range.
    #[error(transparent)]
    Retry(#[from] RetryError),
    /// A number out of range.
    #[error("{value} is outside {range}")]
    Range {
        /// The value.
        value: String,
        /// The allowed range.
        range: &'static str,
    },
    /// A listen address that is not `IP:PORT`.
    #[error("{value:?}: {reason} (expected IP:PORT)")]
    Address {
        /// The value.
        value: String,
        /// The parser's explanation.
        reason: String,
    },
}

/// Why a config file cannot be used: the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("config file {}: {problem}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: Box<ConfigProblem>,
}

/// The `[report]` table, checked: every value in range, the endpoint
/// TLS unless loopback.
fn report_settings(
    report: ReportSection,
    resolve: &impl Fn(PathBuf) -> PathBuf,
) -> Result<crate::report::ReportSettings, ConfigProblem> {
    crate::report::endpoint_url(&report.endpoint, crate::report::REPORTS_PATH).map_err(|e| {
        value("report.endpoint", ValueError::Address { value: report.endpoint.clone(), reason: e.reason })
    })?;
    let mut settings = crate::report::ReportSettings::new(&report.endpoint);
    settings.token_file = report.token_file.map(resolve);
    let duration =
        |key: &str, text: &Option<String>, range: std::ops::RangeInclusive<Duration>, into: &mut Duration| {
            if let Some(text) = text {
                *into = units::duration(text, range).map_err(|e| value(key, e))?;
            }
            Ok::<_, ConfigProblem>(())
        };
    let (ms, day) = (Duration::from_millis(1), Duration::from_secs(24 * 3600));
    duration("report.heartbeat", &report.heartbeat, ms * 100..=day, &mut settings.heartbeat)?;
    duration("report.backoff_min", &report.backoff_min, ms..=day, &mut settings.backoff_min)?;
    duration("report.backoff_max", &report.backoff_max, ms..=day, &mut settings.backoff_max)?;
    duration("report.retry_after_max", &report.retry_after_max, Duration::ZERO..=day, &mut settings.retry_after_max)?;
    duration("report.timeout", &report.timeout, ms * 100..=Duration::from_secs(600), &mut settings.timeout)?;
    if settings.backoff_max < settings.backoff_min {
        return Err(value(
            "report.backoff_max",
            ValueError::Range { value: format!("{:?}", settings.backoff_max), range: "at least report.backoff_min" },
        ));
    }
    let count = |key: &str, n: Option<u64>, range: std::ops::RangeInclusive<u64>, label: &'static str| match n {
        Some(n) if !range.contains(&n) => Err(value(key, ValueError::Range { value: n.to_string(), range: label })),
        other => Ok(other),
    };
    if let Some(n) = count("report.batch_reports", report.batch_reports.map(|n| n as u64), 1..=10_000, "1..=10000")? {
        settings.batch_reports = n as usize;
    }
    if let Some(n) = count("report.outbox_max_reports", report.outbox_max_reports, 10..=10_000_000, "10..=10000000")? {
        settings.outbox.max_reports = n;
    }
    if let Some(text) = &report.batch_bytes {
        settings.batch_bytes =
            units::size(text, 1024..=64 * 1024 * 1024).map_err(|e| value("report.batch_bytes", e))?;
    }
    if let Some(text) = &report.outbox_max_bytes {
        settings.outbox.max_bytes =
            units::size(text, 64 * 1024..=1 << 40).map_err(|e| value("report.outbox_max_bytes", e))?;
    }
    Ok(settings)
}

fn value(key: &str, error: impl Into<ValueError>) -> ConfigProblem {
    ConfigProblem::Value { key: key.to_owned(), error: error.into() }
}

fn address(key: &str, text: &str) -> Result<SocketAddr, ConfigProblem> {
    text.parse().map_err(|e: std::net::AddrParseError| {
        value(key, ValueError::Address { value: text.to_owned(), reason: e.to_string() })
    })
}

/// The range of a daemon's `max_memory`.
const MAX_MEMORY_RANGE: std::ops::RangeInclusive<u64> = 1024 * 1024..=64 * 1024 * 1024 * 1024;

impl DaemonConfig {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let fail = |problem| ConfigError { path: path.to_path_buf(), problem: Box::new(problem) };
        let text = crate::files::read_capped_text(path, crate::files::caps::SETTINGS)
            .map_err(|e| fail(ConfigProblem::Read(e)))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        DaemonConfig::parse(&text, &base).map_err(fail)
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<DaemonConfig, ConfigProblem> {
        let file: File = toml::from_str(text).map_err(|e| ConfigProblem::Parse(e.to_string().trim_end().to_owned()))?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let mut config = DaemonConfig { state_dir: file.state_dir.map(resolve), ..DaemonConfig::default() };
        if let Some(n) = file.daemon.max_concurrent_runs {
            if !(1..=256).contains(&n) {
                return Err(value(
                    "daemon.max_concurrent_runs",
                    ValueError::Range { value: n.to_string(), range: "1..=256" },
                ));
            }
            config.max_concurrent_runs = n;
        }
        if let Some(n) = file.daemon.spare_instances {
            if n > 16 {
                return Err(value(
                    "daemon.spare_instances",
                    ValueError::Range { value: n.to_string(), range: "0..=16" },
                ));
            }
            config.spare_instances = n;
        }
        if let Some(text) = &file.daemon.grace_period {
            config.grace_period = units::duration(text, Duration::ZERO..=Duration::from_secs(24 * 3600))
                .map_err(|e| value("daemon.grace_period", e))?;
        }
        if let Some(text) = &file.daemon.max_memory {
            config.max_memory_bytes = units::size(text, MAX_MEMORY_RANGE).map_err(|e| value("daemon.max_memory", e))?;
        }
        let retry = &file.retry;
        config.retry = RetryPolicy::JOB_DEFAULT
            .with(retry.max_attempts, retry.initial_backoff.as_deref(), retry.multiplier, retry.max_backoff.as_deref())
            .map_err(|e| value(&format!("retry.{}", e.field), e))?;
        let service = &file.service;
        let wait = |key: &str, text: &Option<String>, default: Duration| match text {
            Some(text) => units::duration(text, Duration::from_millis(10)..=Duration::from_secs(24 * 3600))
                .map_err(|e| value(&format!("service.{key}"), e)),
            None => Ok(default),
        };
        let defaults = ServicePolicy::default();
        config.service = ServicePolicy {
            initial_backoff: wait("initial_backoff", &service.initial_backoff, defaults.initial_backoff)?,
            max_backoff: wait("max_backoff", &service.max_backoff, defaults.max_backoff)?,
            max_failures: match service.max_failures {
                Some(n) if !(1..=1000).contains(&n) => {
                    return Err(value(
                        "service.max_failures",
                        ValueError::Range { value: n.to_string(), range: "1..=1000" },
                    ));
                }
                n => n.unwrap_or(defaults.max_failures),
            },
            failure_window: wait("failure_window", &service.failure_window, defaults.failure_window)?,
        };
        if config.service.max_backoff < config.service.initial_backoff {
            return Err(value(
                "service.max_backoff",
                ValueError::Range {
                    value: format!("{:?}", config.service.max_backoff),
                    range: "at least service.initial_backoff",
                },
            ));
        }
        if let Some(text) = &file.outputs.max_bytes {
            config.outputs.max_bytes =
                units::size(text, 0..=1024 * 1024 * 1024 * 1024).map_err(|e| value("outputs.max_bytes", e))?;
        }
        match file.outputs.max_files {
            Some(n) if !(1..=1_000_000).contains(&n) => {
                return Err(value(
                    "outputs.max_files",
                    ValueError::Range { value: n.to_string(), range: "1..=1000000" },
                ));
            }
            Some(n) => config.outputs.max_files = n,
            None => {}
        }
        if let Some(webhook) = &file.webhook {
            config.webhook_listen =
                Some(address("webhook.listen", webhook.listen.as_deref().unwrap_or("127.0.0.1:8787"))?);
            if let Some(text) = &webhook.max_body {
                config.webhook_max_body =
                    units::size(text, 0..=64 * 1024 * 1024).map_err(|e| value("webhook.max_body", e))?;
            }
        }
        if let Some(control) = file.control_http {
            config.control_http_listen =
                Some(address("control_http.listen", control.listen.as_deref().unwrap_or("127.0.0.1:8788"))?);
            config.control_token_file = control.token_file.map(resolve);
            config.control_tls = match (control.tls_cert, control.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert: resolve(cert), key: resolve(key) }),
                (None, None) => None,
                _ => return Err(ConfigProblem::ControlHttp("tls_cert and tls_key go together: give both or neither")),
            };
            let listen = config.control_http_listen.expect("set just above");
            if config.control_tls.is_none() && !listen.ip().is_loopback() {
                return Err(ConfigProblem::ControlHttp(
                    "listen is not a loopback address: the control API needs tls_cert and tls_key to listen there \
                     (a bearer token in plain HTTP would cross the network readable)",
                ));
            }
        }
        config.egress = file.egress.into_policy()?;
        config.trusted_keys = file
            .trust
            .trusted_keys
            .into_iter()
            .map(|k| if k.starts_with("ed25519:") { k } else { resolve(PathBuf::from(k)).display().to_string() })
            .collect();
        config.require_signed = file.trust.require_signed;
        if config.require_signed && config.trusted_keys.is_empty() {
            return Err(ConfigProblem::Trust(TrustError::RequireSignedWithoutKeys));
        }
        config.nodes = NodeRules {
            allow: file.policy.allow_components.map(|list| list.into_iter().collect::<BTreeSet<_>>()),
            deny: file.policy.deny_components.into_iter().collect(),
            deny_names: file.policy.deny_nodes.into_iter().collect(),
            deny_imports: file.policy.deny_imports,
        };
        for (name, job) in file.jobs {
            let spec = job_spec(&name, job, &resolve)?;
            jobs::validate(&name, &spec, config.max_memory_bytes)?;
            config.jobs.insert(name, spec);
        }
        if let Some(sync) = file.sync {
            crate::sync::Origin::new(&sync.url, Default::default())
                .map_err(|e| value("sync.url", ValueError::Address { value: sync.url.clone(), reason: e.reason }))?;
            let interval = match &sync.interval {
                Some(text) => units::duration(text, Duration::from_millis(200)..=Duration::from_secs(7 * 24 * 3600))
                    .map_err(|e| value("sync.interval", e))?,
                None => Duration::from_secs(300),
            };
            let trial_runs = sync.trial_runs.unwrap_or(3);
            if !(1..=1000).contains(&trial_runs) {
                return Err(value(
                    "sync.trial_runs",
                    ValueError::Range { value: trial_runs.to_string(), range: "1..=1000" },
                ));
            }
            let trial_deadline = sync
                .trial_deadline
                .as_deref()
                .map(|t| {
                    units::duration(t, Duration::from_millis(100)..=Duration::from_secs(30 * 24 * 3600))
                        .map_err(|e| value("sync.trial_deadline", e))
                })
                .transpose()?;
            config.sync = Some(SyncSettings {
                url: sync.url,
                channel: sync.channel,
                ring: sync.ring,
                interval,
                trusted_root: resolve(sync.trusted_root),
                trial_runs,
                trial_deadline,
            });
        }
        config.device_id = file.device.id;
        if let Some(report) = file.report {
            config.report = Some(report_settings(report, &resolve)?);
        }
        let retention = file.retention;
        if let Some(text) = &retention.max_age {
            config.retention.max_age =
                units::duration(text, Duration::from_secs(60)..=Duration::from_secs(100 * 365 * 86400))
                    .map_err(|e| value("retention.max_age", e))?;
        }
        if let Some(n) = retention.max_runs {
            config.retention.max_runs = n;
        }
        if let Some(text) = &retention.max_log_size {
            config.retention.max_log_bytes =
                units::size(text, 0..=u64::MAX).map_err(|e| value("retention.max_log_size", e))?;
        }
        Ok(config)
    }

    /// The operator's policy from this file: trusted keys loaded, egress,
    /// node rules, retries. Job ceilings are added per job.
    pub fn policy(&self) -> Result<Policy, TrustError> {
        Ok(Policy {
            ceilings: LimitRequest { memory_bytes: Some(self.max_memory_bytes), ..LimitRequest::default() },
            trust: TrustPolicy::load(&self.trusted_keys, self.require_signed)?,
            nodes: self.nodes.clone(),
            egress: Arc::new(self.egress.clone()),
            retry: self.retry,
            ..Policy::default()
        })
    }
}

/// A jobs file: only `[jobs.NAME]` tables, as in the config file (`wfrun
/// release add --jobs`). Bundle paths are relative to the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsFile {
    #[serde(default)]
    jobs: BTreeMap<String, JobSection>,
}

/// Reads a jobs file, checking each job as the config file's are (against
/// the largest memory ceiling any device may have).
pub fn read_jobs(path: &Path) -> Result<BTreeMap<String, JobSpec>, ConfigError> {
    let fail = |problem| ConfigError { path: path.to_path_buf(), problem: Box::new(problem) };
    let text =
        crate::files::read_capped_text(path, crate::files::caps::SETTINGS).map_err(|e| fail(ConfigProblem::Read(e)))?;
    let file: JobsFile =
        toml::from_str(&text).map_err(|e| fail(ConfigProblem::Parse(e.to_string().trim_end().to_owned())))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let mut jobs = BTreeMap::new();
    for (name, job) in file.jobs {
        let spec = job_spec(&name, job, &resolve).map_err(fail)?;
        jobs::validate(&name, &spec, *MAX_MEMORY_RANGE.end()).map_err(|e| fail(e.into()))?;
        jobs.insert(name, spec);
    }
    Ok(jobs)
}

fn job_spec(name: &str, job: JobSection, resolve: &impl Fn(PathBuf) -> PathBuf) -> Result<JobSpec, ConfigProblem> {
    let key = |field: &str| format!("jobs.{name}.{field}");
    let every = job
        .every
        .as_deref()
        .map(|e| units::duration(e, Duration::ZERO..=Duration::MAX).map_err(|error| value(&key("every"), error)))
        .transpose()?;
    let trigger = Trigger::choose(every, job.cron, job.timezone, job.webhook, job.always)
        .map_err(|error| ConfigProblem::Trigger { name: name.to_owned(), error })?;
    Ok(JobSpec {
        bundle: resolve(job.bundle),
        input: job.input.unwrap_or_else(|| "{}".to_owned()),
        args: job.args,
        trigger,
        allow_overlap: job.allow_overlap,
        memory_bytes: job
            .memory
            .as_deref()
            .map(|m| LimitKey::parse_memory(m).map_err(|e| value(&key("memory"), e)))
            .transpose()?,
        timeout: job
            .timeout
            .as_deref()
            .map(|t| LimitKey::parse_timeout(t).map_err(|e| value(&key("timeout"), e)))
            .transpose()?,
        fuel: job.fuel.map(|f| LimitKey::check_fuel(f).map_err(|e| value(&key("fuel"), e))).transpose()?,
        webhook_secret: job.webhook_secret,
        outputs: job.outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_with_paths_relative_to_the_file() {
        let config = DaemonConfig::parse(
            r#"
            state_dir = "state"
            [daemon]
            max_concurrent_runs = 2
            grace_period = "3s"
            spare_instances = 0
            [retry]
            initial_backoff = "100ms"
            max_attempts = 3
            [webhook]
            max_body = "64KiB"
            [egress]
            allow = ["https://api.example.com"]
            [policy]
            deny_components = ["sha256:00"]
            [jobs.tick]
            bundle = "dist/hello.wasm"
            input = '{"name": "tick"}'
            every = "30s"
            [jobs.nightly]
            bundle = "/abs/report.wasm"
            cron = "0 3 * * *"
            timeout = "2s"
            "#,
            Path::new("/etc/wfrun"),
        )
        .unwrap();
        assert_eq!(config.state_dir.as_deref(), Some(Path::new("/etc/wfrun/state")));
        assert_eq!((config.max_concurrent_runs, config.grace_period), (2, Duration::from_secs(3)));
        assert_eq!(config.spare_instances, 0);
        assert_eq!(DaemonConfig::default().spare_instances, 2);
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.retry.initial_backoff, Duration::from_millis(100));
        assert_eq!(config.webhook_listen, Some("127.0.0.1:8787".parse().unwrap()));
        assert_eq!(config.webhook_max_body, 64 * 1024);
        assert!(config.nodes.deny.contains("sha256:00"));
        assert_eq!(config.jobs["tick"].bundle, Path::new("/etc/wfrun/dist/hello.wasm"));
        assert_eq!(config.jobs["tick"].trigger, Trigger::Interval { every: Duration::from_secs(30) });
        assert_eq!(config.jobs["nightly"].bundle, Path::new("/abs/report.wasm"));
        assert_eq!(config.jobs["nightly"].timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn mistakes_are_typed_and_name_their_key() {
        let err = |text: &str| DaemonConfig::parse(text, Path::new(".")).unwrap_err();
        assert!(matches!(err("[daemon]\nmax_concurent_runs = 2"), ConfigProblem::Parse(_)));
        assert!(matches!(
            err("[jobs.a]\nbundle = \"x\"\nevery = \"1s\"\ncron = \"* * * * *\""),
            ConfigProblem::Trigger { error: TriggerError::NotOne, .. }
        ));
        assert!(matches!(
            err("[jobs.a]\nbundle = \"x\"\ncron = \"* *\""),
            ConfigProblem::Job(JobError::BadCron { .. })
        ));
        assert!(matches!(
            err("[webhook]\nlisten = \"localhost\""),
            ConfigProblem::Value { key, error: ValueError::Address { .. } } if key == "webhook.listen"
        ));
        assert!(matches!(
            err("[trust]\nrequire_signed = true"),
            ConfigProblem::Trust(TrustError::RequireSignedWithoutKeys)
        ));
        assert!(matches!(
            err("[daemon]\nmax_memory = \"1KiB\""),
            ConfigProblem::Value { key, error: ValueError::Unit(UnitError::OutOfRange { .. }) } if key == "daemon.max_memory"
        ));
        assert!(matches!(
            err("[jobs.a]\nbundle = \"x\"\ntimeout = \"8days\""),
            ConfigProblem::Value { key, .. } if key == "jobs.a.timeout"
        ));
        assert!(matches!(
            err("[retry]\nmax_attempts = 0"),
            ConfigProblem::Value { key, error: ValueError::Retry(_) } if key == "retry.max_attempts"
        ));
        assert!(matches!(
            err("[jobs.a]\nbundle = \"x\"\nmemory = \"1GiB\""),
            ConfigProblem::Job(JobError::MemoryOverDaemon { .. })
        ));
        assert!(matches!(
            err("[daemon]\nspare_instances = 17"),
            ConfigProblem::Value { key, error: ValueError::Range { .. } } if key == "daemon.spare_instances"
        ));
    }

    #[test]
    fn the_retention_table_sets_age_count_and_log_size() {
        let parse = |text: &str| DaemonConfig::parse(text, Path::new("."));
        assert_eq!(parse("").unwrap().retention, crate::store::Retention::default());
        let config = parse("[retention]\nmax_age = \"7days\"\nmax_runs = 10\nmax_log_size = \"10MiB\"").unwrap();
        assert_eq!(
            config.retention,
            crate::store::Retention { max_age: Duration::from_secs(7 * 86400), max_runs: 10, max_log_bytes: 10 << 20 }
        );
        assert!(matches!(parse("[retention]\nmax_agee = \"7days\""), Err(ConfigProblem::Parse(_))));
        assert!(matches!(
            parse("[retention]\nmax_age = \"1s\""),
            Err(ConfigProblem::Value { key, .. }) if key == "retention.max_age"
        ));
    }

    #[test]
    fn the_report_table_has_defaults_refuses_plain_http_off_loopback_and_unknown_keys() {
        let parse = |text: &str| DaemonConfig::parse(text, Path::new("/etc/wfrun"));
        let config =
            parse("[report]\nendpoint = \"https://fleet.example.com\"\ntoken_file = \"report.token\"").unwrap();
        let report = config.report.unwrap();
        assert_eq!(
            report,
            crate::report::ReportSettings {
                token_file: Some(PathBuf::from("/etc/wfrun/report.token")),
                ..crate::report::ReportSettings::new("https://fleet.example.com")
            }
        );
        let config = parse(
            "[report]\nendpoint = \"http://127.0.0.1:8440\"\nheartbeat = \"5s\"\nbatch_reports = 10\n\
             outbox_max_reports = 500\noutbox_max_bytes = \"1MiB\"\nretry_after_max = \"10m\"",
        )
        .unwrap();
        let report = config.report.unwrap();
        assert_eq!((report.heartbeat, report.batch_reports), (Duration::from_secs(5), 10));
        assert_eq!((report.outbox.max_reports, report.outbox.max_bytes), (500, 1 << 20));
        assert_eq!(report.retry_after_max, Duration::from_secs(600));

        let err = |text: &str| parse(text).unwrap_err();
        assert!(matches!(
            err("[report]\nendpoint = \"http://10.0.0.5:8440\""),
            ConfigProblem::Value { key, error: ValueError::Address { .. } } if key == "report.endpoint"
        ));
        assert!(matches!(err("[report]\nendpoint = \"https://f.example\"\nbatch = 3"), ConfigProblem::Parse(_)));
        assert!(matches!(err("[report]\ntoken_file = \"t\""), ConfigProblem::Parse(_)), "the endpoint is required");
        assert!(matches!(
            err("[report]\nendpoint = \"https://f.example\"\noutbox_max_reports = 1"),
            ConfigProblem::Value { key, .. } if key == "report.outbox_max_reports"
        ));
        assert!(matches!(
            err("[report]\nendpoint = \"https://f.example\"\nbackoff_min = \"10s\"\nbackoff_max = \"1s\""),
            ConfigProblem::Value { key, .. } if key == "report.backoff_max"
        ));
        assert!(matches!(
            err("[report]\nendpoint = \"https://f.example\"\nheartbeat = \"1ms\""),
            ConfigProblem::Value { key, .. } if key == "report.heartbeat"
        ));
    }
}
