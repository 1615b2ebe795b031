//! Bundle files: reading, packing, and rejecting what is not a component.
//!
//! A bundle is one `.wasm` file that is itself a valid WebAssembly component.
//! Either it is a plain component (a node or a job: a one-node bundle), or it
//! is a **workflow bundle**: an outer component whose nested component
//! sections are the node components, plus a custom section
//! [`WORKFLOW_SECTION`] holding the workflow definition as JSON
//! ([`EmbeddedWorkflow`]). [`pack`] writes one; [`Bundle::read`] checks what
//! can be checked without compiling (the file exists, is Wasm, is a
//! component, and a workflow section parses) and finds the nested
//! components. Each failure is a [`BundleError`] naming the file and the
//! reason. A bundle may carry a signature as its last section, or beside it
//! in `BUNDLE.sig` ([`signature`]). `docs/bundle-format.md` specifies the
//! layout.

pub mod memo;
pub mod signature;

use crate::manifest::WorkflowDef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use signature::{PublicKey, SIGNATURE_SECTION, SignatureError, SignatureRecord};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The name of the custom section that carries a workflow definition.
pub const WORKFLOW_SECTION: &str = "wfrun:workflow";

/// The version of the embedded workflow layout this wfrun writes and reads.
pub const WORKFLOW_FORMAT: u32 = 1;

/// The workflow section's content: the definition and where each node's
/// component is among the bundle's nested components.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedWorkflow {
    /// [`WORKFLOW_FORMAT`] at the time of packing.
    pub format: u32,
    /// The workflow definition, as validated at pack time.
    pub definition: WorkflowDef,
    /// Node id → index of its component among the nested components.
    pub components: BTreeMap<String, usize>,
}

/// Packs a workflow bundle: `components` are the distinct node component
/// binaries, in the order `workflow.components` indexes them.
pub fn pack(workflow: &EmbeddedWorkflow, components: &[Vec<u8>]) -> Vec<u8> {
    let mut bundle = wasm_encoder::Component::new();
    // Serialising plain data into a Vec cannot fail.
    let json = serde_json::to_vec(workflow).expect("workflow definitions serialise");
    bundle.section(&wasm_encoder::CustomSection { name: WORKFLOW_SECTION.into(), data: json.into() });
    for component in components {
        bundle.section(&wasm_encoder::RawSection {
            id: wasm_encoder::ComponentSectionId::Component as u8,
            data: component,
        });
    }
    bundle.finish()
}

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
    /// The bundle's structure is broken: it does not parse as a component,
    /// or its workflow section is malformed or does not match its
    /// components.
    #[error("{}: invalid component: {reason}", path.display())]
    Invalid {
        /// The bundle path as given.
        path: PathBuf,
        /// What the parser found.
        reason: String,
    },
    /// The signature section is malformed, duplicated or misplaced, or the
    /// signature does not verify or is not trusted.
    #[error("{}: {error}", path.display())]
    Signature {
        /// The bundle path as given.
        path: PathBuf,
        /// What is wrong, with its stable code.
        error: SignatureError,
    },
}

impl BundleError {
    /// The stable detail code under `invalid_bundle`: `missing`,
    /// `unreadable`, `not_wasm`, `core_module`, `invalid_component`, or the
    /// signature's own code (`signature_invalid`, ...).
    pub fn detail(&self) -> &'static str {
        match self {
            BundleError::Missing { .. } => "missing",
            BundleError::Read { source, .. } => host_fault(source).unwrap_or(match source.kind() {
                std::io::ErrorKind::FileTooLarge => "too_large",
                std::io::ErrorKind::InvalidInput => "not_a_file",
                _ => "unreadable",
            }),
            BundleError::NotWasm { .. } => "not_wasm",
            BundleError::CoreModule { .. } => "core_module",
            BundleError::Invalid { .. } => "invalid_component",
            BundleError::Signature { error, .. } => error.code(),
        }
    }
}

impl BundleError {
    /// Whether the failure is the host's (descriptors, memory, disk, I/O),
    /// not the bundle's: such a run is a `host_error`, retried and never
    /// counted toward pausing a job.
    pub fn is_host_fault(&self) -> bool {
        matches!(self, BundleError::Read { source, .. } if host_fault(source).is_some())
    }
}

/// The detail of an I/O error that is the host's fault: out of file
/// descriptors (`EMFILE`, `ENFILE`), of memory, of disk, or a device error.
pub fn host_fault(error: &std::io::Error) -> Option<&'static str> {
    match error.raw_os_error()? {
        23 | 24 => Some("descriptors_exhausted"), // ENFILE, EMFILE
        12 => Some("out_of_memory"),              // ENOMEM
        28 => Some("disk_full"),                  // ENOSPC
        5 | 4 | 11 => Some("io_error"),           // EIO, EINTR, EAGAIN
        _ => None,
    }
}

/// A bundle file's bytes, read and checked to be a component.
#[derive(Debug, Clone)]
pub struct Bundle {
    path: PathBuf,
    bytes: Vec<u8>,
    digest: String,
    sha256: [u8; 32],
    workflow: Option<EmbeddedWorkflow>,
    nested: Vec<Range<usize>>,
    /// The embedded signature and how many leading bytes it signs.
    signature: Option<(SignatureRecord, usize)>,
}

/// A bundle file's bytes, capped, with its identity if it did not change
/// while it was read.
fn read_file(path: &Path) -> Result<(Vec<u8>, Option<crate::files::Identity>), BundleError> {
    crate::files::read_capped_identified(path, crate::files::caps::BUNDLE).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => BundleError::Missing { path: path.to_path_buf() },
        _ => BundleError::Read { path: path.to_path_buf(), source },
    })
}

/// The `\0asm` magic every Wasm binary starts with.
const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Bytes 6..8 of the header: 0 for a core module, 1 for a component.
const COMPONENT_LAYER: [u8; 2] = [1, 0];

impl Bundle {
    /// Reads the bundle at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let path = path.as_ref().to_path_buf();
        let (bytes, _) = read_file(&path)?;
        Bundle::from_bytes(path, bytes)
    }

    /// Reads the bundle at `path` as [`Bundle::read`] does, taking its
    /// digest from `memo` when the file is unchanged since it was hashed
    /// (and remembering it when it was not).
    pub fn read_remembering(path: impl AsRef<Path>, memo: &memo::DigestMemo) -> Result<Bundle, BundleError> {
        let path = path.as_ref().to_path_buf();
        let (bytes, identity) = read_file(&path)?;
        let remembered = identity.as_ref().and_then(|identity| memo.recall(identity));
        let bundle = Bundle::from_bytes_digested(path, bytes, remembered.map(|entry| entry.sha256))?;
        let entry =
            memo::Entry { sha256: bundle.sha256, plain: bundle.workflow.is_none() && bundle.signature.is_none() };
        if let Some(identity) = identity
            && remembered != Some(entry)
        {
            memo.remember(&identity, &entry);
        }
        Ok(bundle)
    }

    /// A bundle from bytes already in memory; `path` names it in errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Bundle, BundleError> {
        Bundle::from_bytes_digested(path, bytes, None)
    }

    /// [`Bundle::from_bytes`], with the bytes' SHA-256 if it is known
    /// already (else it is computed).
    fn from_bytes_digested(
        path: impl Into<PathBuf>,
        bytes: Vec<u8>,
        sha256: Option<[u8; 32]>,
    ) -> Result<Bundle, BundleError> {
        let path = path.into();
        if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
            return Err(BundleError::NotWasm { path });
        }
        if bytes[6..8] != COMPONENT_LAYER {
            return Err(BundleError::CoreModule { path });
        }
        let sha256: [u8; 32] = sha256.unwrap_or_else(|| Sha256::digest(&bytes).into());
        let digest = hex::encode(sha256);
        let Scan { workflow, nested, signature } = scan(&path, &bytes)?;
        Ok(Bundle { path, bytes, digest, sha256, workflow, nested, signature })
    }

    /// The embedded workflow, if this is a workflow bundle.
    pub fn workflow(&self) -> Option<&EmbeddedWorkflow> {
        self.workflow.as_ref()
    }

    /// The bytes of nested component `index` of a workflow bundle.
    pub fn nested_component(&self, index: usize) -> Option<&[u8]> {
        self.nested.get(index).map(|range| &self.bytes[range.clone()])
    }

    /// Whether the bundle carries an embedded signature.
    pub fn is_signed(&self) -> bool {
        self.signature.is_some()
    }

    /// Checks the bundle's signature: the embedded one, else `detached`
    /// (the content of `BUNDLE.sig`, over the whole file). A signature that
    /// is present must verify, whatever the caller trusts; with `trusted`
    /// keys it must be by one of them; an unsigned bundle passes only when
    /// `required` is false. Returns the signer's key id, or `None` for an
    /// unsigned bundle. The trust policy that decides `trusted` and
    /// `required` is `policy::TrustPolicy`.
    pub fn verify(
        &self,
        detached: Option<&SignatureRecord>,
        trusted: &[PublicKey],
        required: bool,
    ) -> Result<Option<String>, BundleError> {
        match &self.signature {
            Some((record, signed_len)) => signature::verify(record, &self.bytes[..*signed_len], trusted)
                .map(Some)
                .map_err(|error| BundleError::Signature { path: self.path.clone(), error }),
            None => verify_detached(&self.path, &self.sha256, detached, trusted, required),
        }
    }

    /// Reads the detached signature `BUNDLE.sig` beside the bundle, if
    /// there is one.
    pub fn read_detached(&self) -> Result<Option<SignatureRecord>, BundleError> {
        read_detached(&self.path)
    }

    /// The path the bundle was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bundle's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The SHA-256 of the bundle's bytes.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// `sha256:<hex>` of the bundle's bytes.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.digest)
    }
}

/// Reads the detached signature `BUNDLE.sig` beside the bundle at `bundle`,
/// if there is one.
fn read_detached(bundle: &Path) -> Result<Option<SignatureRecord>, BundleError> {
    let path = signature::detached_path(bundle);
    match crate::files::read_capped(&path, crate::files::caps::SETTINGS) {
        Ok(bytes) => signature::parse_record(&bytes)
            .map(Some)
            .map_err(|error| BundleError::Signature { path: path.clone(), error }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BundleError::Read { path, source }),
    }
}

/// Checks the detached signature of the bundle at `path` whose SHA-256 is
/// `sha256` (a bundle without an embedded one), as [`Bundle::verify`] says.
fn verify_detached(
    path: &Path,
    sha256: &[u8; 32],
    detached: Option<&SignatureRecord>,
    trusted: &[PublicKey],
    required: bool,
) -> Result<Option<String>, BundleError> {
    let checked = match detached {
        Some(record) => signature::verify_digest(record, sha256, trusted),
        None if required => Err(SignatureError::Missing),
        None => return Ok(None),
    };
    checked.map(Some).map_err(|error| BundleError::Signature { path: path.to_path_buf(), error })
}

/// A plain component's bundle known by its file's identity, not read: its
/// digest is remembered ([`memo`]) from when the very same file was last
/// read and found to be a plain component without an embedded signature.
/// That digest is all it takes to run it from a compiled artifact, so a
/// cached `exec` of an 18 MB interpreter neither reads nor hashes it.
#[derive(Debug, Clone)]
pub struct Remembered {
    path: PathBuf,
    sha256: [u8; 32],
}

impl Remembered {
    /// The bundle at `path`, if `memo` remembers the file as it is now as
    /// a plain component without an embedded signature.
    pub fn recall(path: impl AsRef<Path>, memo: &memo::DigestMemo) -> Option<Remembered> {
        let path = path.as_ref();
        let metadata = std::fs::metadata(path).ok()?;
        if !metadata.is_file() || metadata.len() > crate::files::caps::BUNDLE {
            return None;
        }
        let entry = memo.recall(&crate::files::Identity::of(&metadata))?;
        entry.plain.then(|| Remembered { path: path.to_path_buf(), sha256: entry.sha256 })
    }

    /// Checks the detached signature `BUNDLE.sig`, as [`Bundle::verify`]
    /// does for a bundle without an embedded one.
    pub fn verify(
        &self,
        detached: Option<&SignatureRecord>,
        trusted: &[PublicKey],
        required: bool,
    ) -> Result<Option<String>, BundleError> {
        verify_detached(&self.path, &self.sha256, detached, trusted, required)
    }

    /// Reads the detached signature `BUNDLE.sig` beside the bundle, if
    /// there is one.
    pub fn read_detached(&self) -> Result<Option<SignatureRecord>, BundleError> {
        read_detached(&self.path)
    }

    /// The path of the bundle.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SHA-256 of the bundle's bytes.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// `sha256:<hex>` of the bundle's bytes.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.sha256))
    }
}

/// A component's top-level import and export names, read without compiling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// Import names, e.g. `wasi:cli/environment@0.2.3`.
    pub imports: Vec<String>,
    /// Export names, e.g. `wfrun:node/handler@0.1.0`.
    pub exports: Vec<String>,
}

/// Reads `component`'s top-level imports and exports.
pub fn interface(component: &[u8]) -> Result<Interface, ParseError> {
    use wasmparser::Payload;
    let mut interface = Interface::default();
    for payload in TopLevel::new(component) {
        match payload? {
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    interface.imports.push(import?.name.full_name().into_owned());
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    interface.exports.push(export?.name.full_name().into_owned());
                }
            }
            _ => {}
        }
    }
    Ok(interface)
}

/// Why a component's top level does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// What the parser found.
    #[error(transparent)]
    Binary(#[from] wasmparser::BinaryReaderError),
    /// A nested module or component claims more bytes than the file has.
    #[error("a nested module or component at offset {offset} runs past the end of the file")]
    Truncated {
        /// Where the nested section starts.
        offset: u64,
    },
}

/// The payloads at a component's top level, in order. Nested modules and
/// components are reported as their sections and stepped over, not parsed:
/// their contents are the compiler's to check, and walking every function
/// of an interpreter (18 MB for the Python hello node) to learn nothing
/// cost a cached `exec` milliseconds.
struct TopLevel<'a> {
    parser: wasmparser::Parser,
    rest: &'a [u8],
    done: bool,
}

impl<'a> TopLevel<'a> {
    fn new(bytes: &'a [u8]) -> TopLevel<'a> {
        TopLevel { parser: wasmparser::Parser::new(0), rest: bytes, done: false }
    }
}

impl<'a> Iterator for TopLevel<'a> {
    type Item = Result<wasmparser::Payload<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        use wasmparser::{Chunk, Payload};
        if self.done {
            return None;
        }
        let (consumed, payload) = match self.parser.parse(self.rest, true) {
            Ok(Chunk::Parsed { consumed, payload }) => (consumed, payload),
            // With `eof` set the parser never asks for more; an error
            // ends the walk either way.
            Ok(Chunk::NeedMoreData(_)) => {
                self.done = true;
                return Some(Err(ParseError::Truncated { offset: 0 }));
            }
            Err(e) => {
                self.done = true;
                return Some(Err(e.into()));
            }
        };
        // The parser has already stepped over a nested section's body; the
        // bytes handed to it must skip it too.
        let skip = match &payload {
            Payload::ModuleSection { unchecked_range, .. } | Payload::ComponentSection { unchecked_range, .. } => {
                consumed.checked_add((unchecked_range.end - unchecked_range.start) as usize)
            }
            Payload::End(_) => {
                self.done = true;
                Some(consumed)
            }
            _ => Some(consumed),
        };
        match skip.and_then(|skip| self.rest.get(skip..)) {
            Some(rest) => self.rest = rest,
            None => {
                self.done = true;
                let offset = match &payload {
                    Payload::ModuleSection { unchecked_range, .. }
                    | Payload::ComponentSection { unchecked_range, .. } => unchecked_range.start,
                    _ => 0,
                };
                return Some(Err(ParseError::Truncated { offset }));
            }
        }
        Some(Ok(payload))
    }
}

/// What [`scan`] finds at a bundle's top level.
struct Scan {
    workflow: Option<EmbeddedWorkflow>,
    nested: Vec<Range<usize>>,
    signature: Option<(SignatureRecord, usize)>,
}

/// Finds the workflow section, the top-level nested components and the
/// signature section (which must come last, once).
fn scan(path: &Path, bytes: &[u8]) -> Result<Scan, BundleError> {
    use wasmparser::Payload;
    let invalid = |reason: String| BundleError::Invalid { path: path.to_path_buf(), reason };
    let signature_error = |error| BundleError::Signature { path: path.to_path_buf(), error };
    let mut workflow = None;
    let mut nested = Vec::new();
    let mut outer_interface = false;
    let mut signature: Option<(SignatureRecord, usize)> = None;
    for payload in TopLevel::new(bytes) {
        let payload = payload.map_err(|e| invalid(e.to_string()))?;
        if signature.is_some() && !matches!(payload, Payload::End(_)) {
            // Something follows the signature: a second one, or a section
            // the signature does not cover.
            let is_signature = matches!(&payload, Payload::CustomSection(s) if s.name() == SIGNATURE_SECTION);
            return Err(signature_error(if is_signature {
                SignatureError::Duplicated
            } else {
                SignatureError::Misplaced
            }));
        }
        match payload {
            Payload::CustomSection(section) if section.name() == SIGNATURE_SECTION => {
                let record = signature::parse_record(section.data()).map_err(signature_error)?;
                let range = section.range();
                // The section's header: its id byte and its LEB128 size.
                let size_len = leb128_len(range.end - range.start);
                signature = Some((record, range.start as usize - 1 - size_len));
            }
            Payload::ComponentSection { unchecked_range, .. } => {
                nested.push(unchecked_range.start as usize..unchecked_range.end as usize);
            }
            Payload::ComponentImportSection(_) | Payload::ComponentExportSection(_) => {
                outer_interface = true;
            }
            Payload::CustomSection(section) if section.name() == WORKFLOW_SECTION => {
                if workflow.is_some() {
                    return Err(invalid(format!("more than one `{WORKFLOW_SECTION}` section")));
                }
                let embedded: EmbeddedWorkflow = serde_json::from_slice(section.data())
                    .map_err(|e| invalid(format!("`{WORKFLOW_SECTION}` section: {e}")))?;
                if embedded.format != WORKFLOW_FORMAT {
                    return Err(invalid(format!(
                        "workflow format {} is not supported (this wfrun reads format {WORKFLOW_FORMAT})",
                        embedded.format
                    )));
                }
                workflow = Some(embedded);
            }
            _ => {}
        }
    }
    if let Some(workflow) = &workflow {
        if outer_interface {
            return Err(invalid("a workflow bundle's outer component must have no imports or exports".to_owned()));
        }
        if let Some((node, index)) = workflow.components.iter().find(|(_, i)| **i >= nested.len()) {
            return Err(invalid(format!(
                "node `{node}` names component #{index}, but the bundle nests {}",
                nested.len()
            )));
        }
        let nodes: Vec<&String> = workflow.definition.nodes.keys().collect();
        let mapped: Vec<&String> = workflow.components.keys().collect();
        if nodes != mapped {
            return Err(invalid(format!(
                "the workflow's nodes ({}) and its component map ({}) do not match",
                nodes.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
                mapped.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(Scan { workflow, nested, signature })
}

fn leb128_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_memory_or_disk_is_the_hosts_fault_not_the_bundles() {
        let read =
            |errno| BundleError::Read { path: "b.wasm".into(), source: std::io::Error::from_raw_os_error(errno) };
        assert_eq!((read(24).is_host_fault(), read(24).detail()), (true, "descriptors_exhausted"));
        assert_eq!((read(23).is_host_fault(), read(28).detail()), (true, "disk_full"));
        assert_eq!((read(13).is_host_fault(), read(13).detail()), (false, "unreadable"), "EACCES is the bundle's");
        assert!(!BundleError::Missing { path: "b.wasm".into() }.is_host_fault());
    }

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
        assert_eq!(bundle.digest(), format!("sha256:{}", hex::encode(Sha256::digest(&component))));
    }

    #[test]
    fn packed_workflows_are_valid_components_that_nest_their_nodes() {
        let definition = crate::manifest::WorkflowDef::from_toml(
            "name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"a.wasm\"\n[nodes.b]\ncomponent = \"b.wasm\"",
            "test",
        )
        .unwrap();
        let a = wat::parse_str("(component (core module))").unwrap();
        let b = wat::parse_str("(component)").unwrap();
        let embedded = EmbeddedWorkflow {
            format: WORKFLOW_FORMAT,
            definition,
            components: [("a".to_owned(), 0), ("b".to_owned(), 1)].into(),
        };
        let packed = pack(&embedded, &[a.clone(), b.clone()]);
        wasmparser::Validator::new().validate_all(&packed).expect("a packed bundle is a valid component");
        let bundle = Bundle::from_bytes("w.wasm", packed).unwrap();
        assert_eq!(bundle.workflow(), Some(&embedded));
        assert_eq!(bundle.nested_component(0), Some(&a[..]));
        assert_eq!(bundle.nested_component(1), Some(&b[..]));
    }

    #[test]
    fn a_workflow_section_pointing_past_its_components_is_invalid() {
        let definition = crate::manifest::WorkflowDef::from_toml(
            "name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"a.wasm\"",
            "test",
        )
        .unwrap();
        let embedded =
            EmbeddedWorkflow { format: WORKFLOW_FORMAT, definition, components: [("a".to_owned(), 3)].into() };
        let err = Bundle::from_bytes("w.wasm", pack(&embedded, &[])).unwrap_err();
        assert!(matches!(err, BundleError::Invalid { .. }), "{err}");
    }

    #[test]
    fn a_node_without_a_component_or_a_malformed_section_is_invalid() {
        let definition = crate::manifest::WorkflowDef::from_toml(
            "name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"a.wasm\"\n[nodes.b]\ncomponent = \"b.wasm\"",
            "test",
        )
        .unwrap();
        let a = wat::parse_str("(component)").unwrap();
        let embedded =
            EmbeddedWorkflow { format: WORKFLOW_FORMAT, definition, components: [("a".to_owned(), 0)].into() };
        let err = Bundle::from_bytes("w.wasm", pack(&embedded, &[a])).unwrap_err();
        assert!(matches!(err, BundleError::Invalid { .. }), "{err}");

        let mut garbled = wasm_encoder::Component::new();
        garbled.section(&wasm_encoder::CustomSection { name: WORKFLOW_SECTION.into(), data: b"{not json".into() });
        let err = Bundle::from_bytes("g.wasm", garbled.finish()).unwrap_err();
        assert!(matches!(err, BundleError::Invalid { .. }), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let err = Bundle::read("/definitely/not/here.wasm").unwrap_err();
        assert!(matches!(&err, BundleError::Missing { path } if path.ends_with("here.wasm")));
    }
}
