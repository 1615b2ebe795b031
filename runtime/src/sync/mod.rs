//! The device side of releases: a TUF client for the release origin.
//!
//! [`Client`] follows the TUF client workflow (spec 1.0, section 5) over the
//! four top-level roles with `sigstore-tuf` (without its own HTTP client and
//! crypto backend): the root chain from the pinned root, then timestamp,
//! snapshot and targets, each checked for signatures to threshold, version
//! rollback, expiry, length and hashes. Every call takes the time it checks
//! expiry against, so the daemon can hold the highest time it has seen. The
//! trusted metadata is kept in a directory of the state directory
//! (atomically written, re-verified whenever it is read), so version floors
//! survive restarts. The origin is reached through [`transport::Origin`]:
//! our own HTTP client, with timeouts and byte caps. A channel's release is
//! the [`ReleaseDocument`] target `releases/CHANNEL.json`; its bundles are
//! targets too, downloaded against their signed length and hash.
//!
//! [`Client::offer`] takes a channel's release through the [`gates`]
//! (runner version, channel, ring, downgrade, known-bad); the release
//! document's signed hash alone settles "already active" and "known bad",
//! so an unchanged channel costs no download. [`Client::download`] then
//! writes its verified bundles under a staging directory ([`Client::stage`]
//! does both). Every refusal has a stable code ([`SyncError::code`],
//! [`StageError::code`]). What happens to a staged release (activation,
//! trial, rollback) is the daemon's.

mod crypto;
pub mod gates;
pub mod store;
pub mod transport;

use crate::manifest::{RELEASE_FORMAT, ReleaseDocument};
use sha2::Digest;
use sigstore_tuf::{FileStore, MetadataStore, Updater, UpdaterConfig};
use std::path::Path;
pub use store::PlainStore;
pub use transport::{Origin, OriginError, Timeouts};

/// The most bytes a release document may have.
pub const MAX_RELEASE_DOCUMENT: u64 = 1024 * 1024;
/// The most bytes a bundle may have.
pub const MAX_BUNDLE: u64 = 256 * 1024 * 1024;

/// Why a sync step failed. [`SyncError::code`] is stable.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The origin could not be reached, or answered badly, or too slowly,
    /// or with too much: nothing about the release itself.
    #[error("the release origin: {0}")]
    Unreachable(String),
    /// Metadata or a target was refused by the TUF checks.
    #[error("refused ({code}): {message}")]
    Refused {
        /// `metadata_signature`, `metadata_rollback`, `metadata_expired`,
        /// `metadata_integrity`, `metadata_malformed`, `target_not_found`,
        /// `bad_target_path`.
        code: &'static str,
        /// What the check said.
        message: String,
    },
    /// The pinned root does not load.
    #[error("trusted root: {0}")]
    TrustedRoot(String),
    /// The release document is not one this wfrun reads.
    #[error("release document {target}: {reason}")]
    BadDocument {
        /// Its target name.
        target: String,
        /// What is wrong.
        reason: String,
    },
}

impl SyncError {
    /// The stable code: `unreachable`, `trusted_root`, `bad_release_document`,
    /// or a refusal's code.
    pub fn code(&self) -> &'static str {
        match self {
            SyncError::Unreachable(_) => "unreachable",
            SyncError::Refused { code, .. } => code,
            SyncError::TrustedRoot(_) => "trusted_root",
            SyncError::BadDocument { .. } => "bad_release_document",
        }
    }

    fn from_tuf(error: sigstore_tuf::Error) -> SyncError {
        use sigstore_tuf::Error as E;
        let code = match &error {
            E::Transport { .. } | E::Io { .. } => return SyncError::Unreachable(error.to_string()),
            E::ThresholdNotMet { .. } | E::DuplicateSignature { .. } | E::Crypto(_) => "metadata_signature",
            E::Rollback { .. } | E::EqualVersion { .. } | E::BadRootVersion { .. } => "metadata_rollback",
            E::Expired { .. } => "metadata_expired",
            E::IntegrityMismatch(_) => "metadata_integrity",
            E::TargetNotFound(_) => "target_not_found",
            _ => "metadata_malformed",
        };
        SyncError::Refused { code, message: error.to_string() }
    }
}

/// A TUF client for one release origin, keeping its trusted metadata in a
/// directory.
pub struct Client {
    updater: Updater,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `origin` that trusts `trusted_root` (the `root.json`
    /// pinned at provisioning) and keeps what it verifies in `store`.
    pub fn new(origin: Origin, trusted_root: &[u8], store: &Path) -> Result<Client, SyncError> {
        Client::with_store(origin, trusted_root, FileStore::new(store))
    }

    /// The same with any metadata store (the conformance client keeps a
    /// plain directory, [`PlainStore`]).
    pub fn with_store(
        origin: Origin,
        trusted_root: &[u8],
        store: impl MetadataStore + 'static,
    ) -> Result<Client, SyncError> {
        crypto::install();
        if let Some(duplicate) = transport::duplicate_key(trusted_root) {
            return Err(SyncError::TrustedRoot(duplicate));
        }
        let mut config = UpdaterConfig::default();
        config.target_max_length = MAX_BUNDLE;
        let updater = Updater::new(origin, trusted_root)
            .map_err(|e| SyncError::TrustedRoot(e.to_string()))?
            .with_config(config)
            .with_store(store);
        Ok(Client { updater })
    }

    /// Target `name`'s signed metadata, after a refresh.
    async fn signed_target(&mut self, name: &str, now: jiff::Timestamp) -> Result<sigstore_tuf::TargetFile, SyncError> {
        self.updater
            .get_target_info(name, now)
            .await
            .map_err(SyncError::from_tuf)?
            .ok_or_else(|| SyncError::Refused { code: "target_not_found", message: format!("no target {name}") })
    }

    /// Target `name`'s signed length and SHA-256 (hex), after a refresh.
    pub async fn target_info(&mut self, name: &str, now: jiff::Timestamp) -> Result<(u64, Option<String>), SyncError> {
        let info = self.signed_target(name, now).await?;
        Ok((info.length, info.hashes.get("sha256").cloned()))
    }

    /// Runs the TUF refresh at time `now`: root chain, timestamp, snapshot,
    /// targets.
    pub async fn refresh(&mut self, now: jiff::Timestamp) -> Result<(), SyncError> {
        self.updater.refresh(now).await.map_err(SyncError::from_tuf)
    }

    /// The verified bytes of target `name`, after a refresh. A name that
    /// could leave the targets directory (`..`, an empty or absolute part)
    /// is refused as `bad_target_path`, signed or not.
    pub async fn target(&mut self, name: &str, now: jiff::Timestamp) -> Result<Vec<u8>, SyncError> {
        if name.starts_with('/') || name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(SyncError::Refused { code: "bad_target_path", message: format!("target path {name:?}") });
        }
        let info = self.signed_target(name, now).await?;
        self.fetch(&info, name).await
    }

    /// The bytes of a target whose signed metadata is `info`, verified
    /// against it.
    async fn fetch(&self, info: &sigstore_tuf::TargetFile, name: &str) -> Result<Vec<u8>, SyncError> {
        if let Some(bytes) = self.updater.find_cached_target(info, name) {
            return Ok(bytes);
        }
        self.updater.download_target(info, name).await.map_err(SyncError::from_tuf)
    }

    /// Channel `channel`'s release document, verified, after a refresh;
    /// `None` if the channel has none.
    pub async fn release(&mut self, channel: &str, now: jiff::Timestamp) -> Result<Option<ReleaseDocument>, SyncError> {
        match self.release_document(channel, now, |_| Ok(())).await {
            Ok(found) => Ok(found.map(|(document, _)| document)),
            Err(StageError::Sync(e)) => Err(e),
            Err(e) => Err(SyncError::Unreachable(e.to_string())),
        }
    }

    /// The release document of `channel` and its bytes. Its signed length
    /// is checked against [`MAX_RELEASE_DOCUMENT`], and its signed hash
    /// against `before_download`, before it is downloaded.
    async fn release_document(
        &mut self,
        channel: &str,
        now: jiff::Timestamp,
        before_download: impl FnOnce(&str) -> Result<(), StageError>,
    ) -> Result<Option<(ReleaseDocument, Vec<u8>)>, StageError> {
        let name = format!("releases/{channel}.json");
        let info = match self.signed_target(&name, now).await {
            Ok(info) => info,
            Err(SyncError::Refused { code: "target_not_found", .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if let Some(hash) = info.hashes.get("sha256") {
            before_download(&format!("sha256:{hash}"))?;
        }
        if info.length > MAX_RELEASE_DOCUMENT {
            return Err(SyncError::BadDocument { target: name, reason: "larger than 1 MiB".to_owned() }.into());
        }
        let bytes = self.fetch(&info, &name).await?;
        let document: ReleaseDocument = serde_json::from_slice(&bytes)
            .map_err(|e| SyncError::BadDocument { target: name.clone(), reason: e.to_string() })?;
        if document.format != RELEASE_FORMAT || document.channel != channel {
            return Err(StageError::Sync(SyncError::BadDocument {
                target: name,
                reason: format!(
                    "format {} for channel {:?}; expected format {RELEASE_FORMAT} for {channel:?}",
                    document.format, document.channel
                ),
            }));
        }
        Ok(Some((document, bytes)))
    }
}

/// A channel's release that passed the gates: its verified document,
/// not yet its bundles.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The release document.
    pub document: ReleaseDocument,
    /// Its bytes, as signed.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of those bytes: the release's identity.
    pub digest: String,
}

/// A release whose bundles are verified and written under the staging
/// directory, ready to activate.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The release document.
    pub document: ReleaseDocument,
    /// `sha256:<hex>` of the release document's bytes: the release's identity.
    pub digest: String,
    /// Where its files are: `DIR/<digest hex>/`.
    pub dir: std::path::PathBuf,
    /// Each bundle's target name and the file it was written to.
    pub bundles: Vec<(String, std::path::PathBuf)>,
}

/// Where release `digest` is staged under `staging`.
pub fn staging_dir(staging: &Path, digest: &str) -> std::path::PathBuf {
    staging.join(digest.trim_start_matches("sha256:"))
}

impl Client {
    /// Channel `channel`'s release, if `device` may take it: the document
    /// verified, then checked against the [`gates`] and for consistency
    /// (every job runs one of its bundles; its `health` job is one of its
    /// jobs). `Ok(None)`: the channel has no release.
    pub async fn offer(
        &mut self,
        channel: &str,
        device: &gates::Device,
        now: jiff::Timestamp,
    ) -> Result<Option<Offer>, StageError> {
        let name = format!("releases/{channel}.json");
        let early = |digest: &str| gates::check_digest(digest, device).map_err(StageError::from);
        let Some((document, bytes)) = self.release_document(channel, now, early).await? else { return Ok(None) };
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        gates::check(&document, &digest, device)?;
        let bad = |reason: String| SyncError::BadDocument { target: name.clone(), reason };
        for (job, spec) in &document.jobs {
            let target = spec.bundle.to_string_lossy();
            if !document.bundles.iter().any(|b| b.target == target) {
                return Err(bad(format!("job {job} runs {target}, which is not one of the release's bundles")).into());
            }
        }
        if let Some(health) = document.health.as_ref().filter(|h| !document.jobs.contains_key(*h)) {
            return Err(bad(format!("its health job {health} is not one of its jobs")).into());
        }
        for bundle in &document.bundles {
            let file_ok = !bundle.name.is_empty()
                && !bundle.name.starts_with('.')
                && bundle.name != "release.json"
                && bundle.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !file_ok {
                return Err(bad(format!("bundle name {:?} is not a plain file name", bundle.name)).into());
            }
        }
        Ok(Some(Offer { document, bytes, digest }))
    }

    /// Downloads `offer`'s bundles, each verified against its signed length
    /// and hash and against the document's digest, and writes them
    /// atomically under `staging/<document digest>/` with the document as
    /// `release.json`. Nothing unverified is ever written there.
    pub async fn download(&mut self, offer: Offer, staging: &Path, now: jiff::Timestamp) -> Result<Staged, StageError> {
        let Offer { document, bytes, digest } = offer;
        let name = format!("releases/{}.json", document.channel);
        let bad = |reason: String| SyncError::BadDocument { target: name.clone(), reason };
        let dir = staging_dir(staging, &digest);
        crate::files::create_private_dir(&dir).map_err(|e| StageError::Io(format!("{}: {e}", dir.display())))?;
        let mut bundles = Vec::new();
        for bundle in &document.bundles {
            let bytes = self.target(&bundle.target, now).await?;
            let actual = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
            if actual != bundle.digest || bytes.len() as u64 != bundle.length {
                return Err(bad(format!("bundle {} is not the one the document names", bundle.target)).into());
            }
            let path = dir.join(&bundle.name);
            crate::files::write_atomic(&path, &bytes, crate::files::Mode::Private)
                .map_err(|e| StageError::Io(format!("{}: {e}", path.display())))?;
            bundles.push((bundle.target.clone(), path));
        }
        let path = dir.join("release.json");
        crate::files::write_atomic(&path, &bytes, crate::files::Mode::Private)
            .map_err(|e| StageError::Io(format!("{}: {e}", path.display())))?;
        Ok(Staged { document, digest, dir, bundles })
    }

    /// [`Client::offer`], then [`Client::download`].
    pub async fn stage(
        &mut self,
        channel: &str,
        device: &gates::Device,
        staging: &Path,
        now: jiff::Timestamp,
    ) -> Result<Option<Staged>, StageError> {
        match self.offer(channel, device, now).await? {
            Some(offer) => Ok(Some(self.download(offer, staging, now).await?)),
            None => Ok(None),
        }
    }
}

/// Why a release was not staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The origin, the metadata or a target failed (see [`SyncError::code`]).
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A gate refused the release.
    #[error(transparent)]
    Gate(#[from] gates::GateRefusal),
    /// The staging directory could not be written.
    #[error("staging: {0}")]
    Io(String),
}

impl StageError {
    /// The stable code: the sync error's, the gate's, or `staging_io`.
    pub fn code(&self) -> &'static str {
        match self {
            StageError::Sync(e) => e.code(),
            StageError::Gate(e) => e.code(),
            StageError::Io(_) => "staging_io",
        }
    }
}
