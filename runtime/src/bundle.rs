//! Bundle files: reading them and rejecting what is not a component.
//!
//! A bundle is one `.wasm` file holding a WebAssembly component. For now a
//! bundle is a single component, either a node or a job; workflow bundles
//! (a component nesting several nodes plus the workflow definition) and
//! signatures come later and extend this module. [`Bundle::read`] checks
//! what can be checked without compiling: that the file exists, that it is
//! Wasm, and that it is a component rather than a core module. Each failure is
//! a [`BundleError`] naming the file and the reason.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Why a file cannot be used as a bundle. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file does not exist.
    #[error("{}: no such file", path.display())]
    Missing {
        /// The bundle path as given.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The bundle path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not start with the Wasm magic bytes.
    #[error("{}: not a WebAssembly file (it does not start with \\0asm)", path.display())]
    NotWasm {
        /// The bundle path as given.
        path: PathBuf,
    },
    /// The file is a core module, which cannot carry WASI 0.2 or the node
    /// contract.
    #[error(
        "{}: this is a core WebAssembly module, not a component; build for the \
         wasm32-wasip2 target, or wrap it with `wasm-tools component new`",
        path.display()
    )]
    CoreModule {
        /// The bundle path as given.
        path: PathBuf,
    },
    /// The component does not validate or compile.
    #[error("{}: invalid component: {reason}", path.display())]
    Invalid {
        /// The bundle path as given.
        path: PathBuf,
        /// What the validator or compiler said.
        reason: String,
    },
    /// The component exports neither a node nor a command.
    #[error(
        "{}: exports neither `{node}` (a node) nor `wasi:cli/run@0.2.x` (a job); \
         its exports are: {exports}",
        path.display(),
        node = wfrun_host_api::HANDLER_EXPORT
    )]
    NoKnownWorld {
        /// The bundle path as given.
        path: PathBuf,
        /// The component's export names, comma-separated (or `none`).
        exports: String,
    },
    /// The component imports something wfrun does not offer.
    #[error("{}: cannot be linked: {reason}", path.display())]
    Unlinkable {
        /// The bundle path as given.
        path: PathBuf,
        /// The linker's explanation, naming the import.
        reason: String,
    },
}

/// A bundle file's bytes, read and checked to be a component.
#[derive(Debug, Clone)]
pub struct Bundle {
    path: PathBuf,
    bytes: Vec<u8>,
    digest: String,
}

/// The `\0asm` magic every Wasm binary starts with.
const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Bytes 6..8 of the header: 0 for a core module, 1 for a component.
const COMPONENT_LAYER: [u8; 2] = [1, 0];

impl Bundle {
    /// Reads the bundle at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => BundleError::Missing { path: path.clone() },
            _ => BundleError::Read {
                path: path.clone(),
                source,
            },
        })?;
        Bundle::from_bytes(path, bytes)
    }

    /// A bundle from bytes already in memory; `path` names it in errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Bundle, BundleError> {
        let path = path.into();
        if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
            return Err(BundleError::NotWasm { path });
        }
        if bytes[6..8] != COMPONENT_LAYER {
            return Err(BundleError::CoreModule { path });
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        Ok(Bundle {
            path,
            bytes,
            digest,
        })
    }

    /// The path the bundle was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bundle's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `sha256:<hex>` of the bundle's bytes.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_text_files_as_not_wasm() {
        let err = Bundle::from_bytes("notes.txt", b"hello, world".to_vec()).unwrap_err();
        assert!(matches!(err, BundleError::NotWasm { .. }));
    }

    #[test]
    fn rejects_core_modules() {
        let module = wat::parse_str("(module)").unwrap();
        let err = Bundle::from_bytes("m.wasm", module).unwrap_err();
        assert!(matches!(err, BundleError::CoreModule { .. }));
    }

    #[test]
    fn accepts_components_and_digests_them() {
        let component = wat::parse_str("(component)").unwrap();
        let bundle = Bundle::from_bytes("c.wasm", component.clone()).unwrap();
        assert_eq!(
            bundle.digest(),
            format!("sha256:{}", hex::encode(Sha256::digest(&component)))
        );
    }

    #[test]
    fn missing_files_are_named() {
        let err = Bundle::read("/definitely/not/here.wasm").unwrap_err();
        assert!(matches!(&err, BundleError::Missing { path } if path.ends_with("here.wasm")));
    }
}
