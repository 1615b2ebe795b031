//! Files and directories private to the user.
//!
//! The state directory holds run outputs, logs, durable state and compiled
//! artifacts, and key files hold secrets: wfrun creates all of them so that
//! only their owner can read or write them (directories 0700, files 0600 on
//! Unix).

use std::fs::{DirBuilder, File, OpenOptions};
use std::path::Path;

/// Creates `dir` and any missing parents, private to the user. An existing
/// directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
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
