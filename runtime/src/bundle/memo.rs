//! Remembered bundle digests: a bundle's SHA-256, and whether it is a plain
//! component with no embedded signature, kept by its file's identity
//! (device, inode, size, modification and change times) in the state
//! directory's cache. Running an unchanged large bundle again then neither
//! hashes it (18 MB for the Python hello node: a third of a cached `wfrun
//! exec`) nor, for a plain component whose artifact is cached, reads it at
//! all ([`super::Remembered`]).
//!
//! An entry is remembered only for a file whose change time was already
//! [`SETTLED`](crate::files::SETTLED) old when it was hashed, and recalled
//! only for the very same identity: any write to the file changes its
//! change time, which no user but root can set back, and a file put in its
//! place has another inode. The entries live in the private cache
//! directory, next to the compiled artifacts they lead to, and one that
//! does not decode is ignored.

use crate::files::Identity;
use std::path::PathBuf;

const MAGIC: &[u8] = b"wfrun-digest-v2\n";

/// What is remembered of a bundle file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The SHA-256 of the whole file.
    pub sha256: [u8; 32],
    /// Whether it is a plain component (no workflow section) without an
    /// embedded signature: its digest is then all that running it from a
    /// cached artifact needs.
    pub plain: bool,
}

/// The remembered digests under one directory.
#[derive(Debug, Clone)]
pub struct DigestMemo {
    dir: PathBuf,
}

impl DigestMemo {
    /// Digests kept in `dir` (created when the first is remembered).
    pub fn new(dir: impl Into<PathBuf>) -> DigestMemo {
        DigestMemo { dir: dir.into() }
    }

    fn entry(&self, identity: &Identity) -> PathBuf {
        self.dir.join(format!("{:x}-{:x}", identity.dev, identity.ino))
    }

    /// What is remembered for a file of exactly `identity`.
    pub fn recall(&self, identity: &Identity) -> Option<Entry> {
        if !identity.settled() {
            return None;
        }
        let bytes = crate::files::read_capped(&self.entry(identity), 1024).ok()?;
        let rest = bytes.strip_prefix(MAGIC)?;
        if rest.len() != 56 + 32 + 1 || Identity::decode(&rest[..56])? != *identity {
            return None;
        }
        let plain = match rest[88] {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(Entry { sha256: rest[56..88].try_into().ok()?, plain })
    }

    /// Remembers `entry` for a file of `identity`, if its last change is
    /// settled. Failing to write only costs the next run a read and a hash.
    pub fn remember(&self, identity: &Identity, entry: &Entry) {
        if !identity.settled() {
            return;
        }
        let mut bytes = MAGIC.to_vec();
        identity.encode(&mut bytes);
        bytes.extend_from_slice(&entry.sha256);
        bytes.push(u8::from(entry.plain));
        let written = crate::files::create_private_dir(&self.dir)
            .and_then(|()| crate::files::write_atomic(&self.entry(identity), &bytes, crate::files::Mode::Private));
        if let Err(e) = written {
            tracing::debug!("not remembering the digest of a bundle in {}: {e}", self.dir.display());
        }
    }
}
