//! Files and directories private to the user, and atomic writes.
//!
//! The state directory holds run outputs, logs and durable state, and key
//! files hold secrets: wfrun creates all of them so that only their owner
//! can read or write them (directories 0700, files 0600 on Unix).
//! [`write_atomic`] is the one way wfrun replaces a file (a bundle it packs
//! or signs, a cache entry, a signature): a reader sees the old file or the
//! new one, never half of either, and the new one survives a power loss once
//! the call returns. [`read_capped`] is the one way wfrun reads a file a
//! user names (a bundle, an input, a config, a key): regular files only,
//! and a size cap checked before the first byte is read.
//! [`drop_cached_pages`] asks the kernel to forget a file's cached pages,
//! so that the next mapping of it faults in only what it touches.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Creates `dir` and any missing parents, private to the user. An existing
/// directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// This process's real user id.
#[cfg(unix)]
pub fn current_uid() -> Option<u32> {
    Some(rustix::process::getuid().as_raw())
}

/// Why a state directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// It cannot be created, read or tightened.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another user owns it: what it holds cannot be trusted.
    #[error("{} is owned by user {owner}, not by this user ({me}); refusing to use it", path.display())]
    NotOwned {
        /// The directory.
        path: std::path::PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's user.
        me: u32,
    },
}

/// Makes `dir` a state directory fit to trust: created 0700 if missing,
/// refused if another user owns it, and tightened to 0700 (with a warning)
/// if group or others may use it.
pub fn secure_state_dir(dir: &Path) -> Result<(), StateDirError> {
    let io = |source| StateDirError::Io { path: dir.to_path_buf(), source };
    create_private_dir(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(dir).map_err(io)?;
        if let Some(me) = current_uid()
            && meta.uid() != me
        {
            return Err(StateDirError::NotOwned { path: dir.to_path_buf(), owner: meta.uid(), me });
        }
        if meta.mode() & 0o077 != 0 {
            tracing::warn!("{}: mode {:o} lets others in; tightening it to 0700", dir.display(), meta.mode() & 0o777);
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    Ok(())
}

/// Creates `path` empty and 0600 if it is missing, and tightens it to 0600
/// if it exists: for files another library then opens (SQLite's database,
/// whose `-wal` and `-shm` files take the database file's mode).
pub fn ensure_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if file.metadata()?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// The largest file of each kind wfrun reads.
pub mod caps {
    /// A bundle (and the largest component the sandbox compiles).
    pub const BUNDLE: u64 = 256 * 1024 * 1024;
    /// An input file, or input on stdin.
    pub const INPUT: u64 = 64 * 1024 * 1024;
    /// A config, policy, secrets, tokens or key file, a signature.
    pub const SETTINGS: u64 = 1024 * 1024;
}

/// Reads `path` whole, refusing what would read without bound: anything
/// but a regular file (a FIFO, a device such as `/dev/zero`, a directory)
/// with `InvalidInput`, and a file over `max` bytes with `FileTooLarge`,
/// both before a byte is read. Opened non-blocking, so a FIFO cannot hang
/// the open.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    read_capped_identified(path, max).map(|(bytes, _)| bytes)
}

/// How old a file's change time must be before its identity stands in for
/// its hash: two writes within one clock tick are then far in the past.
pub const SETTLED: Duration = Duration::from_secs(2);

/// A file's identity: what changes whenever its contents do. Once its
/// change time is [`SETTLED`] old, it stands in for a hash of the contents
/// (the artifact cache, remembered bundle digests): a write changes the
/// change time, and no one but root can set it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    /// The device.
    pub dev: u64,
    /// The inode.
    pub ino: u64,
    /// The size.
    pub size: u64,
    /// The modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// The change time (seconds, nanoseconds): no user can set it back.
    pub ctime: (i64, i64),
}

impl Identity {
    /// The identity in `meta`.
    #[cfg(unix)]
    pub fn of(meta: &std::fs::Metadata) -> Identity {
        use std::os::unix::fs::MetadataExt;
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The identity in `meta`.
    #[cfg(not(unix))]
    pub fn of(_: &std::fs::Metadata) -> Identity {
        // No change time to rely on: never matches a recorded identity.
        Identity::default()
    }

    /// Whether the last change is at least [`SETTLED`] old.
    pub fn settled(&self) -> bool {
        let changed = SystemTime::UNIX_EPOCH + Duration::new(self.ctime.0.max(0) as u64, self.ctime.1.max(0) as u32);
        self.ctime.0 > 0 && SystemTime::now().duration_since(changed).is_ok_and(|age| age >= SETTLED)
    }

    /// Its 56 bytes, appended to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for n in [self.dev, self.ino, self.size] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for n in [self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1] {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }

    /// An identity from its 56 bytes.
    pub fn decode(bytes: &[u8]) -> Option<Identity> {
        if bytes.len() != 56 {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        let s = |i: usize| u(i) as i64;
        Some(Identity { dev: u(0), ino: u(1), size: u(2), mtime: (s(3), s(4)), ctime: (s(5), s(6)) })
    }
}

/// [`read_capped`], with the file's identity, or `None` if the file changed
/// while it was read.
pub fn read_capped_identified(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, Option<Identity>)> {
    use std::io::{Error, ErrorKind, Read};
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, 0o4000); // O_NONBLOCK
    let file = options.open(path)?;
    let before = file.metadata()?;
    if !before.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if before.len() > max {
        return Err(Error::new(ErrorKind::FileTooLarge, format!("{} bytes, over the limit of {max}", before.len())));
    }
    let mut bytes = Vec::with_capacity(before.len() as usize);
    (&file).take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(ErrorKind::FileTooLarge, format!("over the limit of {max} bytes")));
    }
    let identity = Identity::of(&before);
    let after = Identity::of(&file.metadata()?);
    let whole = identity == after && identity.size == bytes.len() as u64;
    Ok((bytes, whole.then_some(identity)))
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_text(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, max)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Opens `path` for writing, private to the user: a new file only
/// (`create_new`), or created or truncated.
pub fn create_private_file(path: &Path, create_new: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Who may read a file that [`write_atomic`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only its owner (0600): keys, cache entries, anything in the state
    /// directory.
    Private,
    /// As the umask allows (0666 & !umask): bundles and signatures to hand
    /// to others.
    Shared,
}

/// Replaces `path` with `bytes` atomically and durably: writes a temporary
/// file in the same directory, fsyncs it, renames it over `path`, and fsyncs
/// the directory. On any error the temporary file is removed and `path` is
/// as it was.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Unique per process and call, so concurrent writers never share a
    // temporary file.
    let mut nonce = [0u8; 8];
    let _ = getrandom::fill(&mut nonce);
    let temp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), hex::encode(nonce)));
    let written = (|| {
        let mut file = match mode {
            Mode::Private => create_private_file(&temp, true)?,
            Mode::Shared => OpenOptions::new().write(true).create_new(true).open(&temp)?,
        };
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Asks the kernel to drop `file`'s clean pages from its page cache, so
/// that the next reader's mapping faults in only the pages it touches.
///
/// Kernels that cache file data in large folios (ext4 and XFS since Linux
/// 6.x) map a whole folio, up to a couple of MiB, into a process at the
/// first touch of any page in it. The folios a write or a sequential read
/// leaves behind are the largest, so a mapped compiled artifact that was
/// just written or hashed counts several MiB of code the guest never runs
/// in the resident memory of every process that maps it, while pages read
/// in by the mapping's own faults come in small ones. Only advice: pages
/// that are dirty or mapped by a process stay.
pub fn drop_cached_pages(file: &File) {
    #[cfg(target_os = "linux")]
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.wasm");
        std::fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new bytes", Mode::Private).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new bytes");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["bundle.wasm"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn a_failed_atomic_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        // A directory in the way: the rename fails.
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"kept").unwrap();
        assert!(write_atomic(&path, b"new", Mode::Shared).is_err());
        assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"kept");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
