//! A metadata directory laid out as TUF clients conventionally keep one:
//! the newest `root.json`, `timestamp.json`, `snapshot.json`,
//! `targets.json` (and `ROLE.json` for a delegated role), nothing else.
//!
//! `sigstore-tuf` also asks to keep versioned copies (`root_history/N.root.json`,
//! `N.snapshot.json`) and target bytes; this store declines those, which
//! costs nothing: a client made from the stored `root.json` starts where
//! the last refresh ended. Writes are atomic ([`write_atomic`](crate::files::write_atomic)); the client
//! verifies whatever it reads back.

use std::path::{Path, PathBuf};

/// A plain metadata directory.
#[derive(Debug, Clone)]
pub struct PlainStore {
    dir: PathBuf,
}

impl PlainStore {
    /// The store in `dir` (created on first write).
    pub fn new(dir: &Path) -> PlainStore {
        PlainStore { dir: dir.to_path_buf() }
    }

    /// Where `name` is kept, if it is kept at all.
    fn path(&self, name: &str) -> Option<PathBuf> {
        let stem = name.strip_suffix(".json")?;
        // Versioned copies (`7.snapshot.json`), root history and targets are declined.
        if name.contains('/') || stem.split('.').next().is_some_and(|v| v.parse::<u64>().is_ok()) {
            return None;
        }
        if stem.is_empty() || stem.starts_with('.') {
            return None;
        }
        Some(self.dir.join(name))
    }
}

impl sigstore_tuf::MetadataStore for PlainStore {
    fn load(&self, name: &str) -> sigstore_tuf::Result<Option<Vec<u8>>> {
        let Some(path) = self.path(name) else { return Ok(None) };
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sigstore_tuf::Error::transport_with_source(format!("{}", path.display()), e)),
        }
    }

    fn store(&self, name: &str, bytes: &[u8]) -> sigstore_tuf::Result<()> {
        let Some(path) = self.path(name) else { return Ok(()) };
        crate::files::create_private_dir(&self.dir)
            .and_then(|()| crate::files::write_atomic(&path, bytes, crate::files::Mode::Private))
            .map_err(|e| sigstore_tuf::Error::transport_with_source(format!("{}", path.display()), e))
    }
}
