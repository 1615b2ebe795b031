//! Which daemon a control command talks to: the local one (the state
//! directory's socket), or a remote one over its HTTP control API.
//!
//! Precedence, first that applies:
//!
//! 1. `--remote URL` (or `WFRUN_REMOTE`): that daemon, with `--token-file`
//!    (or `WFRUN_TOKEN_FILE`) and `--ca-file` (or `WFRUN_CA_FILE`);
//! 2. `--profile NAME` (or `WFRUN_PROFILE`): that profile of the client
//!    config file, its `token_file` and `ca_file` overridden by the flags;
//! 3. an explicit `--state-dir`: the local daemon of that directory;
//! 4. the client config's `default_profile`, if it names one;
//! 5. the local daemon of the state directory (`WFRUN_DIR`, …).
//!
//! The client config file is `WFRUN_CLIENT_CONFIG`, else
//! `$XDG_CONFIG_HOME/wfrun/client.toml`, else `~/.config/wfrun/client.toml`;
//! relative paths in it are read against its directory.

use super::GlobalArgs;
use crate::daemon::control::{Endpoint, Remote};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Flags choosing the daemon.
#[derive(Debug, Clone, Default, Args)]
pub struct TargetArgs {
    /// Talk to the daemon whose control API is at URL (https://HOST:PORT)
    /// instead of the local one.
    #[arg(long, global = true, value_name = "URL", env = "WFRUN_REMOTE", help_heading = "Daemon")]
    remote: Option<String>,
    /// The file holding the remote daemon's control token.
    #[arg(long, global = true, value_name = "FILE", env = "WFRUN_TOKEN_FILE", help_heading = "Daemon")]
    token_file: Option<PathBuf>,
    /// PEM certificate(s) to trust for the remote daemon's TLS, beside the
    /// system's web roots (a private CA, or the daemon's own certificate).
    #[arg(long, global = true, value_name = "FILE", env = "WFRUN_CA_FILE", help_heading = "Daemon")]
    ca_file: Option<PathBuf>,
    /// Use this profile of the client config file (~/.config/wfrun/client.toml).
    #[arg(long, global = true, value_name = "NAME", env = "WFRUN_PROFILE", help_heading = "Daemon")]
    profile: Option<String>,
}

/// Why no daemon could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The client config file is unreadable or malformed.
    #[error("client config {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// No such profile.
    #[error("client config {path}: no profile {name:?} (profiles: {known})")]
    NoProfile {
        /// The file.
        path: String,
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// The remote is unusable.
    #[error(transparent)]
    Endpoint(#[from] crate::daemon::control::EndpointError),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    default_profile: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    url: String,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

/// The client config file's path.
fn config_path() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("WFRUN_CLIENT_CONFIG")
        .or_else(|| env("XDG_CONFIG_HOME").map(|d| d.join("wfrun").join("client.toml")))
        .or_else(|| env("HOME").map(|h| h.join(".config").join("wfrun").join("client.toml")))
}

fn read_config(path: &Path) -> Result<Option<ClientConfig>, TargetError> {
    let problem = |reason: String| TargetError::Config { path: path.display().to_string(), reason };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(problem(e.to_string())),
    };
    toml::from_str(&text).map(Some).map_err(|e| problem(e.to_string()))
}

impl TargetArgs {
    /// Whether a remote daemon is asked for by a flag, the environment or
    /// the client config (a `runs` command then reads the history there,
    /// not in the local database).
    pub fn wants_remote(&self, global: &GlobalArgs) -> Result<bool, TargetError> {
        if self.remote.is_some() || self.profile.is_some() {
            return Ok(true);
        }
        if global.state_dir.is_some() {
            return Ok(false);
        }
        let Some(path) = config_path() else { return Ok(false) };
        Ok(read_config(&path)?.is_some_and(|c| c.default_profile.is_some()))
    }

    /// The daemon to talk to, by the precedence in the module's docs.
    pub fn endpoint(&self, global: &GlobalArgs) -> Result<Endpoint, TargetError> {
        if let Some(url) = &self.remote {
            return Ok(Endpoint::Remote(Remote::new(url, self.token_file.as_deref(), self.ca_file.as_deref())?));
        }
        let path = config_path();
        let config = match &path {
            Some(path) => read_config(path)?,
            None => None,
        };
        let default = || match global.state_dir {
            // `--state-dir` names a local daemon: the default profile waits.
            Some(_) => None,
            None => config.as_ref().and_then(|c| c.default_profile.clone()),
        };
        let name = self.profile.clone().or_else(default);
        let Some(name) = name else { return Ok(Endpoint::Local(global.state_dir())) };
        let path = path.unwrap_or_default();
        let shown = path.display().to_string();
        let config = config.unwrap_or_default();
        let Some(profile) = config.profiles.get(&name) else {
            let known = config.profiles.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(TargetError::NoProfile { path: shown, name, known });
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let relative = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
        let token_file = self.token_file.clone().or_else(|| profile.token_file.as_ref().map(relative));
        let ca_file = self.ca_file.clone().or_else(|| profile.ca_file.as_ref().map(relative));
        Ok(Endpoint::Remote(Remote::new(&profile.url, token_file.as_deref(), ca_file.as_deref())?))
    }
}
