//! `wfrun cache`: the compiled-artifact cache in the state directory.

use super::GlobalArgs;
use crate::outcome::ExitStatus;
use crate::sandbox::cache;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct CacheCommand {
    #[command(subcommand)]
    command: CacheSubcommand,
}

#[derive(Debug, Subcommand)]
enum CacheSubcommand {
    /// List the cached artifacts: component digest, engine key, size.
    Ls {
        /// Print a JSON array of {"entry", "bytes"}.
        #[arg(long)]
        json: bool,
    },
    /// Remove every cached artifact; the next run compiles again.
    Clear {
        /// Print {"removed"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl CacheCommand {
    /// Lists or clears.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        let dir = global.state_dir().join("cache");
        match self.command {
            CacheSubcommand::Ls { json } => {
                let entries = cache::entries(&dir)?;
                if json {
                    let list: Vec<_> = entries
                        .iter()
                        .map(|(name, bytes)| serde_json::json!({"entry": name, "bytes": bytes}))
                        .collect();
                    println!("{}", serde_json::Value::Array(list));
                } else {
                    for (name, bytes) in &entries {
                        println!("{bytes:>12}  {name}");
                    }
                    let total: u64 = entries.iter().map(|(_, b)| b).sum();
                    eprintln!("wfrun: {} entries, {total} bytes in {}", entries.len(), dir.display());
                }
            }
            CacheSubcommand::Clear { json } => {
                let removed = cache::clear(&dir)?;
                if json {
                    println!("{}", serde_json::json!({ "removed": removed }));
                }
                eprintln!("wfrun: removed {removed} entries from {}", dir.display());
            }
        }
        Ok(ExitStatus::Success)
    }
}
