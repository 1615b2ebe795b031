//! The compiled-artifact cache: compile a component once, load it after.
//!
//! Compiling with Cranelift costs ~100 ms for a small component (seconds for
//! an interpreter); loading a precompiled artifact costs a few milliseconds.
//! [`ArtifactCache`] keeps artifacts in `<state-dir>/cache/`, one per
//! component and engine: `NAME.cwasm` is wasmtime's artifact as it
//! serialized it, and `NAME.meta` says where it came from. NAME is the
//! component's SHA-256, the engine's compatibility hash and the wfrun
//! version, so an artifact is only ever offered to an engine that made it.
//! The artifact is loaded by mapping the file (`deserialize_file`): nothing
//! is copied, and wasmtime maps the guests' initial memory images from it
//! copy-on-write, so a large component (an interpreter with its heap
//! snapshot) starts without copying its heap. An artifact the cache has
//! just written or hashed is dropped from the page cache
//! ([`crate::files::drop_cached_pages`]): the large folios a write or a
//! sequential read leaves would each be counted whole, up to a couple of
//! MiB, in the resident memory of every run that maps the file.
//!
//! Loading an artifact is `unsafe` in wasmtime: it is machine code, trusted
//! as is. The cache is safe by construction:
//! - both files are written atomically ([`write_atomic`]: a temporary file,
//!   mode 0600, fsynced and renamed) into a directory private to the user
//!   (0700), so a reader never sees half a file;
//! - the meta file records the SHA-256 of the component the artifact was
//!   compiled from and the engine's key, checked at load (an artifact
//!   copied over another component's name is refused), and the artifact's
//!   own SHA-256;
//! - the artifact's SHA-256 is checked over its bytes on the first load
//!   after it was written; the meta file then also records the file's
//!   identity (device, inode, size, modification and change times), and a
//!   later load whose file has that identity skips the hash (any write to
//!   the file changes its change time, which no user can set back; the
//!   identity is recorded only once the change time is two seconds old, so
//!   a write in the same clock tick cannot go unnoticed);
//! - both files are read only if this user owns them and no one else may
//!   write them (checked on the open files);
//! - an entry that is truncated, corrupt, of another component or made by an
//!   incompatible engine is removed and the component compiled again; it is
//!   never executed.

use crate::files::Identity;
use crate::files::{Mode, create_private_dir, write_atomic};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every meta file.
const MAGIC: &[u8] = b"wfrun-artifact-v3\n";

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

/// What a meta file says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    component_digest: [u8; 32],
    engine_key: String,
    artifact_digest: [u8; 32],
    /// The artifact file's identity when its hash was last checked, once
    /// settled.
    verified: Option<Identity>,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + 32 + 1 + self.engine_key.len() + 32 + 1 + 56);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.component_digest);
        out.push(self.engine_key.len() as u8);
        out.extend_from_slice(self.engine_key.as_bytes());
        out.extend_from_slice(&self.artifact_digest);
        match &self.verified {
            Some(identity) => {
                out.push(1);
                identity.encode(&mut out);
            }
            None => out.push(0),
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Meta> {
        let rest = bytes.strip_prefix(MAGIC)?;
        if rest.len() < 33 {
            return None;
        }
        let (component_digest, rest) = rest.split_at(32);
        let (&length, rest) = rest.split_first()?;
        if rest.len() < usize::from(length) + 33 {
            return None;
        }
        let (engine_key, rest) = rest.split_at(usize::from(length));
        let (artifact_digest, rest) = rest.split_at(32);
        let verified = match rest.split_first()? {
            (0, []) => None,
            (1, identity) => Some(Identity::decode(identity)?),
            _ => return None,
        };
        Some(Meta {
            component_digest: component_digest.try_into().ok()?,
            engine_key: String::from_utf8(engine_key.to_vec()).ok()?,
            artifact_digest: artifact_digest.try_into().ok()?,
            verified,
        })
    }
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

    /// The artifact's path and its meta file's.
    fn entry(&self, digest: &[u8]) -> (PathBuf, PathBuf) {
        let name = format!("{}-{}", hex::encode(digest), self.engine_key);
        (self.dir.join(format!("{name}.cwasm")), self.dir.join(format!("{name}.meta")))
    }

    /// The compiled form of the component whose SHA-256 is `digest`: from
    /// the cache if a sound entry is there, else `compile()`d and stored.
    pub fn load_or_compile<E>(
        &self,
        engine: &Engine,
        digest: &[u8],
        compile: impl FnOnce() -> Result<Component, E>,
    ) -> Result<(Component, Origin), E> {
        let (artifact, meta) = self.entry(digest);
        let mut origin = Origin::Compiled;
        if meta.exists() || artifact.exists() {
            match self.checked(&artifact, &meta, digest).map(|()| deserialize(engine, &artifact)) {
                Some(Ok(loaded)) => return Ok((loaded, Origin::Cached)),
                _ => {
                    tracing::warn!("removing unusable cache entry {}", artifact.display());
                    let _ = std::fs::remove_file(&meta);
                    let _ = std::fs::remove_file(&artifact);
                    origin = Origin::Rebuilt;
                }
            }
        }
        let compiled = compile()?;
        match self.store(&artifact, &meta, digest, &compiled) {
            // The code is kept as a mapping of the file just written, as a
            // cached entry would be, not as the compiler's copy: only the
            // pages runs touch are resident, and they are the page cache's
            // to drop (a daemon that compiled the Python and JavaScript
            // hello nodes held 77 MiB of such copies).
            Ok(()) => match deserialize(engine, &artifact) {
                Ok(mapped) => Ok((mapped, origin)),
                Err(e) => {
                    // Only memory depends on it: the compiler's copy runs alike.
                    tracing::warn!("cannot map the cache entry just written {}: {e:#}", artifact.display());
                    Ok((compiled, origin))
                }
            },
            Err(e) => {
                // A cache that cannot be written costs speed, not correctness.
                tracing::warn!("cannot write cache entry {}: {e:#}", artifact.display());
                Ok((compiled, origin))
            }
        }
    }

    /// The compiled form of the component whose SHA-256 is `digest`, if a
    /// sound entry for it is here. An unusable entry is left for
    /// [`load_or_compile`](Self::load_or_compile) to replace.
    pub fn load(&self, engine: &Engine, digest: &[u8]) -> Option<Component> {
        let (artifact, meta) = self.entry(digest);
        self.checked(&artifact, &meta, digest)?;
        deserialize(engine, &artifact).ok()
    }

    /// Whether the entry at `artifact` and `meta` is sound for the component
    /// whose SHA-256 is `digest` and this engine: the meta file names them,
    /// and the artifact's hash holds (or its identity is the one recorded
    /// when the hash last held). Records a settled identity.
    fn checked(&self, artifact: &Path, meta_path: &Path, digest: &[u8]) -> Option<()> {
        let (meta_file, _) = open_own(meta_path)?;
        let mut meta = Meta::decode(&read_all(&meta_file)?)?;
        if meta.component_digest.as_slice() != digest || meta.engine_key != self.engine_key {
            return None;
        }
        let (file, identity) = open_own(artifact)?;
        if meta.verified == Some(identity) {
            return Some(());
        }
        let bytes = read_all(&file)?;
        // The sequential read left the artifact's pages cached in large
        // folios, which a mapping would count whole (files::drop_cached_pages).
        crate::files::drop_cached_pages(&file);
        if Sha256::digest(bytes).as_slice() != meta.artifact_digest {
            return None;
        }
        if identity.settled() {
            meta.verified = Some(identity);
            // Only speed depends on it: a meta file that cannot be written
            // means the hash is checked again next time.
            let _ = write_atomic(meta_path, &meta.encode(), Mode::Private);
        }
        Some(())
    }

    fn store(&self, artifact: &Path, meta: &Path, component_digest: &[u8], compiled: &Component) -> anyhow::Result<()> {
        let bytes = compiled.serialize()?;
        create_private_dir(&self.dir)?;
        // The meta file goes first: an artifact without its meta file is
        // never loaded, and the artifact it names is checked by its hash.
        let record = Meta {
            component_digest: component_digest.try_into()?,
            engine_key: self.engine_key.clone(),
            artifact_digest: Sha256::digest(&bytes).into(),
            verified: None,
        };
        write_atomic(meta, &record.encode(), Mode::Private)?;
        write_atomic(artifact, &bytes, Mode::Private)?;
        // The write left the artifact cached in large folios (fsynced, so
        // clean): dropped, so that the runs that map it count only the
        // pages they touch (files::drop_cached_pages).
        if let Ok(file) = std::fs::File::open(artifact) {
            crate::files::drop_cached_pages(&file);
        }
        Ok(())
    }
}

/// Every entry in the cache directory `dir`: its artifact's file name and
/// size in bytes.
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

/// Removes every entry in the cache directory `dir` (artifacts and meta
/// files); returns how many.
pub fn clear(dir: &Path) -> std::io::Result<usize> {
    // The remembered bundle digests (crate::bundle::memo) go too.
    let _ = std::fs::remove_dir_all(dir.join("digests"));
    let entries = entries(dir)?;
    for (name, _) in &entries {
        std::fs::remove_file(dir.join(name))?;
        let _ = std::fs::remove_file(dir.join(name.replace(".cwasm", ".meta")));
    }
    Ok(entries.len())
}

/// Opens `path` only if it is a regular file this user owns and no one else
/// may write, checked on the open file; the file and its identity.
fn open_own(path: &Path) -> Option<(std::fs::File, Identity)> {
    let file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mine = crate::files::current_uid().is_none_or(|me| me == meta.uid());
        if !meta.is_file() || !mine || meta.mode() & 0o022 != 0 {
            tracing::warn!("ignoring cache file {}: not a private file of this user", path.display());
            return None;
        }
    }
    Some((file, Identity::of(&meta)))
}

/// The rest of `file`'s bytes.
fn read_all(mut file: &std::fs::File) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` is a file this cache serialized from a component it
    // compiled itself, written atomically (temp file, rename) into a
    // directory only this user can write; the file is this user's and no
    // one else may write it (checked on the open file just now), its meta
    // file names the component and the engine this load is for, and its
    // SHA-256 was checked over its bytes, or its identity (which any write
    // changes) is the one it had when the hash last held. Between that check
    // and wasmtime's open, only this user (or root) could replace the file:
    // a principal who could equally replace the wfrun binary. wasmtime
    // itself rejects artifacts from an incompatible engine or version.
    unsafe { Component::deserialize_file(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn meta() -> Meta {
        Meta {
            component_digest: Sha256::digest(b"component a").into(),
            engine_key: "engine-1".to_owned(),
            artifact_digest: Sha256::digest(b"machine code").into(),
            verified: None,
        }
    }

    #[test]
    fn only_whole_meta_files_decode_and_they_name_their_component_engine_and_identity() {
        let plain = meta();
        assert_eq!(Meta::decode(&plain.encode()), Some(plain.clone()));
        let identity = Identity { dev: 1, ino: 2, size: 3, mtime: (4, 5), ctime: (6, 7) };
        let verified = Meta { verified: Some(identity), ..plain.clone() };
        assert_eq!(Meta::decode(&verified.encode()), Some(verified.clone()));
        let whole = verified.encode();
        for cut in [0, MAGIC.len(), MAGIC.len() + 10, whole.len() - 1] {
            assert_eq!(Meta::decode(&whole[..cut]), None, "cut at {cut}");
        }
        let mut longer = whole.clone();
        longer.push(0);
        assert_eq!(Meta::decode(&longer), None);
        assert_eq!(Meta::decode(b"something else entirely"), None);
    }

    /// The share of `path`'s pages in the kernel's page cache (`mincore`
    /// over a mapping of it that touches nothing).
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn share_cached(path: &Path) -> f64 {
        use std::os::fd::AsRawFd;
        unsafe extern "C" {
            fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> *mut u8;
            fn munmap(addr: *mut u8, len: usize) -> i32;
            fn mincore(addr: *mut u8, len: usize, vec: *mut u8) -> i32;
        }
        const PROT_READ: i32 = 1;
        const MAP_SHARED: i32 = 1;
        let file = std::fs::File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let pages = len.div_ceil(4096);
        let mut resident = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of a whole file, never
        // dereferenced; `resident` holds a byte for each 4 KiB page of it;
        // the mapping is removed before returning.
        unsafe {
            let at = mmap(std::ptr::null_mut(), len, PROT_READ, MAP_SHARED, file.as_raw_fd(), 0);
            assert!(at as isize != -1, "mmap failed");
            assert_eq!(mincore(at, len, resident.as_mut_ptr()), 0, "mincore failed");
            munmap(at, len);
        }
        resident.iter().filter(|b| **b & 1 != 0).count() as f64 / pages as f64
    }

    /// An artifact just written, or just hashed, sits in the page cache in
    /// the large folios a write or a sequential read leaves (Linux 6.x on
    /// ext4 or XFS), which every run's mapping would count whole in its
    /// resident memory: the cache drops them, so the runs fault in only
    /// the pages they touch.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_artifact_just_written_or_hashed_is_not_left_in_the_page_cache() {
        use wasm_encoder::{ConstExpr, DataSection, MemorySection, MemoryType, Module, ModuleSection};
        // A component whose artifact holds a 2 MiB memory image.
        let mut module = Module::new();
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 64,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        let mut data = DataSection::new();
        data.active(0, &ConstExpr::i32_const(0), vec![0xa5u8; 2 << 20]);
        module.section(&data);
        let mut component = wasm_encoder::Component::new();
        component.section(&ModuleSection(&module));
        let bytes = component.finish();

        let dir = tempfile::tempdir().unwrap();
        // A filesystem whose pages are its storage (tmpfs) cannot drop
        // them: nothing to observe there.
        let probe = dir.path().join("probe");
        std::fs::write(&probe, vec![1u8; 1 << 20]).unwrap();
        let file = std::fs::File::open(&probe).unwrap();
        file.sync_all().unwrap();
        crate::files::drop_cached_pages(&file);
        if share_cached(&probe) > 0.5 {
            eprintln!("skipped: {} keeps dropped pages cached (tmpfs?)", dir.path().display());
            return;
        }
        let engine = Engine::default();
        let cache = ArtifactCache::new(dir.path(), &engine);
        let digest = Sha256::digest(&bytes);
        let (artifact, meta) = cache.entry(&digest);
        let compiled = Component::new(&engine, &bytes).unwrap();
        cache.store(&artifact, &meta, &digest, &compiled).unwrap();
        assert!(std::fs::metadata(&artifact).unwrap().len() > 2 << 20);
        let written = share_cached(&artifact);
        assert!(written < 0.1, "{:.0}% of the artifact just written is in the page cache", written * 100.0);

        // Read whole, as another process's hash would read it; this load
        // (the identity is not settled) hashes it and drops it again.
        std::fs::read(&artifact).unwrap();
        assert!(share_cached(&artifact) > 0.9, "reading did not cache the artifact");
        assert_eq!(cache.checked(&artifact, &meta, &digest), Some(()));
        let hashed = share_cached(&artifact);
        assert!(hashed < 0.1, "{:.0}% of the artifact just hashed is in the page cache", hashed * 100.0);
        assert!(cache.load(&engine, &digest).is_some(), "the dropped pages load again");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_component_just_compiled_is_served_from_its_cache_file_not_the_compilers_copy() {
        let bytes = wat::parse_str(r#"(component (core module (func (export "f"))))"#).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = ArtifactCache::new(dir.path(), &engine);
        let digest = Sha256::digest(&bytes);
        let (component, origin) = cache.load_or_compile(&engine, &digest, || Component::new(&engine, &bytes)).unwrap();
        assert!(matches!(origin, Origin::Compiled));
        let (artifact, _) = cache.entry(&digest);
        let artifact = artifact.canonicalize().unwrap();
        // The process maps the file it just wrote, for as long as the
        // component lives, and no longer.
        let mapped = || {
            std::fs::read_to_string("/proc/self/maps")
                .unwrap()
                .lines()
                .any(|line| line.ends_with(artifact.to_str().unwrap()))
        };
        assert!(mapped(), "{} is not mapped", artifact.display());
        drop(component);
        assert!(!mapped(), "{} is still mapped", artifact.display());
    }

    #[test]
    fn an_identity_stands_for_a_hash_only_once_its_change_is_settled() {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let fresh = Identity { ctime: (now.as_secs() as i64, 0), ..Identity::default() };
        assert!(!fresh.settled());
        let old = Identity { ctime: (now.as_secs() as i64 - 10, 0), ..Identity::default() };
        assert!(old.settled());
        assert!(!Identity::default().settled());
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_may_write_is_never_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry.cwasm");
        std::fs::write(&path, b"bytes").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(open_own(&path).and_then(|(file, _)| read_all(&file)).as_deref(), Some(&b"bytes"[..]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(open_own(&path).is_none());
    }
}
