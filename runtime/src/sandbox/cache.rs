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
//! - an entry that is truncated, corrupt or made by an incompatible engine
//!   is removed and the component compiled again; it is never executed.

use crate::files::{Mode, create_private_dir, write_atomic};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry.
const MAGIC: &[u8] = b"wfrun-artifact-v1\n";

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

    /// The compiled form of `component` (whose SHA-256 is `digest`): from
    /// the cache if a sound entry is there, else compiled and stored.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        component: &[u8],
        digest: &[u8],
    ) -> wasmtime::Result<(Component, Origin)> {
        let path = self.entry(digest);
        let mut origin = Origin::Compiled;
        if let Ok(bytes) = std::fs::read(&path) {
            match checked_artifact(&bytes).map(|artifact| deserialize(engine, artifact)) {
                Some(Ok(loaded)) => return Ok((loaded, Origin::Cached)),
                _ => {
                    tracing::warn!("removing unusable cache entry {}", path.display());
                    let _ = std::fs::remove_file(&path);
                    origin = Origin::Rebuilt;
                }
            }
        }
        let compiled = Component::new(engine, component)?;
        if let Err(e) = self.store(&path, &compiled) {
            // A cache that cannot be written costs speed, not correctness.
            tracing::warn!("cannot write cache entry {}: {e:#}", path.display());
        }
        Ok((compiled, origin))
    }

    fn store(&self, path: &Path, compiled: &Component) -> anyhow::Result<()> {
        let artifact = compiled.serialize()?;
        create_private_dir(&self.dir)?;
        let mut entry = Vec::with_capacity(MAGIC.len() + 32 + artifact.len());
        entry.extend_from_slice(MAGIC);
        entry.extend_from_slice(&Sha256::digest(&artifact));
        entry.extend_from_slice(&artifact);
        write_atomic(path, &entry, Mode::Private)?;
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

/// The artifact inside an entry, if the entry is whole and its digest holds.
fn checked_artifact(entry: &[u8]) -> Option<&[u8]> {
    let rest = entry.strip_prefix(MAGIC)?;
    if rest.len() < 32 {
        return None;
    }
    let (digest, artifact) = rest.split_at(32);
    (Sha256::digest(artifact).as_slice() == digest).then_some(artifact)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` is exactly the bytes this cache serialized from a
    // component it compiled itself: the entry was written atomically (temp
    // file, rename) into a directory only this user can write, and its
    // SHA-256, recorded in the same file, was checked over these very bytes
    // just now, in memory, so no other process can swap them in between.
    // wasmtime itself rejects artifacts from an incompatible engine or
    // version, and the entry's name already binds both.
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_entries_with_a_matching_digest_are_offered() {
        let artifact = b"machine code";
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&Sha256::digest(artifact));
        entry.extend_from_slice(artifact);
        assert_eq!(checked_artifact(&entry), Some(&artifact[..]));
        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(checked_artifact(&flipped), None);
        assert_eq!(checked_artifact(&entry[..entry.len() - 1]), None);
        assert_eq!(checked_artifact(&entry[..MAGIC.len() + 10]), None);
        assert_eq!(checked_artifact(b"something else entirely"), None);
    }
}
