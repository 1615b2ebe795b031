//! Run outputs: the files a run wrote into its `/outputs` directory, kept
//! at `<state-dir>/runs/<run-id>/outputs` with the run and pruned with it.
//!
//! [`usage`] measures a directory without following links, stopping once
//! it has seen more entries than asked (so a guest that makes a million
//! files costs the watcher a bounded walk); [`list`] names the regular
//! files, relative paths with `/`, sorted.

use super::Store;
pub use crate::outcome::OutputFile;
use std::path::{Path, PathBuf};

/// What a directory holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Apparent sizes of its files together.
    pub bytes: u64,
    /// Its entries (files, directories, links), counted up to the limit
    /// the walk was given, plus one.
    pub entries: u64,
}

/// Measures `dir`, stopping after `max_entries + 1` entries. Files under
/// it that this process holds open after they were deleted count too (a
/// guest can unlink a file and go on writing to it).
pub fn usage(dir: &Path, max_entries: u64) -> Usage {
    let (bytes, entries) = held_deleted(dir);
    let mut usage = Usage { bytes, entries };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            usage.entries += 1;
            if usage.entries > max_entries {
                return usage;
            }
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                usage.bytes = usage.bytes.saturating_add(meta.len());
            }
        }
    }
    usage
}

/// Bytes and count of the files once under `dir` that this process still
/// holds open though they were deleted: in no directory, so no walk sees
/// them. Read from `/proc/self/fd` (Linux); elsewhere, none are seen.
fn held_deleted(dir: &Path) -> (u64, u64) {
    #[cfg(target_os = "linux")]
    {
        let (Ok(root), Ok(fds)) = (std::fs::canonicalize(dir), std::fs::read_dir("/proc/self/fd")) else {
            return (0, 0);
        };
        let (mut bytes, mut files) = (0u64, 0u64);
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            let Some(path) = target.strip_suffix(" (deleted)") else { continue };
            if !Path::new(path).starts_with(&root) {
                continue;
            }
            // Through the descriptor: the file itself, though it has no name.
            if let Ok(meta) = std::fs::metadata(fd.path())
                && meta.is_file()
            {
                bytes = bytes.saturating_add(meta.len());
                files += 1;
            }
        }
        (bytes, files)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        (0, 0)
    }
}

/// The most entries [`list`] walks: the outputs cap bounds a run's, and
/// this bounds the walk whatever is there.
const MAX_LISTED: usize = 1_000_000;

/// The regular files under `dir`, sorted by path. Links are neither
/// followed nor listed.
pub fn list(dir: &Path) -> Vec<OutputFile> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut walked = 0;
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            walked += 1;
            if walked > MAX_LISTED {
                break;
            }
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let relative = path.strip_prefix(dir).unwrap_or(&path);
                let parts: Vec<String> =
                    relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                files.push(OutputFile { path: parts.join("/"), bytes: meta.len() });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

impl Store {
    /// Run `run_id`'s own directory (its outputs live in it).
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.dir.join("runs").join(run_id)
    }

    /// Where run `run_id`'s `/outputs` is kept.
    pub fn outputs_dir(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("outputs")
    }

    /// The files run `run_id` left in its outputs (none, if it had none).
    pub fn outputs(&self, run_id: &str) -> Vec<OutputFile> {
        list(&self.outputs_dir(run_id))
    }
}
