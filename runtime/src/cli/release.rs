//! `wfrun release`: write and sign a release repository (TUF) that devices
//! pull from. The library side is [`crate::release`].

use super::printable;
use crate::daemon::config::read_jobs;
use crate::egress::PolicyFile;
use crate::outcome::ExitStatus;
use crate::release::{Expiry, InitOptions, NewRelease, ReleaseError, Repository, Rotation};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const RELEASE_HELP: &str = "\
A release repository is a directory of TUF metadata (metadata/) and target
files (targets/) that any static file server can serve. Devices pin its
root (metadata/root.json) and pull each channel's release from it.

Keys live in DIR/keys/ (mode 0600). Keep the root key offline once the
repository is made: `add`, `publish` and `timestamp` need only the targets,
snapshot and timestamp keys. See docs/releases.md.

Examples:
  wfrun release init repo
  wfrun release add repo --channel stable --version 1.0.0 dist/report.wasm --jobs jobs.toml
  wfrun release timestamp repo          # from cron on the origin, before the timestamp expires
  wfrun release rotate repo timestamp   # new timestamp key(s) in a new root version
  wfrun release rotate repo root --revoke 3f2a9c1e --signing-key /media/usb/root-1.key
  wfrun release status repo";

#[derive(Debug, Args)]
#[command(after_help = RELEASE_HELP)]
pub struct ReleaseCommand {
    #[command(subcommand)]
    command: ReleaseSubcommand,
}

#[derive(Debug, Subcommand)]
enum ReleaseSubcommand {
    /// Make a repository: keys for each role, 1.root.json, empty targets,
    /// snapshot and timestamp.
    Init {
        /// The repository directory (must not hold one yet).
        dir: PathBuf,
        /// Use this secret key file for ROLE instead of a new key
        /// (repeatable; several for one role make a threshold possible).
        #[arg(long = "key", value_name = "ROLE=FILE", value_parser = role_path)]
        keys: Vec<(String, PathBuf)>,
        /// Signatures ROLE needs (e.g. root=2); new keys are made up to it.
        #[arg(long = "threshold", value_name = "ROLE=N", value_parser = role_number)]
        thresholds: Vec<(String, u32)>,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a channel's release (its bundles and release document) and publish.
    Add(Box<AddArgs>),
    /// Re-sign targets, snapshot and timestamp with new versions and expiry.
    Publish {
        /// The repository directory.
        dir: PathBuf,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-sign only the timestamp (run it from cron on the origin).
    Timestamp {
        /// The repository directory.
        dir: PathBuf,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate a role's keys: a new root version, signed by the old root's
    /// threshold and the new one's, then targets, snapshot and timestamp
    /// re-signed. Devices that trust any earlier root follow the chain.
    ///
    /// By default every current key of ROLE is replaced by a new one (or
    /// by --key files); with --revoke only the named keys go (a
    /// compromised one) and the others stay. Revoked key files move to
    /// keys/retired/.
    Rotate {
        /// The repository directory.
        dir: PathBuf,
        /// The role: root, targets, snapshot or timestamp.
        role: String,
        /// Use this secret key file as a new key of ROLE (repeatable).
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
        /// Drop this key id (or a unique prefix of 8+ characters) and keep
        /// ROLE's other keys (repeatable).
        #[arg(long, value_name = "KEYID")]
        revoke: Vec<String>,
        /// ROLE's new threshold (default: its current one).
        #[arg(long, value_name = "N")]
        threshold: Option<u32>,
        /// A secret key to sign the new root with that is not in DIR/keys/
        /// (the offline root key; repeatable).
        #[arg(long = "signing-key", value_name = "FILE")]
        signing_keys: Vec<PathBuf>,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show channels, their versions, and each role's version and expiry.
    Status {
        /// The repository directory.
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
struct AddArgs {
    /// The repository directory.
    dir: PathBuf,
    /// The channel (e.g. stable).
    #[arg(long)]
    channel: String,
    /// The release version (semver, e.g. 1.4.0); must be higher than the
    /// channel's current one unless --rollback-approved.
    #[arg(long)]
    version: String,
    /// The bundles (.wasm).
    #[arg(required = true, value_name = "BUNDLE")]
    bundles: Vec<PathBuf>,
    /// The jobs that run them: [jobs.NAME] tables as in the daemon's config
    /// file; each `bundle` names one of BUNDLE, relative to this file.
    #[arg(long, value_name = "FILE")]
    jobs: Option<PathBuf>,
    /// The policy the release needs: an [egress] table as for `exec --policy`.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The oldest wfrun that may activate it (semver).
    #[arg(long, value_name = "VERSION")]
    min_runner_version: Option<String>,
    /// The rollout ring (devices in rings up to it take it).
    #[arg(long, value_name = "N", default_value_t = 0)]
    ring: u32,
    /// Let this release replace a higher version on devices.
    #[arg(long)]
    rollback_approved: bool,
    /// The job (one of --jobs) whose success passes the release's trial on
    /// a device; it is triggered once at activation. Without it, every job's
    /// first runs must succeed.
    #[arg(long, value_name = "JOB")]
    health: Option<String>,
    #[command(flatten)]
    expiry: ExpiryArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExpiryArgs {
    /// How long ROLE's new metadata stays valid (e.g. timestamp=2d).
    /// Defaults: root 365d, targets 90d, snapshot 7d, timestamp 1d.
    #[arg(long = "expires", value_name = "ROLE=DURATION", value_parser = role_duration)]
    expires: Vec<(String, Duration)>,
}

impl ExpiryArgs {
    fn resolve(&self) -> Result<Expiry, ReleaseError> {
        let mut expiry = Expiry::default();
        for (role, after) in &self.expires {
            expiry.set(role, *after)?;
        }
        Ok(expiry)
    }
}

fn split(text: &str) -> Result<(String, &str), String> {
    text.split_once('=').map(|(r, v)| (r.to_owned(), v)).ok_or_else(|| format!("{text:?} is not ROLE=VALUE"))
}

fn role_path(text: &str) -> Result<(String, PathBuf), String> {
    split(text).map(|(role, path)| (role, PathBuf::from(path)))
}

fn role_number(text: &str) -> Result<(String, u32), String> {
    let (role, n) = split(text)?;
    Ok((role, n.parse().map_err(|_| format!("{n:?} is not a number"))?))
}

fn role_duration(text: &str) -> Result<(String, Duration), String> {
    let (role, d) = split(text)?;
    let after = crate::units::duration(d, Duration::from_secs(60)..=Duration::from_secs(10 * 365 * 24 * 3600))
        .map_err(|e| e.to_string())?;
    Ok((role, after))
}

impl ReleaseCommand {
    /// Runs the subcommand; exit 6 for anything refused.
    pub fn execute(self) -> anyhow::Result<ExitStatus> {
        match self.run() {
            Ok(()) => Ok(ExitStatus::Success),
            Err(e) => {
                eprintln!("wfrun: invalid_input: {}", printable(&format!("{e:#}")));
                Ok(ExitStatus::Invalid)
            }
        }
    }

    fn run(self) -> anyhow::Result<()> {
        let show = |json: bool, value: serde_json::Value, text: String| {
            if json {
                println!("{value}");
            } else {
                println!("{text}");
            }
        };
        match self.command {
            ReleaseSubcommand::Init { dir, keys, thresholds, expiry, json } => {
                let options = InitOptions {
                    keys,
                    thresholds: thresholds.into_iter().collect::<BTreeMap<_, _>>(),
                    expiry: expiry.resolve()?,
                };
                let repo = Repository::init(&dir, &options)?;
                let root = repo.root()?.signed;
                let text = format!(
                    "made release repository {}; give devices {} as their trusted root, and keep keys/root*.key offline",
                    dir.display(),
                    repo.metadata_dir().join("root.json").display()
                );
                show(json, serde_json::json!({"dir": dir, "root_version": root.version, "roles": root.roles}), text);
            }
            ReleaseSubcommand::Add(add) => {
                let jobs = match &add.jobs {
                    Some(path) => read_jobs(path)?,
                    None => BTreeMap::new(),
                };
                let policy = match &add.policy {
                    Some(path) => Some(policy_tables(path)?),
                    None => None,
                };
                let release = NewRelease {
                    channel: add.channel.clone(),
                    version: add.version.clone(),
                    bundles: add.bundles.clone(),
                    jobs,
                    policy,
                    min_runner_version: add.min_runner_version.clone(),
                    ring: add.ring,
                    rollback_approved: add.rollback_approved,
                    health: add.health.clone(),
                    expiry: add.expiry.resolve()?,
                };
                let repo = Repository::open(&add.dir)?;
                let (document, published) = repo.add(&release)?;
                let text = format!(
                    "channel {} is at {} ({} bundle(s), {} job(s)); targets v{}, snapshot v{}, timestamp v{}",
                    document.channel,
                    document.version,
                    document.bundles.len(),
                    document.jobs.len(),
                    published.targets,
                    published.snapshot,
                    published.timestamp
                );
                show(add.json, serde_json::json!({"release": document, "published": published}), text);
            }
            ReleaseSubcommand::Publish { dir, expiry, json } => {
                let published = Repository::open(&dir)?.publish(&expiry.resolve()?)?;
                let text = format!(
                    "published targets v{}, snapshot v{}, timestamp v{}",
                    published.targets, published.snapshot, published.timestamp
                );
                show(json, serde_json::to_value(published)?, text);
            }
            ReleaseSubcommand::Timestamp { dir, expiry, json } => {
                let version = Repository::open(&dir)?.timestamp(&expiry.resolve()?)?;
                show(json, serde_json::json!({"timestamp": version}), format!("timestamp v{version}"));
            }
            ReleaseSubcommand::Rotate { dir, role, keys, revoke, threshold, signing_keys, expiry, json } => {
                let rotation = Rotation { role, keys, revoke, threshold, signing_keys, expiry: expiry.resolve()? };
                let rotated = Repository::open(&dir)?.rotate(&rotation)?;
                let text = format!(
                    "root v{}: {} now has {} key(s), threshold {} ({} revoked); targets v{}, snapshot v{}, timestamp v{}",
                    rotated.root_version,
                    rotated.role,
                    rotated.keyids.len(),
                    rotated.threshold,
                    rotated.revoked.len(),
                    rotated.published.targets,
                    rotated.published.snapshot,
                    rotated.published.timestamp
                );
                show(json, serde_json::to_value(&rotated)?, text);
            }
            ReleaseSubcommand::Status { dir, json } => {
                let status = Repository::open(&dir)?.status()?;
                if json {
                    println!("{}", serde_json::to_string(&status)?);
                    return Ok(());
                }
                println!("repository {}", printable(&status.dir));
                for (role, s) in &status.roles {
                    let expired = if s.expired { "  EXPIRED" } else { "" };
                    println!("  {role:<10} v{:<5} expires {}{expired}", s.version, s.expires);
                }
                if status.channels.is_empty() {
                    println!("no channels yet (add one with `wfrun release add`)");
                }
                for (channel, c) in &status.channels {
                    println!(
                        "channel {}  {}  ring {}  bundles {}  jobs {}",
                        printable(channel),
                        printable(&c.version),
                        c.ring,
                        printable(&c.bundles.join(", ")),
                        printable(&c.jobs.join(", "))
                    );
                }
            }
        }
        Ok(())
    }
}

/// A release's policy file, checked as `exec --policy` checks one, as JSON.
fn policy_tables(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    PolicyFile::read(path)?;
    let text = std::fs::read_to_string(path)?;
    let value: toml::Value = toml::from_str(&text)?;
    Ok(serde_json::to_value(value)?)
}
