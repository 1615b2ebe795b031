//! The gates a verified release must pass before it may be staged: each
//! refusal with its own stable code, decided from the signed release
//! document and what the device is.
//!
//! The operator's local policy (egress, limit ceilings, node rules) and the
//! bundles' loading are later gates, applied when the release's bundles are
//! prepared (`policy::Policy::admit`, `runner::Runner::prepare`).

use crate::manifest::ReleaseDocument;

/// What a device is, for the gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// This runner's version (`CARGO_PKG_VERSION`).
    pub runner_version: semver::Version,
    /// The channel it follows.
    pub channel: String,
    /// Its rollout ring: it takes releases whose ring is at most this.
    pub ring: u32,
    /// The version of the active release, if any.
    pub active: Option<semver::Version>,
    /// The active release's document digest, if any: a channel still
    /// offering it is not downloaded again.
    pub active_digest: Option<String>,
    /// Release digests this device marked bad (rolled back), with their
    /// versions; never downloaded or tried again.
    pub bad: std::collections::BTreeMap<String, String>,
}

/// Why a release may not be staged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    /// The release needs a newer runner.
    #[error("release {version} needs wfrun {needed} or later; this runner is {runner}")]
    RunnerTooOld {
        /// The release version.
        version: String,
        /// Its `min_runner_version`.
        needed: String,
        /// This runner's.
        runner: String,
    },
    /// The document is for another channel.
    #[error("release {version} is for channel {channel:?}, not this device's {expected:?}")]
    WrongChannel {
        /// The release version.
        version: String,
        /// Its channel.
        channel: String,
        /// The device's.
        expected: String,
    },
    /// The release's ring is later than the device's.
    #[error("release {version} is for ring {ring}; this device is in ring {device_ring}")]
    NotYourRing {
        /// The release version.
        version: String,
        /// Its ring.
        ring: u32,
        /// The device's.
        device_ring: u32,
    },
    /// Lower than the active release, and not approved as a rollback.
    #[error("release {version} is lower than the active {active}, and not rollback_approved")]
    Downgrade {
        /// The release version.
        version: String,
        /// The active one.
        active: String,
    },
    /// The same as the active release: nothing to do.
    #[error("release {version} is already active")]
    AlreadyActive {
        /// The version.
        version: String,
    },
    /// A release this device rolled back from.
    #[error("release {version} ({digest}) failed its trial on this device before; it is not tried again")]
    KnownBad {
        /// The version.
        version: String,
        /// Its document digest.
        digest: String,
    },
    /// A version or runner version that is not semver.
    #[error("release {version}: {reason}")]
    BadVersion {
        /// The version as written.
        version: String,
        /// What is wrong.
        reason: String,
    },
}

impl GateRefusal {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            GateRefusal::RunnerTooOld { .. } => "runner_too_old",
            GateRefusal::WrongChannel { .. } => "wrong_channel",
            GateRefusal::NotYourRing { .. } => "not_your_ring",
            GateRefusal::Downgrade { .. } => "downgrade",
            GateRefusal::AlreadyActive { .. } => "already_active",
            GateRefusal::KnownBad { .. } => "known_bad",
            GateRefusal::BadVersion { .. } => "bad_version",
        }
    }
}

/// What the signed hash of a channel's release document alone decides,
/// before it is downloaded: the active release again, or a known-bad one.
pub fn check_digest(digest: &str, device: &Device) -> Result<(), GateRefusal> {
    if device.active_digest.as_deref() == Some(digest) {
        let version = device.active.as_ref().map(|v| v.to_string()).unwrap_or_default();
        return Err(GateRefusal::AlreadyActive { version });
    }
    if let Some(version) = device.bad.get(digest) {
        return Err(GateRefusal::KnownBad { version: version.clone(), digest: digest.to_owned() });
    }
    Ok(())
}

/// Whether `device` may stage `document` (whose bytes hash to `digest`).
pub fn check(document: &ReleaseDocument, digest: &str, device: &Device) -> Result<semver::Version, GateRefusal> {
    let version_text = document.version.clone();
    let bad = |reason: String| GateRefusal::BadVersion { version: version_text.clone(), reason };
    let version = semver::Version::parse(&document.version).map_err(|e| bad(e.to_string()))?;
    if document.channel != device.channel {
        return Err(GateRefusal::WrongChannel {
            version: version_text,
            channel: document.channel.clone(),
            expected: device.channel.clone(),
        });
    }
    if device.bad.contains_key(digest) {
        return Err(GateRefusal::KnownBad { version: version_text, digest: digest.to_owned() });
    }
    if let Some(min) = &document.min_runner_version {
        let needed = semver::Version::parse(min).map_err(|e| bad(format!("min_runner_version {min:?}: {e}")))?;
        if device.runner_version < needed {
            return Err(GateRefusal::RunnerTooOld {
                version: version_text,
                needed: min.clone(),
                runner: device.runner_version.to_string(),
            });
        }
    }
    if document.ring > device.ring {
        return Err(GateRefusal::NotYourRing { version: version_text, ring: document.ring, device_ring: device.ring });
    }
    match &device.active {
        Some(active) if *active == version => Err(GateRefusal::AlreadyActive { version: version_text }),
        Some(active) if *active > version && !document.rollback_approved => {
            Err(GateRefusal::Downgrade { version: version_text, active: active.to_string() })
        }
        _ => Ok(version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(version: &str) -> ReleaseDocument {
        ReleaseDocument {
            format: crate::manifest::RELEASE_FORMAT,
            channel: "stable".to_owned(),
            version: version.to_owned(),
            bundles: Vec::new(),
            jobs: Default::default(),
            policy: None,
            min_runner_version: None,
            ring: 0,
            rollback_approved: false,
            health: None,
        }
    }

    fn device(active: Option<&str>) -> Device {
        Device {
            runner_version: semver::Version::new(0, 1, 0),
            channel: "stable".to_owned(),
            ring: 1,
            active: active.map(|v| semver::Version::parse(v).unwrap()),
            active_digest: None,
            bad: [("sha256:bad".to_owned(), "0.5.0".to_owned())].into(),
        }
    }

    fn code(document: &ReleaseDocument, device: &Device) -> &'static str {
        check(document, "sha256:doc", device).map(|_| "ok").unwrap_or_else(|e| e.code())
    }

    #[test]
    fn each_gate_refuses_with_its_own_code() {
        assert_eq!(code(&document("1.0.0"), &device(None)), "ok");
        assert_eq!(code(&document("1.1.0"), &device(Some("1.0.0"))), "ok");
        assert_eq!(code(&document("1.0.0"), &device(Some("1.0.0"))), "already_active");
        assert_eq!(code(&document("0.9.0"), &device(Some("1.0.0"))), "downgrade");
        let approved = ReleaseDocument { rollback_approved: true, ..document("0.9.0") };
        assert_eq!(code(&approved, &device(Some("1.0.0"))), "ok");
        let newer_runner = ReleaseDocument { min_runner_version: Some("9.0.0".into()), ..document("2.0.0") };
        assert_eq!(code(&newer_runner, &device(None)), "runner_too_old");
        let other = ReleaseDocument { channel: "beta".into(), ..document("2.0.0") };
        assert_eq!(code(&other, &device(None)), "wrong_channel");
        let later_ring = ReleaseDocument { ring: 2, ..document("2.0.0") };
        assert_eq!(code(&later_ring, &device(None)), "not_your_ring");
        assert_eq!(code(&document("two"), &device(None)), "bad_version");
        assert_eq!(check(&document("3.0.0"), "sha256:bad", &device(None)).unwrap_err().code(), "known_bad");
    }
}
