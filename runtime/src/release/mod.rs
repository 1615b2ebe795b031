//! Publishing releases: wfrun writes and signs TUF repositories itself.
//!
//! A release repository is a directory any static file server can serve:
//!
//! ```text
//! DIR/keys/ROLE.key            ed25519 secret keys, 0600 (keep root's offline)
//! DIR/metadata/N.root.json     every root version; root.json is the newest
//! DIR/metadata/N.targets.json  consistent snapshots: each version kept
//! DIR/metadata/N.snapshot.json
//! DIR/metadata/timestamp.json
//! DIR/targets/PATH/HASH.NAME   target files under their SHA-256
//! ```
//!
//! [`Repository::init`] makes one (keys, `1.root.json`, empty targets,
//! snapshot and timestamp). [`Repository::add`] adds a channel's release:
//! its bundles as targets and its [`ReleaseDocument`] as the target
//! `releases/CHANNEL.json`, then publishes. [`Repository::publish`] re-signs
//! targets, snapshot and timestamp with incremented versions;
//! [`Repository::timestamp`] only the timestamp. [`Repository::rotate`]
//! replaces a role's keys (or revokes some of them) in a new root version
//! signed by the old root's threshold and the new one's, then re-signs the
//! rest, so a device that trusts any earlier root walks the chain to it.
//! The metadata is TUF 1.0
//! ([`metadata`], canonical JSON in [`canonical`]), so python-tuf's client
//! reads it; `docs/releases.md` documents the layout and the release
//! document. The device side (the TUF client) is `sync`'s.

pub mod canonical;
pub mod metadata;

use crate::bundle::Bundle;
use crate::bundle::signature::SecretKey;
use crate::files::{Mode, create_private_dir, create_private_file, write_atomic};
use crate::manifest::{JobSpec, RELEASE_FORMAT, ReleaseBundle, ReleaseDocument};
use metadata::{Key, MetaFile, Metadata, Pins, ROLES, RoleKeys, Root, SPEC_VERSION, TargetFile, Targets, hashes};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Why a repository operation failed. Each variant names what.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `init` on a directory that already holds a repository.
    #[error("{}: already holds a release repository (metadata/ exists)", dir.display())]
    Exists {
        /// The directory.
        dir: PathBuf,
    },
    /// Not a repository (no `metadata/root.json`).
    #[error("{}: not a release repository (no metadata/root.json); make one with `wfrun release init`", dir.display())]
    NotARepository {
        /// The directory.
        dir: PathBuf,
    },
    /// A metadata file does not parse.
    #[error(transparent)]
    Metadata(#[from] metadata::MetadataError),
    /// A role lacks the keys to sign.
    #[error("role {role} needs {threshold} signature(s), but only {found} of its keys are in {}", dir.display())]
    MissingKeys {
        /// The role.
        role: String,
        /// Its threshold.
        threshold: u32,
        /// Keys found.
        found: usize,
        /// The keys directory.
        dir: PathBuf,
    },
    /// A key file that does not load.
    #[error("key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A bad option: role name, threshold, version, channel.
    #[error("{0}")]
    Invalid(String),
    /// A bundle that is not one.
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    /// A job naming a bundle the release does not include.
    #[error("job {job}: bundle {} is not one of the bundles given to `wfrun release add`", bundle.display())]
    UnknownBundle {
        /// The job.
        job: String,
        /// The path it names.
        bundle: PathBuf,
    },
    /// A version not above the channel's current one.
    #[error(
        "channel {channel} is at {current}; {version} is not higher (pass --rollback-approved to publish a lower version on purpose)"
    )]
    NotNewer {
        /// The channel.
        channel: String,
        /// Its current version.
        current: String,
        /// The version given.
        version: String,
    },
}

impl ReleaseError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
        move |source| ReleaseError::Io { path: path.to_path_buf(), source }
    }
}

/// How long each role's metadata stays valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Root (default 1 year).
    pub root: Duration,
    /// Targets (default 3 months).
    pub targets: Duration,
    /// Snapshot (default 1 week).
    pub snapshot: Duration,
    /// Timestamp (default 1 day).
    pub timestamp: Duration,
}

impl Default for Expiry {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Expiry {
            root: Duration::from_secs(365 * DAY),
            targets: Duration::from_secs(90 * DAY),
            snapshot: Duration::from_secs(7 * DAY),
            timestamp: Duration::from_secs(DAY),
        }
    }
}

impl Expiry {
    /// Sets `role`'s expiry (`root`, `targets`, `snapshot`, `timestamp`).
    pub fn set(&mut self, role: &str, after: Duration) -> Result<(), ReleaseError> {
        match role {
            "root" => self.root = after,
            "targets" => self.targets = after,
            "snapshot" => self.snapshot = after,
            "timestamp" => self.timestamp = after,
            _ => return Err(ReleaseError::Invalid(format!("--expires {role}=…: roles are {}", ROLES.join(", ")))),
        }
        Ok(())
    }
}

/// How to make a repository.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Existing secret keys to use for a role, instead of new ones.
    pub keys: Vec<(String, PathBuf)>,
    /// Signatures each role needs (default 1); that many keys are made for a
    /// role given none.
    pub thresholds: BTreeMap<String, u32>,
    /// Expiry per role.
    pub expiry: Expiry,
}

/// A release to add to a channel.
#[derive(Debug, Clone)]
pub struct NewRelease {
    /// The channel, e.g. `stable`.
    pub channel: String,
    /// Its version (semver).
    pub version: String,
    /// The bundle files.
    pub bundles: Vec<PathBuf>,
    /// The jobs, each naming one of `bundles` by path.
    pub jobs: BTreeMap<String, JobSpec>,
    /// The policy file's tables.
    pub policy: Option<serde_json::Value>,
    /// The oldest runner that may activate it.
    pub min_runner_version: Option<String>,
    /// The rollout ring.
    pub ring: u32,
    /// Whether it may replace a higher version.
    pub rollback_approved: bool,
    /// The job whose success passes the trial (one of `jobs`).
    pub health: Option<String>,
    /// Expiry of the targets, snapshot and timestamp it publishes.
    pub expiry: Expiry,
}

/// The versions a publish wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The targets version.
    pub targets: u32,
    /// The snapshot version.
    pub snapshot: u32,
    /// The timestamp version.
    pub timestamp: u32,
}

/// A key rotation: new keys for one role in a new root version.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    /// The role (`root`, `targets`, `snapshot`, `timestamp`).
    pub role: String,
    /// New secret key files for the role (none: new keys are made).
    pub keys: Vec<PathBuf>,
    /// Key ids (or unambiguous prefixes of 8 or more characters) to drop
    /// from the role, keeping the others; none: every current key goes.
    pub revoke: Vec<String>,
    /// The role's new threshold (default: its current one).
    pub threshold: Option<u32>,
    /// Secret key files to sign with that are not in `keys/` (the root
    /// keys kept offline).
    pub signing_keys: Vec<PathBuf>,
    /// Expiry of the new root and of what is re-signed.
    pub expiry: Expiry,
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    /// The role.
    pub role: String,
    /// The new root's version.
    pub root_version: u32,
    /// Key ids now assigned to the role.
    pub keyids: Vec<String>,
    /// Key ids removed from it.
    pub revoked: Vec<String>,
    /// Its threshold.
    pub threshold: u32,
    /// The targets, snapshot and timestamp re-signed under the new root.
    pub published: Published,
}

/// A repository as `wfrun release status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The directory.
    pub dir: String,
    /// Each role's version and expiry.
    pub roles: BTreeMap<String, RoleStatus>,
    /// Each channel's current release.
    pub channels: BTreeMap<String, ChannelStatus>,
}

/// One role's newest metadata.
#[derive(Debug, Clone, Serialize)]
pub struct RoleStatus {
    /// Its version.
    pub version: u32,
    /// When it expires.
    pub expires: String,
    /// Whether that is past.
    pub expired: bool,
}

/// One channel's current release.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStatus {
    /// The release version.
    pub version: String,
    /// Its bundles' target names.
    pub bundles: Vec<String>,
    /// Its jobs.
    pub jobs: Vec<String>,
    /// Its ring.
    pub ring: u32,
}

/// A release repository on disk.
#[derive(Debug, Clone)]
pub struct Repository {
    dir: PathBuf,
}

fn expires(after: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + after).to_string()
}

fn parse_semver(text: &str) -> Result<semver::Version, ReleaseError> {
    semver::Version::parse(text)
        .map_err(|e| ReleaseError::Invalid(format!("version {text:?} is not semver (like 1.4.0): {e}")))
}

fn check_name(what: &str, name: &str) -> Result<(), ReleaseError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ReleaseError::Invalid(format!("{what} {name:?}: use 1-64 letters, digits, `-`, `_` or `.`")))
    }
}

impl Repository {
    /// Makes a repository in `dir`.
    pub fn init(dir: &Path, options: &InitOptions) -> Result<Repository, ReleaseError> {
        let repo = Repository { dir: dir.to_path_buf() };
        if repo.metadata_dir().exists() {
            return Err(ReleaseError::Exists { dir: dir.to_path_buf() });
        }
        for (role, _) in &options.keys {
            if !ROLES.contains(&role.as_str()) {
                return Err(ReleaseError::Invalid(format!("--key {role}=…: roles are {}", ROLES.join(", "))));
            }
        }
        for (role, threshold) in &options.thresholds {
            if !ROLES.contains(&role.as_str()) || !(1..=16).contains(threshold) {
                return Err(ReleaseError::Invalid(format!(
                    "--threshold {role}={threshold}: a role ({}) and 1 to 16 signatures",
                    ROLES.join(", ")
                )));
            }
        }
        create_private_dir(&repo.keys_dir()).map_err(ReleaseError::io(&repo.keys_dir()))?;
        std::fs::create_dir_all(repo.metadata_dir()).map_err(ReleaseError::io(&repo.metadata_dir()))?;
        std::fs::create_dir_all(repo.targets_dir()).map_err(ReleaseError::io(&repo.targets_dir()))?;
        let mut keys = BTreeMap::new();
        let mut roles = BTreeMap::new();
        for role in ROLES {
            let threshold = options.thresholds.get(role).copied().unwrap_or(1);
            let mut secrets: Vec<SecretKey> = Vec::new();
            for (_, path) in options.keys.iter().filter(|(r, _)| r == role) {
                let secret =
                    SecretKey::load(path).map_err(|reason| ReleaseError::Key { path: path.clone(), reason })?;
                secrets.push(secret);
            }
            let brought = !secrets.is_empty();
            while secrets.len() < threshold as usize {
                secrets.push(SecretKey::generate().map_err(ReleaseError::Invalid)?);
            }
            let mut keyids = Vec::new();
            for (index, secret) in secrets.iter().enumerate() {
                let key = Key::ed25519(&secret.public());
                keyids.push(key.key_id());
                keys.insert(key.key_id(), key);
                let name = if secrets.len() == 1 { format!("{role}.key") } else { format!("{role}-{}.key", index + 1) };
                let path = repo.keys_dir().join(name);
                // Brought keys are copied in too, so that publishing finds them.
                if !brought || !path.exists() {
                    let mut file = create_private_file(&path, true).map_err(ReleaseError::io(&path))?;
                    file.write_all(format!("{}\n", secret.to_text()).as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(ReleaseError::io(&path))?;
                }
            }
            roles.insert(role.to_owned(), RoleKeys { keyids, threshold });
        }
        let root = Root {
            kind: "root".to_owned(),
            spec_version: SPEC_VERSION.to_owned(),
            consistent_snapshot: true,
            expires: expires(options.expiry.root),
            keys,
            roles,
            version: 1,
        };
        let keys = repo.signing_keys(&root, "root")?;
        let root = Metadata::sign(root, &keys.iter().collect::<Vec<_>>());
        repo.write_metadata("1.root.json", &root.to_bytes())?;
        repo.write_metadata("root.json", &root.to_bytes())?;
        let targets = Targets {
            kind: "targets".to_owned(),
            spec_version: SPEC_VERSION.to_owned(),
            expires: expires(options.expiry.targets),
            targets: BTreeMap::new(),
            version: 0,
        };
        repo.publish_targets(&root.signed, targets, &options.expiry)?;
        Ok(repo)
    }

    /// Opens the repository in `dir`.
    pub fn open(dir: &Path) -> Result<Repository, ReleaseError> {
        let repo = Repository { dir: dir.to_path_buf() };
        if !repo.metadata_dir().join("root.json").is_file() {
            return Err(ReleaseError::NotARepository { dir: dir.to_path_buf() });
        }
        Ok(repo)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// The directory to serve as the metadata URL.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// The directory to serve as the targets URL.
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    fn write_metadata(&self, name: &str, bytes: &[u8]) -> Result<(), ReleaseError> {
        let path = self.metadata_dir().join(name);
        write_atomic(&path, bytes, Mode::Shared).map_err(ReleaseError::io(&path))
    }

    fn read<T: serde::de::DeserializeOwned + Serialize>(
        &self,
        name: &str,
        role: &'static str,
    ) -> Result<Metadata<T>, ReleaseError> {
        let path = self.metadata_dir().join(name);
        let bytes = std::fs::read(&path).map_err(ReleaseError::io(&path))?;
        Ok(Metadata::from_bytes(name, role, &bytes)?)
    }

    /// The newest version `N` of `N.ROLE.json` in the metadata directory.
    fn newest(&self, role: &str) -> Result<u32, ReleaseError> {
        let dir = self.metadata_dir();
        let suffix = format!(".{role}.json");
        let mut newest = 0;
        for entry in std::fs::read_dir(&dir).map_err(ReleaseError::io(&dir))? {
            let name = entry.map_err(ReleaseError::io(&dir))?.file_name().to_string_lossy().into_owned();
            if let Some(version) = name.strip_suffix(&suffix).and_then(|v| v.parse::<u32>().ok()) {
                newest = newest.max(version);
            }
        }
        Ok(newest)
    }

    /// The newest root.
    pub fn root(&self) -> Result<Metadata<Root>, ReleaseError> {
        self.read("root.json", "root")
    }

    /// The newest targets.
    pub fn targets(&self) -> Result<Metadata<Targets>, ReleaseError> {
        let version = self.newest("targets")?;
        self.read(&format!("{version}.targets.json"), "targets")
    }

    /// Every secret key in `keys/`, by key id, with its file.
    fn key_files(&self) -> Result<BTreeMap<String, (SecretKey, PathBuf)>, ReleaseError> {
        let dir = self.keys_dir();
        let mut keys = BTreeMap::new();
        let Ok(listing) = std::fs::read_dir(&dir) else { return Ok(keys) };
        for entry in listing {
            let path = entry.map_err(ReleaseError::io(&dir))?.path();
            if path.extension().is_some_and(|e| e == "key") && path.is_file() {
                let secret =
                    SecretKey::load(&path).map_err(|reason| ReleaseError::Key { path: path.clone(), reason })?;
                keys.insert(Key::ed25519(&secret.public()).key_id(), (secret, path));
            }
        }
        Ok(keys)
    }

    /// Every secret key in `keys/`, by key id.
    fn secret_keys(&self) -> Result<BTreeMap<String, SecretKey>, ReleaseError> {
        Ok(self.key_files()?.into_iter().map(|(id, (secret, _))| (id, secret)).collect())
    }

    /// `role`'s keys found in `keys/`, at least its threshold of them.
    fn signing_keys(&self, root: &Root, role: &str) -> Result<Vec<SecretKey>, ReleaseError> {
        self.signing_keys_from(root, role, self.secret_keys()?)
    }

    /// `role`'s keys among `available`, at least its threshold of them.
    fn signing_keys_from(
        &self,
        root: &Root,
        role: &str,
        mut available: BTreeMap<String, SecretKey>,
    ) -> Result<Vec<SecretKey>, ReleaseError> {
        let assigned =
            root.roles.get(role).ok_or_else(|| ReleaseError::Invalid(format!("root lists no role {role}")))?;
        let found: Vec<SecretKey> = assigned.keyids.iter().filter_map(|id| available.remove(id)).collect();
        if found.len() < assigned.threshold as usize {
            return Err(ReleaseError::MissingKeys {
                role: role.to_owned(),
                threshold: assigned.threshold,
                found: found.len(),
                dir: self.keys_dir(),
            });
        }
        Ok(found)
    }

    /// Signs and writes `targets` as the next targets version, then a new
    /// snapshot and timestamp.
    fn publish_targets(&self, root: &Root, mut targets: Targets, expiry: &Expiry) -> Result<Published, ReleaseError> {
        targets.version = self.newest("targets")? + 1;
        targets.expires = expires(expiry.targets);
        let keys = self.signing_keys(root, "targets")?;
        let signed = Metadata::sign(targets, &keys.iter().collect::<Vec<_>>());
        self.write_metadata(&format!("{}.targets.json", signed.signed.version), &signed.to_bytes())?;
        let snapshot = Pins {
            kind: "snapshot".to_owned(),
            spec_version: SPEC_VERSION.to_owned(),
            expires: expires(expiry.snapshot),
            meta: BTreeMap::from([(
                "targets.json".to_owned(),
                MetaFile { version: signed.signed.version, length: None, hashes: None },
            )]),
            version: self.newest("snapshot")? + 1,
        };
        let keys = self.signing_keys(root, "snapshot")?;
        let snapshot = Metadata::sign(snapshot, &keys.iter().collect::<Vec<_>>());
        let bytes = snapshot.to_bytes();
        self.write_metadata(&format!("{}.snapshot.json", snapshot.signed.version), &bytes)?;
        let timestamp = self.write_timestamp(root, snapshot.signed.version, &bytes, expiry)?;
        Ok(Published { targets: signed.signed.version, snapshot: snapshot.signed.version, timestamp })
    }

    fn write_timestamp(&self, root: &Root, snapshot: u32, bytes: &[u8], expiry: &Expiry) -> Result<u32, ReleaseError> {
        let previous = match self.read::<Pins>("timestamp.json", "timestamp") {
            Ok(timestamp) => timestamp.signed.version,
            Err(ReleaseError::Io { .. }) => 0,
            Err(e) => return Err(e),
        };
        let timestamp = Pins {
            kind: "timestamp".to_owned(),
            spec_version: SPEC_VERSION.to_owned(),
            expires: expires(expiry.timestamp),
            meta: BTreeMap::from([(
                "snapshot.json".to_owned(),
                MetaFile { version: snapshot, length: Some(bytes.len() as u64), hashes: Some(hashes(bytes)) },
            )]),
            version: previous + 1,
        };
        let keys = self.signing_keys(root, "timestamp")?;
        let timestamp = Metadata::sign(timestamp, &keys.iter().collect::<Vec<_>>());
        self.write_metadata("timestamp.json", &timestamp.to_bytes())?;
        Ok(timestamp.signed.version)
    }

    /// Re-signs targets, snapshot and timestamp with incremented versions
    /// and fresh expiry dates.
    pub fn publish(&self, expiry: &Expiry) -> Result<Published, ReleaseError> {
        let root = self.root()?.signed;
        let targets = self.targets()?.signed;
        self.publish_targets(&root, targets, expiry)
    }

    /// Re-signs only the timestamp (a fresh expiry over the same snapshot):
    /// what the origin runs from cron.
    pub fn timestamp(&self, expiry: &Expiry) -> Result<u32, ReleaseError> {
        let root = self.root()?.signed;
        let version = self.newest("snapshot")?;
        let path = self.metadata_dir().join(format!("{version}.snapshot.json"));
        let bytes = std::fs::read(&path).map_err(ReleaseError::io(&path))?;
        self.write_timestamp(&root, version, &bytes, expiry)
    }

    /// Rotates `rotation.role`'s keys: writes root version N+1 (signed by
    /// root N's threshold and by its own), moves the revoked keys' files to
    /// `keys/retired/`, and re-signs targets, snapshot and timestamp.
    pub fn rotate(&self, rotation: &Rotation) -> Result<Rotated, ReleaseError> {
        let role = rotation.role.as_str();
        if !ROLES.contains(&role) {
            return Err(ReleaseError::Invalid(format!("rotate {role}: roles are {}", ROLES.join(", "))));
        }
        let old = self.root()?.signed;
        let current = &old.roles[role];
        let mut revoked = Vec::new();
        for wanted in &rotation.revoke {
            let matching: Vec<&String> = current
                .keyids
                .iter()
                .filter(|id| *id == wanted || (wanted.len() >= 8 && id.starts_with(wanted.as_str())))
                .collect();
            match matching.as_slice() {
                [one] => revoked.push((*one).clone()),
                [] => return Err(ReleaseError::Invalid(format!("--revoke {wanted}: not one of {role}'s key ids"))),
                _ => return Err(ReleaseError::Invalid(format!("--revoke {wanted}: names more than one key"))),
            }
        }
        if rotation.revoke.is_empty() {
            revoked = current.keyids.clone();
        }
        let threshold = rotation.threshold.unwrap_or(current.threshold);
        if !(1..=16).contains(&threshold) {
            return Err(ReleaseError::Invalid(format!("--threshold {threshold}: 1 to 16 signatures")));
        }
        let mut keyids: Vec<String> = current.keyids.iter().filter(|id| !revoked.contains(id)).cloned().collect();
        let mut new_secrets = Vec::new();
        for path in &rotation.keys {
            new_secrets.push(SecretKey::load(path).map_err(|reason| ReleaseError::Key { path: path.clone(), reason })?);
        }
        while keyids.len() + new_secrets.len() < threshold as usize
            || (rotation.revoke.is_empty() && new_secrets.is_empty())
        {
            new_secrets.push(SecretKey::generate().map_err(ReleaseError::Invalid)?);
        }
        let mut keys = old.keys.clone();
        for secret in &new_secrets {
            let key = Key::ed25519(&secret.public());
            if revoked.contains(&key.key_id()) {
                return Err(ReleaseError::Invalid(format!(
                    "key {} is being revoked; it cannot come back",
                    key.key_id()
                )));
            }
            if !keyids.contains(&key.key_id()) {
                keyids.push(key.key_id());
            }
            keys.insert(key.key_id(), key);
        }
        let mut roles = old.roles.clone();
        roles.insert(role.to_owned(), RoleKeys { keyids: keyids.clone(), threshold });
        // Keys no role uses any more leave the root.
        keys.retain(|id, _| roles.values().any(|r| r.keyids.contains(id)));
        let new = Root { version: old.version + 1, expires: expires(rotation.expiry.root), keys, roles, ..old.clone() };

        // Signed by root N's threshold and root N+1's: the keys in keys/,
        // those brought to sign with, and the new ones.
        let mut available = self.secret_keys()?;
        for path in &rotation.signing_keys {
            let secret = SecretKey::load(path).map_err(|reason| ReleaseError::Key { path: path.clone(), reason })?;
            available.insert(Key::ed25519(&secret.public()).key_id(), secret);
        }
        for secret in &new_secrets {
            available.insert(Key::ed25519(&secret.public()).key_id(), secret.clone());
        }
        let mut signers: BTreeMap<String, SecretKey> = BTreeMap::new();
        for root in [&old, &new] {
            for secret in self.signing_keys_from(root, "root", available.clone())? {
                signers.insert(Key::ed25519(&secret.public()).key_id(), secret);
            }
        }
        let signed = Metadata::sign(new, &signers.values().collect::<Vec<_>>());

        // New key files first: a crash after them leaves the old root in
        // force and unused keys behind, never a root without its keys.
        for secret in &new_secrets {
            let id = Key::ed25519(&secret.public()).key_id();
            let path = self.keys_dir().join(format!("{role}-{}.key", &id[..12]));
            if path.exists() {
                continue;
            }
            let mut file = create_private_file(&path, true).map_err(ReleaseError::io(&path))?;
            file.write_all(format!("{}\n", secret.to_text()).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(ReleaseError::io(&path))?;
        }
        crate::files::sync_dir(&self.keys_dir()).map_err(ReleaseError::io(&self.keys_dir()))?;
        let bytes = signed.to_bytes();
        self.write_metadata(&format!("{}.root.json", signed.signed.version), &bytes)?;
        self.write_metadata("root.json", &bytes)?;
        let retired = self.keys_dir().join("retired");
        let files = self.key_files()?;
        for id in &revoked {
            if signed.signed.keys.contains_key(id) {
                continue; // still another role's key
            }
            if let Some((_, path)) = files.get(id) {
                create_private_dir(&retired).map_err(ReleaseError::io(&retired))?;
                let to = retired.join(path.file_name().unwrap_or_default());
                std::fs::rename(path, &to).map_err(ReleaseError::io(path))?;
            }
        }
        let published = self.publish(&rotation.expiry)?;
        Ok(Rotated {
            role: role.to_owned(),
            root_version: signed.signed.version,
            keyids,
            revoked,
            threshold,
            published,
        })
    }

    /// Adds `release` to its channel and publishes.
    pub fn add(&self, release: &NewRelease) -> Result<(ReleaseDocument, Published), ReleaseError> {
        check_name("channel", &release.channel)?;
        let version = parse_semver(&release.version)?;
        if let Some(min) = &release.min_runner_version {
            parse_semver(min)?;
        }
        if release.bundles.is_empty() {
            return Err(ReleaseError::Invalid("a release needs at least one bundle".to_owned()));
        }
        if let Some(health) = release.health.as_ref().filter(|h| !release.jobs.contains_key(*h)) {
            return Err(ReleaseError::Invalid(format!("--health {health}: not one of the release's jobs")));
        }
        let root = self.root()?.signed;
        let mut targets = self.targets()?.signed;
        let document_target = format!("releases/{}.json", release.channel);
        if let Some(current) = self.current(&targets, &release.channel)? {
            let newer = parse_semver(&current.version).map(|c| version > c).unwrap_or(true);
            if !newer && !release.rollback_approved {
                return Err(ReleaseError::NotNewer {
                    channel: release.channel.clone(),
                    current: current.version,
                    version: release.version.clone(),
                });
            }
        }
        let custom = |kind: &str| serde_json::json!({"wfrun": {"kind": kind, "channel": release.channel, "version": release.version}});
        let mut bundles = Vec::new();
        let mut by_path: BTreeMap<PathBuf, String> = BTreeMap::new();
        for path in &release.bundles {
            let bundle = Bundle::read(path)?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            check_name("bundle file name", &name)?;
            let target = format!("bundles/{}/{}/{name}", release.channel, release.version);
            self.write_target(&target, bundle.bytes())?;
            targets.targets.insert(
                target.clone(),
                TargetFile {
                    length: bundle.bytes().len() as u64,
                    hashes: hashes(bundle.bytes()),
                    custom: Some(custom("bundle")),
                },
            );
            by_path.insert(std::path::absolute(path).unwrap_or_else(|_| path.clone()), target.clone());
            bundles.push(ReleaseBundle { name, target, length: bundle.bytes().len() as u64, digest: bundle.digest() });
        }
        let mut jobs = BTreeMap::new();
        for (name, spec) in &release.jobs {
            let absolute = std::path::absolute(&spec.bundle).unwrap_or_else(|_| spec.bundle.clone());
            let target = by_path
                .get(&absolute)
                .ok_or_else(|| ReleaseError::UnknownBundle { job: name.clone(), bundle: spec.bundle.clone() })?;
            jobs.insert(name.clone(), JobSpec { bundle: PathBuf::from(target), ..spec.clone() });
        }
        let document = ReleaseDocument {
            format: RELEASE_FORMAT,
            channel: release.channel.clone(),
            version: release.version.clone(),
            bundles,
            jobs,
            policy: release.policy.clone(),
            min_runner_version: release.min_runner_version.clone(),
            ring: release.ring,
            rollback_approved: release.rollback_approved,
            health: release.health.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&document).expect("release documents serialise");
        bytes.push(b'\n');
        self.write_target(&document_target, &bytes)?;
        targets.targets.insert(
            document_target,
            TargetFile { length: bytes.len() as u64, hashes: hashes(&bytes), custom: Some(custom("release")) },
        );
        let published = self.publish_targets(&root, targets, &release.expiry)?;
        Ok((document, published))
    }

    /// Writes a target file as `targets/DIR/HASH.NAME` (consistent snapshots).
    fn write_target(&self, target: &str, bytes: &[u8]) -> Result<(), ReleaseError> {
        let (dir, name) = target.rsplit_once('/').unwrap_or(("", target));
        let hash = hashes(bytes).remove("sha256").expect("sha256 is always computed");
        let dir = self.targets_dir().join(dir);
        std::fs::create_dir_all(&dir).map_err(ReleaseError::io(&dir))?;
        let path = dir.join(format!("{hash}.{name}"));
        write_atomic(&path, bytes, Mode::Shared).map_err(ReleaseError::io(&path))
    }

    /// The channel's current release document, if it has one.
    fn current(&self, targets: &Targets, channel: &str) -> Result<Option<ReleaseDocument>, ReleaseError> {
        let name = format!("releases/{channel}.json");
        let Some(file) = targets.targets.get(&name) else { return Ok(None) };
        let hash = &file.hashes["sha256"];
        let path = self.targets_dir().join("releases").join(format!("{hash}.{channel}.json"));
        let bytes = std::fs::read(&path).map_err(ReleaseError::io(&path))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ReleaseError::Invalid(format!("{}: not a release document: {e}", path.display())))
    }

    /// Channels, versions and expiry dates.
    pub fn status(&self) -> Result<Status, ReleaseError> {
        let now = SystemTime::now();
        let role = |version: u32, expires: &str| RoleStatus {
            version,
            expires: expires.to_owned(),
            expired: humantime::parse_rfc3339(expires).map(|t| t <= now).unwrap_or(true),
        };
        let root = self.root()?.signed;
        let targets = self.targets()?.signed;
        let snapshot: Pins = self.read(&format!("{}.snapshot.json", self.newest("snapshot")?), "snapshot")?.signed;
        let timestamp: Pins = self.read("timestamp.json", "timestamp")?.signed;
        let mut channels = BTreeMap::new();
        for name in targets.targets.keys() {
            let Some(channel) = name.strip_prefix("releases/").and_then(|n| n.strip_suffix(".json")) else { continue };
            if let Some(document) = self.current(&targets, channel)? {
                channels.insert(
                    channel.to_owned(),
                    ChannelStatus {
                        version: document.version,
                        bundles: document.bundles.into_iter().map(|b| b.target).collect(),
                        jobs: document.jobs.into_keys().collect(),
                        ring: document.ring,
                    },
                );
            }
        }
        Ok(Status {
            dir: self.dir.display().to_string(),
            roles: BTreeMap::from([
                ("root".to_owned(), role(root.version, &root.expires)),
                ("targets".to_owned(), role(targets.version, &targets.expires)),
                ("snapshot".to_owned(), role(snapshot.version, &snapshot.expires)),
                ("timestamp".to_owned(), role(timestamp.version, &timestamp.expires)),
            ]),
            channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, wat::parse_str("(component)").unwrap()).unwrap();
        path
    }

    fn release(channel: &str, version: &str, bundles: Vec<PathBuf>) -> NewRelease {
        NewRelease {
            channel: channel.to_owned(),
            version: version.to_owned(),
            bundles,
            jobs: BTreeMap::new(),
            policy: None,
            min_runner_version: None,
            ring: 0,
            rollback_approved: false,
            health: None,
            expiry: Expiry::default(),
        }
    }

    #[test]
    fn a_new_repository_is_signed_to_threshold_and_versions_grow() {
        let dir = tempfile::tempdir().unwrap();
        let options = InitOptions { thresholds: [("root".to_owned(), 2)].into(), ..Default::default() };
        let repo = Repository::init(&dir.path().join("repo"), &options).unwrap();
        let root = repo.root().unwrap();
        assert_eq!(root.signed.roles["root"].keyids.len(), 2);
        assert_eq!(root.valid_signatures(&root.signed, "root"), 2);
        let targets = repo.targets().unwrap();
        assert_eq!((targets.signed.version, targets.valid_signatures(&root.signed, "targets")), (1, 1));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("repo/keys/root-1.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(Repository::init(&dir.path().join("repo"), &options), Err(ReleaseError::Exists { .. })));

        let published = repo.add(&release("stable", "1.0.0", vec![bundle(dir.path(), "a.wasm")])).unwrap().1;
        assert_eq!(published, Published { targets: 2, snapshot: 2, timestamp: 2 });
        assert_eq!(repo.timestamp(&Expiry::default()).unwrap(), 3);
        let status = repo.status().unwrap();
        assert_eq!(status.channels["stable"].version, "1.0.0");
        assert_eq!(status.channels["stable"].bundles, ["bundles/stable/1.0.0/a.wasm"]);
    }

    #[test]
    fn a_release_must_be_newer_unless_rollback_is_approved() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), &InitOptions::default()).unwrap();
        let a = bundle(dir.path(), "a.wasm");
        repo.add(&release("stable", "1.2.0", vec![a.clone()])).unwrap();
        let older = release("stable", "1.1.0", vec![a.clone()]);
        assert!(matches!(repo.add(&older), Err(ReleaseError::NotNewer { .. })));
        assert!(repo.add(&NewRelease { rollback_approved: true, ..older }).is_ok());
        assert!(matches!(repo.add(&release("stable", "two", vec![a.clone()])), Err(ReleaseError::Invalid(_))));
        assert!(matches!(repo.add(&release("../x", "3.0.0", vec![a])), Err(ReleaseError::Invalid(_))));
    }

    #[test]
    fn a_root_rotation_needs_the_old_root_keys_which_may_be_kept_offline() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), &InitOptions::default()).unwrap();
        let offline = dir.path().join("root.key");
        std::fs::rename(dir.path().join("repo/keys/root.key"), &offline).unwrap();
        let rotation = Rotation { role: "root".into(), ..Default::default() };
        let err = repo.rotate(&rotation).unwrap_err();
        assert!(matches!(err, ReleaseError::MissingKeys { ref role, found: 0, .. } if role == "root"), "{err}");
        assert_eq!(repo.root().unwrap().signed.version, 1, "nothing was written");
        let rotated = repo.rotate(&Rotation { signing_keys: vec![offline.clone()], ..rotation }).unwrap();
        assert_eq!((rotated.root_version, rotated.keyids.len(), rotated.revoked.len()), (2, 1, 1));
        let (old, new) = (repo.read::<Root>("1.root.json", "root").unwrap(), repo.root().unwrap());
        assert_eq!(new.valid_signatures(&old.signed, "root"), 1, "signed by the old root key");
        assert_eq!(new.valid_signatures(&new.signed, "root"), 1, "and by the new one");
        let bad = Rotation { role: "timestamp".into(), revoke: vec!["nope".into()], ..Default::default() };
        assert!(matches!(repo.rotate(&bad), Err(ReleaseError::Invalid(_))));
    }

    #[test]
    fn publishing_without_a_roles_keys_names_the_role() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), &InitOptions::default()).unwrap();
        std::fs::remove_file(dir.path().join("repo/keys/snapshot.key")).unwrap();
        let err = repo.publish(&Expiry::default()).unwrap_err();
        assert!(matches!(err, ReleaseError::MissingKeys { ref role, .. } if role == "snapshot"), "{err}");
    }
}
