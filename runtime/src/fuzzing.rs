//! The inputs wfrun parses from outside, one function each, for the
//! `cargo fuzz` targets in `fuzz/` and for the test that replays their saved
//! corpus on stable (`tests/integration/fuzz_corpus.rs`). Each takes
//! arbitrary bytes and must return, whatever they are: an error is fine, a
//! panic, a hang or unbounded memory is a finding.

use std::path::Path;

/// A fuzz target: its name and the function it feeds.
pub type Target = (&'static str, fn(&[u8]));

/// The fuzz targets.
pub const TARGETS: [Target; 6] = [
    ("bundle", bundle),
    ("workflow_toml", workflow_toml),
    ("daemon_config", daemon_config),
    ("control_line", control_line),
    ("release_document", release_document),
    ("component_shape", component_shape),
];

/// A bundle file: the reader, the interface walk, and the embedded
/// workflow's definition and plan.
pub fn bundle(data: &[u8]) {
    if let Ok(bundle) = crate::bundle::Bundle::from_bytes("fuzz.wasm", data.to_vec()) {
        let _ = crate::bundle::interface(bundle.bytes());
        if let Some(workflow) = bundle.workflow() {
            let _ = crate::workflow::plan::Plan::of(&workflow.definition);
        }
    }
}

/// A `workflow.toml`, parsed and planned.
pub fn workflow_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(definition) = crate::manifest::WorkflowDef::from_toml(text, "fuzz.toml") {
        let _ = crate::workflow::plan::Plan::of(&definition);
    }
}

/// A daemon config file.
pub fn daemon_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = crate::daemon::DaemonConfig::parse(text, Path::new("/nonexistent"));
}

/// One line of the control protocol.
pub fn control_line(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::daemon::control::Request>(data);
}

/// A release document, as a device reads it from a verified target.
pub fn release_document(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::manifest::ReleaseDocument>(data);
}

/// The shape walk that runs before compilation.
pub fn component_shape(data: &[u8]) {
    let _ = crate::sandbox::shape::check(data, &crate::sandbox::shape::ShapeLimits::default());
}
