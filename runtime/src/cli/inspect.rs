//! `wfrun inspect`: what a bundle holds, without running or compiling it.

use super::printable;
use crate::bundle::{Bundle, interface};
use crate::manifest::{Capabilities, Trigger};
use crate::outcome::ExitStatus;
use crate::policy::TrustPolicy;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct InspectCommand {
    /// The bundle to inspect.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Inspection {
    path: String,
    kind: &'static str,
    name: String,
    version: String,
    digest: String,
    size: usize,
    signature: String,
    nodes: Vec<NodeInfo>,
    capabilities: Capabilities,
    triggers: Vec<Trigger>,
}

#[derive(Debug, Serialize)]
struct NodeInfo {
    id: String,
    component: String,
    depends_on: Vec<String>,
    secrets: Vec<String>,
    config_keys: Vec<String>,
    imports: Vec<String>,
    exports: Vec<String>,
}

fn kind_of(exports: &[String]) -> &'static str {
    if exports.iter().any(|e| e == wfrun_host_api::HANDLER_EXPORT) {
        "node"
    } else if exports.iter().any(|e| e.starts_with(wfrun_host_api::COMMAND_EXPORT_PREFIX)) {
        "job"
    } else {
        "unknown (exports neither a node nor a command)"
    }
}

impl InspectCommand {
    /// Reads the bundle and prints what it holds.
    pub fn execute(self) -> anyhow::Result<ExitStatus> {
        let bundle = match Bundle::read(&self.bundle) {
            Ok(bundle) => bundle,
            Err(e) => {
                eprintln!("wfrun: invalid_bundle: {e}");
                return Ok(ExitStatus::Invalid);
            }
        };
        let inspection = match inspect(&bundle) {
            Ok(inspection) => inspection,
            Err(e) => {
                eprintln!("wfrun: invalid_bundle: {}: {e}", self.bundle.display());
                return Ok(ExitStatus::Invalid);
            }
        };
        if self.json {
            println!("{}", serde_json::to_string(&inspection)?);
        } else {
            print_text(&inspection);
        }
        Ok(ExitStatus::Success)
    }
}

fn inspect(bundle: &Bundle) -> Result<Inspection, crate::bundle::ParseError> {
    let path = bundle.path().display().to_string();
    let stem = bundle.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut inspection = Inspection {
        path,
        kind: "workflow",
        name: stem,
        version: "-".to_owned(),
        digest: bundle.digest(),
        size: bundle.bytes().len(),
        signature: match TrustPolicy::default().verify(bundle) {
            Ok(Some(key_id)) => {
                format!("signed by key {key_id} (valid; trust not checked: use `wfrun verify --trust`)")
            }
            Ok(None) => "unsigned".to_owned(),
            Err(e) => e.to_string(),
        },
        nodes: Vec::new(),
        capabilities: Capabilities::default(),
        triggers: Vec::new(),
    };
    let Some(embedded) = bundle.workflow() else {
        let interface = interface(bundle.bytes())?;
        inspection.kind = kind_of(&interface.exports);
        inspection.nodes.push(NodeInfo {
            id: crate::workflow::MAIN_NODE.to_owned(),
            component: inspection.path.clone(),
            depends_on: Vec::new(),
            secrets: Vec::new(),
            config_keys: Vec::new(),
            imports: interface.imports,
            exports: interface.exports,
        });
        return Ok(inspection);
    };
    let def = &embedded.definition;
    inspection.name = def.name.clone();
    inspection.version = def.version.clone();
    inspection.capabilities = def.capabilities.clone();
    inspection.triggers = def.triggers.clone();
    let order =
        crate::workflow::Plan::of(def).map(|plan| plan.order).unwrap_or_else(|_| def.nodes.keys().cloned().collect());
    for id in order {
        let node = &def.nodes[&id];
        let index = embedded.components[&id];
        let interface = interface(bundle.nested_component(index).unwrap_or_default())?;
        inspection.nodes.push(NodeInfo {
            id,
            component: format!("#{index} ({})", node.component),
            depends_on: node.depends_on.clone(),
            secrets: node.secrets.clone(),
            config_keys: node.config.keys().cloned().collect(),
            imports: interface.imports,
            exports: interface.exports,
        });
    }
    Ok(inspection)
}

fn print_text(i: &Inspection) {
    // Names, paths and keys come from the bundle: escape them for the terminal.
    println!("bundle     {}", printable(&i.path));
    println!("kind       {}", i.kind);
    println!("name       {}", printable(&i.name));
    println!("version    {}", printable(&i.version));
    println!("digest     {}", i.digest);
    println!("size       {} bytes", i.size);
    println!("signature  {}", i.signature);
    println!("nodes (in run order):");
    for node in &i.nodes {
        println!("  {}  component {}", printable(&node.id), printable(&node.component));
        let list = |items: &[String]| if items.is_empty() { "-".to_owned() } else { printable(&items.join(", ")) };
        println!("    depends_on  {}", list(&node.depends_on));
        println!("    imports     {}", list(&node.imports));
        println!("    exports     {}", list(&node.exports));
        if !node.config_keys.is_empty() {
            println!("    config      {}", list(&node.config_keys));
        }
        if !node.secrets.is_empty() {
            println!("    secrets     {}", list(&node.secrets));
        }
    }
    if i.kind == "workflow" {
        let caps = &i.capabilities;
        let list = |items: &[String]| if items.is_empty() { "none".to_owned() } else { printable(&items.join(", ")) };
        println!("requested capabilities:");
        println!("  egress   {}", list(&caps.egress));
        println!("  secrets  {}", list(&caps.secrets));
        println!(
            "  state    {} keys, {} bytes per value, {} bytes in all",
            caps.state.max_keys, caps.state.max_value_bytes, caps.state.max_total_bytes
        );
        let triggers: Vec<String> = i.triggers.iter().map(|t| serde_json::to_string(t).unwrap_or_default()).collect();
        println!("triggers   {}", list(&triggers));
    }
}
