//! Settings resolved once, with one precedence: flag, then environment,
//! then config file, then default.
//!
//! Every command resolves what it runs with here, before it calls the
//! library, so `exec`, `daemon` and `jobs add` agree. Values themselves are
//! parsed by [`units`](crate::units) and [`limits`](crate::limits). Today
//! the layers are:
//!
//! | setting | flag | environment | config file | default |
//! |---|---|---|---|---|
//! | state directory | `--state-dir` | `WFRUN_DIR` | `state_dir` | `$XDG_STATE_HOME/wfrun`, `~/.local/state/wfrun`, `.wfrun` |
//! | limit ceilings | `--fuel`, `--memory`, `--timeout`, ... (`exec`, `jobs add`) | — | a job's `memory`, `timeout`, `fuel`; `[daemon] max_memory` | [`Limits::default`](crate::limits::Limits) |
//! | trust | `--trust`, `--require-signed` | — | `[trust]` | unsigned bundles run |
//! | egress | `--allow-host`, `--policy` | — | `[egress]` | nothing |
//!
//! `docs/cli.md` has the same table.

use crate::limits::LimitRequest;
use std::path::{Path, PathBuf};

/// The first value given, in precedence order: `flag`, `env`, `config`,
/// else `default()`.
pub fn resolve<T>(flag: Option<T>, env: Option<T>, config: Option<T>, default: impl FnOnce() -> T) -> T {
    flag.or(env).or(config).unwrap_or_else(default)
}

/// The environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "WFRUN_DIR";

/// The state directory: `flag`, else `WFRUN_DIR`, else `config` (a config
/// file's `state_dir`), else `$XDG_STATE_HOME/wfrun`, else
/// `$HOME/.local/state/wfrun`, else `.wfrun`.
pub fn state_dir(flag: Option<&Path>, config: Option<&Path>) -> PathBuf {
    resolve(flag.map(Path::to_path_buf), env_path(STATE_DIR_ENV), config.map(Path::to_path_buf), || {
        if let Some(dir) = env_path("XDG_STATE_HOME") {
            return dir.join("wfrun");
        }
        if let Some(home) = env_path("HOME") {
            return home.join(".local").join("state").join("wfrun");
        }
        PathBuf::from(".wfrun")
    })
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Limit ceilings: each value from `flags` where given, else from
/// `config`; what neither gives is the default (left `None`).
pub fn ceilings(flags: &LimitRequest, config: &LimitRequest) -> LimitRequest {
    config.overlay(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flag_beats_the_config_which_beats_the_default() {
        assert_eq!(resolve(Some(1), Some(2), Some(3), || 4), 1);
        assert_eq!(resolve(None, Some(2), Some(3), || 4), 2);
        assert_eq!(resolve(None, None, Some(3), || 4), 3);
        assert_eq!(resolve(None::<i32>, None, None, || 4), 4);
        let flags = LimitRequest { timeout: Some(Duration::from_secs(1)), ..Default::default() };
        let config =
            LimitRequest { timeout: Some(Duration::from_secs(9)), memory_bytes: Some(1 << 20), ..Default::default() };
        let resolved = ceilings(&flags, &config);
        assert_eq!((resolved.timeout, resolved.memory_bytes), (Some(Duration::from_secs(1)), Some(1 << 20)));
    }

    #[test]
    fn an_explicit_state_dir_needs_no_environment() {
        assert_eq!(state_dir(Some(Path::new("/flag")), Some(Path::new("/config"))), Path::new("/flag"));
    }
}
