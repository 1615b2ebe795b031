//! `pack`: a `workflow.toml` and its node components into one bundle.

use super::Plan;
use crate::bundle::{Bundle, EmbeddedWorkflow, WORKFLOW_FORMAT};
use crate::manifest::{DefinitionError, WorkflowDef};
use crate::outcome::GuestKind;
use crate::sandbox::Sandbox;
use std::collections::BTreeMap;

/// Why `wfrun pack` cannot make a bundle.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The workflow file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The workflow file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The definition does not parse or validate.
    #[error("{path}: {source}")]
    Definition {
        /// The workflow file.
        path: String,
        /// What is wrong.
        source: DefinitionError,
    },
    /// A node's component file is missing, not a component, or not a node.
    #[error("node `{node}`: {reason}")]
    Component {
        /// The node.
        node: String,
        /// What is wrong with its component.
        reason: String,
    },
}

/// Packs the workflow defined in `manifest` (a `workflow.toml`) into one
/// bundle: validates the definition, checks that every component exists and
/// is a node, and nests each distinct component once.
pub fn pack(sandbox: &Sandbox, manifest: &std::path::Path) -> Result<Vec<u8>, PackError> {
    let path = manifest.display().to_string();
    let text = crate::files::read_capped_text(manifest, crate::files::caps::SETTINGS)
        .map_err(|source| PackError::Read { path: path.clone(), source })?;
    let definition =
        WorkflowDef::from_toml(&text, &path).map_err(|source| PackError::Definition { path: path.clone(), source })?;
    Plan::of(&definition).map_err(|source| PackError::Definition { path: path.clone(), source })?;
    let base = manifest.parent().unwrap_or(std::path::Path::new("."));
    let mut components: Vec<Vec<u8>> = Vec::new();
    let mut by_digest: BTreeMap<String, usize> = BTreeMap::new();
    let mut index_of = BTreeMap::new();
    // Each distinct file is read and loaded once, however many nodes name it.
    let mut by_file: BTreeMap<std::path::PathBuf, usize> = BTreeMap::new();
    for (id, node) in &definition.nodes {
        let file = base.join(&node.component);
        if let Some(index) = by_file.get(&file) {
            index_of.insert(id.clone(), *index);
            continue;
        }
        let error = |reason: String| PackError::Component { node: id.clone(), reason };
        let bundle = Bundle::read(&file).map_err(|e| error(e.to_string()))?;
        if bundle.workflow().is_some() {
            return Err(error(format!("{}: is itself a workflow bundle; nodes must be components", file.display())));
        }
        let program = sandbox.load(bundle.bytes(), &file.display().to_string()).map_err(|e| error(e.to_string()))?;
        if program.kind() != GuestKind::Node {
            return Err(error(format!(
                "{}: is a command (job); workflow nodes must export wfrun:node/handler",
                file.display()
            )));
        }
        let index = *by_digest.entry(bundle.digest()).or_insert_with(|| {
            components.push(bundle.bytes().to_vec());
            components.len() - 1
        });
        index_of.insert(id.clone(), index);
        by_file.insert(file, index);
    }
    let embedded = EmbeddedWorkflow { format: WORKFLOW_FORMAT, definition, components: index_of };
    Ok(crate::bundle::pack(&embedded, &components))
}
