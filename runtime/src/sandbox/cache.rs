//! The compiled-artifact cache: compile a component once, load it after.
//!
//! Compiling with Cranelift costs ~100 ms for a small component; loading a
//! precompiled artifact costs a few milliseconds. [`ArtifactCache`] keeps
//! artifacts in `<state-dir>/cache/`, one file per component and engine:
//! the name is the component's SHA-256, the engine's compatibility hash and
//! the wfrun version, so an artifact is only ever offered to an engine that
//! made it.
//!
//! Loading an artifact is `unsafe` in wasmtime: it is machine code, trusted
//! as is. The cache is safe by construction:
//! - entries are written atomically ([`write_atomic`]: a temporary file,
//!   mode 0600, fsynced and renamed) into a directory private to the user
//!   (0700), so a reader never sees half a file;
//! - each entry starts with the SHA-256 of the artifact, and the bytes that
//!   are hashed are the bytes that are deserialized (no re-read, no window
//!   to swap the file);
//! - each entry records the SHA-256 of the component it was compiled from
//!   and the engine's key, checked at load: an entry copied over another
//!   component's file name is refused;
//! - an entry is read only if this user owns it and no one else may write
//!   it (checked on the open file);
//! - an entry that is truncated, corrupt, of another component or made by an
//!   incompatible engine is removed and the component compiled again; it is
//!   never executed.

use crate::files::{Mode, create_private_dir, write_atomic};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry.
const MAGIC: &[u8] = b"wfrun-artifact-v2\n";

/// Where an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from the cache: no compilation.
    Cached,
    /// Compiled now (and stored for next time).
    Compiled,
    /// Compiled now because the cached entry was unusable; it was removed
    /// and replaced.
    Rebuilt,
}

/// A directory of compiled artifacts for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    /// A cache in `dir` for artifacts of `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> ArtifactCache {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}-{}", hasher.finish(), env!("CARGO_PKG_VERSION"));
        ArtifactCache { dir: dir.to_path_buf(), engine_key }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, digest: &[u8]) -> PathBuf {
        self.dir.join(format!("{}-{}.cwasm", hex::encode(digest), self.engine_key))
    }

    /// The compiled form of the component whose SHA-256 is `digest`: from
    /// the cache if a sound entry is there, else `compile()`d and stored.
    pub fn load_or_compile<E>(
        &self,
        engine: &Engine,
        digest: &[u8],
        compile: impl FnOnce() -> Result<Component, E>,
    ) -> Result<(Component, Origin), E> {
        let path = self.entry(digest);
        let mut origin = Origin::Compiled;
        if let Some(bytes) = read_own_entry(&path) {
            match checked_artifact(&bytes, digest, &self.engine_key).map(|artifact| deserialize(engine, artifact)) {
                Some(Ok(loaded)) => return Ok((loaded, Origin::Cached)),
                _ => {
                    tracing::warn!("removing unusable cache entry {}", path.display());
                    let _ = std::fs::remove_file(&path);
                    origin = Origin::Rebuilt;
                }
            }
        }
        let compiled = compile()?;
        if let Err(e) = self.store(&path, digest, &compiled) {
            // A cache that cannot be written costs speed, not correctness.
            tracing::warn!("cannot write cache entry {}: {e:#}", path.display());
        }
        Ok((compiled, origin))
    }

    fn store(&self, path: &Path, component_digest: &[u8], compiled: &Component) -> anyhow::Result<()> {
        let artifact = compiled.serialize()?;
        create_private_dir(&self.dir)?;
        write_atomic(path, &entry_bytes(component_digest, &self.engine_key, &artifact), Mode::Private)?;
        Ok(())
    }
}

/// Every entry in the cache directory `dir`: file name and size in bytes.
pub fn entries(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut entries = Vec::new();
    let Ok(listing) = std::fs::read_dir(dir) else { return Ok(entries) };
    for entry in listing {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".cwasm") {
            entries.push((name, entry.metadata()?.len()));
        }
    }
    entries.sort();
    Ok(entries)
}

/// Removes every entry in the cache directory `dir`; returns how many.
pub fn clear(dir: &Path) -> std::io::Result<usize> {
    let entries = entries(dir)?;
    for (name, _) in &entries {
        std::fs::remove_file(dir.join(name))?;
    }
    Ok(entries.len())
}

/// An entry: the magic, the SHA-256 of the component it was compiled from,
/// the engine key (length-prefixed), the SHA-256 of the artifact, and the
/// artifact.
fn entry_bytes(component_digest: &[u8], engine_key: &str, artifact: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(MAGIC.len() + 32 + 1 + engine_key.len() + 32 + artifact.len());
    entry.extend_from_slice(MAGIC);
    entry.extend_from_slice(component_digest);
    entry.push(engine_key.len() as u8);
    entry.extend_from_slice(engine_key.as_bytes());
    entry.extend_from_slice(&Sha256::digest(artifact));
    entry.extend_from_slice(artifact);
    entry
}

/// The artifact inside an entry, if the entry is whole, was made from the
/// component whose SHA-256 is `component_digest` by an engine with
/// `engine_key`, and its artifact digest holds. A file copied over another
/// component's entry name is refused here: it names its own source.
fn checked_artifact<'a>(entry: &'a [u8], component_digest: &[u8], engine_key: &str) -> Option<&'a [u8]> {
    let rest = entry.strip_prefix(MAGIC)?;
    let rest = rest.strip_prefix(component_digest).filter(|_| component_digest.len() == 32)?;
    let (&length, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(engine_key.as_bytes()).filter(|_| usize::from(length) == engine_key.len())?;
    if rest.len() < 32 {
        return None;
    }
    let (digest, artifact) = rest.split_at(32);
    (Sha256::digest(artifact).as_slice() == digest).then_some(artifact)
}

/// Reads an entry only if this user owns it and no one else may write it,
/// checked on the open file (so it cannot be swapped in between).
fn read_own_entry(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().ok()?;
        let mine = crate::files::current_uid().is_none_or(|me| me == meta.uid());
        if !meta.is_file() || !mine || meta.mode() & 0o022 != 0 {
            tracing::warn!("ignoring cache entry {}: not a private file of this user", path.display());
            return None;
        }
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` is exactly the bytes this cache serialized from a
    // component it compiled itself: the entry was written atomically (temp
    // file, rename) into a directory only this user can write, and its
    // SHA-256, recorded in the same file, was checked over these very bytes
    // just now, in memory, so no other process can swap them in between.
    // The file is this user's and no one else may write it (checked on the
    // open file), and the entry names the component it was compiled from
    // and the engine that compiled it, both checked against this load.
    // wasmtime itself rejects artifacts from an incompatible engine or
    // version.
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_entries_of_the_same_component_and_engine_with_a_matching_digest_are_offered() {
        let artifact = b"machine code";
        let component = Sha256::digest(b"component a");
        let entry = entry_bytes(&component, "engine-1", artifact);
        assert_eq!(checked_artifact(&entry, &component, "engine-1"), Some(&artifact[..]));
        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(checked_artifact(&flipped, &component, "engine-1"), None);
        assert_eq!(checked_artifact(&entry[..entry.len() - 1], &component, "engine-1"), None);
        assert_eq!(checked_artifact(&entry[..MAGIC.len() + 10], &component, "engine-1"), None);
        assert_eq!(checked_artifact(b"something else entirely", &component, "engine-1"), None);
        // Another component's entry, copied over this one's name.
        assert_eq!(checked_artifact(&entry, &Sha256::digest(b"component b"), "engine-1"), None);
        assert_eq!(checked_artifact(&entry, &component, "engine-2"), None);
    }

    #[cfg(unix)]
    #[test]
    fn an_entry_others_may_write_is_never_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry.cwasm");
        std::fs::write(&path, b"bytes").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_own_entry(&path).as_deref(), Some(&b"bytes"[..]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(read_own_entry(&path), None);
    }
}
