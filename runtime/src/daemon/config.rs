//! The daemon's configuration file (`wfrun.toml`).
//!
//! Unknown keys are refused with their name and line. Relative paths
//! (`state_dir`, job bundles, trusted keys) are relative to the file's own
//! directory, so a config can be moved with what it names. Precedence for the
//! state directory: `--state-dir`, then `WFRUN_DIR`, then `state_dir` here,
//! then the default (`docs/operations.md`).

use super::jobs::{JobSpec, Trigger};
use crate::egress::{EgressPolicy, EgressSection};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How failed runs are retried and when a job is paused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// Each later wait is the previous one times this.
    pub multiplier: f64,
    /// The longest wait.
    pub max_backoff: Duration,
    /// Attempts per trigger, the first included; a job whose last
    /// `max_attempts` runs all failed is paused.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(30),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        self.initial_backoff.mul_f64(factor.min(1e9)).min(self.max_backoff)
    }
}

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
    /// Retries and pausing.
    pub retry: RetryPolicy,
    /// Where webhooks are received; `None`: no webhook listener.
    pub webhook_listen: Option<SocketAddr>,
    /// The largest webhook body accepted.
    pub webhook_max_body: u64,
    /// Where the HTTP control API listens; `None`: Unix socket only.
    pub control_http_listen: Option<SocketAddr>,
    /// The file holding its bearer token; `None`: `<state-dir>/control.token`,
    /// generated on first use.
    pub control_token_file: Option<PathBuf>,
    /// The egress every job's runs get (narrowed by each workflow).
    pub egress: EgressPolicy,
    /// Public keys (files or `ed25519:<hex>`) bundles may be signed by.
    pub trusted_keys: Vec<String>,
    /// Refuse unsigned bundles.
    pub require_signed: bool,
    /// Jobs declared in the file.
    pub jobs: BTreeMap<String, JobSpec>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: None,
            max_concurrent_runs: 4,
            grace_period: Duration::from_secs(10),
            max_memory_bytes: crate::sandbox::Limits::DEFAULT_MEMORY_BYTES,
            retry: RetryPolicy::default(),
            webhook_listen: None,
            webhook_max_body: 1024 * 1024,
            control_http_listen: None,
            control_token_file: None,
            egress: EgressPolicy::deny_all(),
            trusted_keys: Vec::new(),
            require_signed: false,
            jobs: BTreeMap::new(),
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
    webhook: Option<WebhookSection>,
    control_http: Option<ControlHttpSection>,
    #[serde(default)]
    egress: EgressSection,
    #[serde(default)]
    trust: TrustSection,
    #[serde(default)]
    jobs: BTreeMap<String, JobSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    max_concurrent_runs: Option<usize>,
    grace_period: Option<String>,
    max_memory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySection {
    initial_backoff: Option<String>,
    multiplier: Option<f64>,
    max_backoff: Option<String>,
    max_attempts: Option<u32>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustSection {
    #[serde(default)]
    trusted_keys: Vec<String>,
    #[serde(default)]
    require_signed: bool,
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
    allow_overlap: bool,
    memory: Option<String>,
    timeout: Option<String>,
    fuel: Option<u64>,
    webhook_secret: Option<String>,
}

/// Why a config file cannot be used; the message names the file and key.
#[derive(Debug, thiserror::Error)]
#[error("config file {path}: {reason}")]
pub struct ConfigError {
    path: String,
    reason: String,
}

fn duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{key} = {text:?}: {e}"))
}

fn size(key: &str, text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>().map(|s| s.as_u64()).map_err(|e| format!("{key} = {text:?}: {e}"))
}

impl DaemonConfig {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let fail = |reason: String| ConfigError { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        DaemonConfig::parse(&text, &base).map_err(fail)
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<DaemonConfig, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let mut config = DaemonConfig { state_dir: file.state_dir.map(resolve), ..DaemonConfig::default() };
        if let Some(n) = file.daemon.max_concurrent_runs {
            if !(1..=256).contains(&n) {
                return Err(format!("daemon.max_concurrent_runs = {n} is outside 1..=256"));
            }
            config.max_concurrent_runs = n;
        }
        if let Some(text) = &file.daemon.grace_period {
            config.grace_period = duration("daemon.grace_period", text)?;
        }
        if let Some(text) = &file.daemon.max_memory {
            config.max_memory_bytes = size("daemon.max_memory", text)?;
            if !(1024 * 1024..=64 * 1024 * 1024 * 1024).contains(&config.max_memory_bytes) {
                return Err(format!("daemon.max_memory = {text:?} is outside 1MiB..=64GiB"));
            }
        }
        let retry = &file.retry;
        for (key, text, field) in [
            ("retry.initial_backoff", &retry.initial_backoff, &mut config.retry.initial_backoff),
            ("retry.max_backoff", &retry.max_backoff, &mut config.retry.max_backoff),
        ] {
            if let Some(text) = text {
                let value = duration(key, text)?;
                if value > Duration::from_secs(3600) {
                    return Err(format!("{key} = {text:?} is more than 1h"));
                }
                *field = value;
            }
        }
        if let Some(m) = retry.multiplier {
            if !(1.0..=100.0).contains(&m) {
                return Err(format!("retry.multiplier = {m} is outside 1..=100"));
            }
            config.retry.multiplier = m;
        }
        if let Some(n) = retry.max_attempts {
            if !(1..=100).contains(&n) {
                return Err(format!("retry.max_attempts = {n} is outside 1..=100"));
            }
            config.retry.max_attempts = n;
        }
        if let Some(webhook) = &file.webhook {
            let listen = webhook.listen.as_deref().unwrap_or("127.0.0.1:8787");
            config.webhook_listen =
                Some(listen.parse().map_err(|e| format!("webhook.listen = {listen:?}: {e} (expected IP:PORT)"))?);
            if let Some(text) = &webhook.max_body {
                config.webhook_max_body = size("webhook.max_body", text)?;
            }
        }
        if let Some(control) = file.control_http {
            let listen = control.listen.as_deref().unwrap_or("127.0.0.1:8788");
            config.control_http_listen =
                Some(listen.parse().map_err(|e| format!("control_http.listen = {listen:?}: {e} (expected IP:PORT)"))?);
            config.control_token_file = control.token_file.map(resolve);
        }
        config.egress = file.egress.into_policy().map_err(|e| e.to_string())?;
        config.trusted_keys = file
            .trust
            .trusted_keys
            .into_iter()
            .map(|k| if k.starts_with("ed25519:") { k } else { resolve(PathBuf::from(k)).display().to_string() })
            .collect();
        config.require_signed = file.trust.require_signed;
        if config.require_signed && config.trusted_keys.is_empty() {
            return Err("trust.require_signed needs trust.trusted_keys".to_owned());
        }
        for (name, job) in file.jobs {
            let every = job.every.as_deref().map(|e| duration(&format!("jobs.{name}.every"), e)).transpose()?;
            let trigger =
                Trigger::choose(every, job.cron.clone(), job.webhook).map_err(|e| format!("jobs.{name}: {e}"))?;
            let spec = JobSpec {
                bundle: resolve(job.bundle),
                input: job.input.unwrap_or_else(|| "{}".to_owned()),
                args: job.args,
                trigger,
                timezone: job.timezone,
                allow_overlap: job.allow_overlap,
                memory_bytes: job.memory.as_deref().map(|m| size(&format!("jobs.{name}.memory"), m)).transpose()?,
                timeout: job.timeout.as_deref().map(|t| duration(&format!("jobs.{name}.timeout"), t)).transpose()?,
                fuel: job.fuel,
                webhook_secret: job.webhook_secret,
            };
            spec.validate(&name)?;
            config.check_memory(&name, &spec)?;
            config.jobs.insert(name, spec);
        }
        Ok(config)
    }
}

impl DaemonConfig {
    /// Refuses a job whose memory ceiling is larger than the daemon's slots.
    pub fn check_memory(&self, name: &str, spec: &JobSpec) -> Result<(), String> {
        match spec.memory_bytes {
            Some(memory) if memory > self.max_memory_bytes => Err(format!(
                "job {name}: memory {memory} bytes is more than the daemon's max_memory ({} bytes); raise [daemon] max_memory",
                self.max_memory_bytes
            )),
            _ => Ok(()),
        }
    }
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
            [retry]
            initial_backoff = "100ms"
            max_attempts = 3
            [webhook]
            max_body = "64KiB"
            [egress]
            allow = ["https://api.example.com"]
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
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.webhook_listen, Some("127.0.0.1:8787".parse().unwrap()));
        assert_eq!(config.webhook_max_body, 64 * 1024);
        assert_eq!(config.jobs["tick"].bundle, Path::new("/etc/wfrun/dist/hello.wasm"));
        assert_eq!(config.jobs["tick"].trigger, Trigger::Every(Duration::from_secs(30)));
        assert_eq!(config.jobs["nightly"].bundle, Path::new("/abs/report.wasm"));
        assert_eq!(config.jobs["nightly"].timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| DaemonConfig::parse(text, Path::new(".")).unwrap_err();
        assert!(err("[daemon]\nmax_concurent_runs = 2").contains("max_concurent_runs"));
        assert!(err("[jobs.a]\nbundle = \"x\"\nevery = \"1s\"\ncron = \"* * * * *\"").contains("one of"));
        assert!(err("[jobs.a]\nbundle = \"x\"\ncron = \"* *\"").contains("five fields"));
        assert!(err("[webhook]\nlisten = \"localhost\"").contains("IP:PORT"));
        assert!(err("[trust]\nrequire_signed = true").contains("trusted_keys"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetryPolicy::default();
        let waits: Vec<u64> = (1..=7).map(|a| retry.backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    }
}
