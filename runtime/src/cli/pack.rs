//! `wfrun pack`: one workflow file and its node components into one bundle.

use super::GlobalArgs;
use crate::files::{Mode, write_atomic};
use crate::outcome::ExitStatus;
use crate::sandbox::{EngineOptions, Sandbox};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  wfrun pack examples/workflows/report/workflow.toml -o report.wasm")]
pub struct PackCommand {
    /// The workflow definition; component paths in it are relative to it.
    #[arg(value_name = "WORKFLOW_TOML")]
    manifest: PathBuf,

    /// Where to write the bundle.
    #[arg(short, long, value_name = "BUNDLE")]
    output: PathBuf,

    /// Print {"bundle", "bytes", "digest"} as JSON.
    #[arg(long)]
    json: bool,
}

impl PackCommand {
    /// Validates, packs and writes the bundle (atomically and durably).
    /// Checking that each node links means compiling it; the compiled
    /// components go into the state directory's cache, so the bundle's first
    /// `wfrun exec` with default engine settings does not compile them again.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        // Never write over the workflow itself, or over any file that is
        // not a Wasm binary (a typo'd `-o` must not eat a source file).
        let same = std::fs::canonicalize(&self.output)
            .ok()
            .is_some_and(|out| std::fs::canonicalize(&self.manifest).is_ok_and(|manifest| manifest == out));
        let not_wasm = std::fs::File::open(&self.output).ok().is_some_and(|mut file| {
            use std::io::Read;
            let mut magic = [0u8; 4];
            file.read_exact(&mut magic).is_err() || &magic != b"\0asm"
        });
        if same || (self.output.is_file() && not_wasm) {
            eprintln!(
                "wfrun: invalid_input: -o {}: refusing to overwrite {}; name a new file or an existing bundle",
                self.output.display(),
                if same { "the workflow being packed" } else { "a file that is not a Wasm bundle" }
            );
            return Ok(ExitStatus::Usage);
        }
        let cache_dir = Some(global.state_dir().join("cache"));
        let sandbox = Sandbox::new(EngineOptions { cache_dir, ..EngineOptions::default() })?;
        let bytes = match crate::workflow::pack(&sandbox, &self.manifest) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("wfrun: invalid_bundle: {e}");
                return Ok(ExitStatus::Invalid);
            }
        };
        write_atomic(&self.output, &bytes, Mode::Shared)
            .with_context(|| format!("writing {}", self.output.display()))?;
        eprintln!("wfrun: packed {} ({} bytes)", self.output.display(), bytes.len());
        if self.json {
            use sha2::Digest;
            let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
            println!("{}", serde_json::json!({ "bundle": self.output, "bytes": bytes.len(), "digest": digest }));
        }
        Ok(ExitStatus::Success)
    }
}
