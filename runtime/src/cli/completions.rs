//! `wfrun completions SHELL` and `wfrun man`: generated from the same clap
//! definitions the parser uses, so they cannot drift from the flags.

use super::Cli;
use crate::outcome::ExitStatus;
use clap::{Args, CommandFactory};
use std::path::PathBuf;

const COMPLETIONS_HELP: &str = "\
Install, for example:
  bash:  wfrun completions bash > ~/.local/share/bash-completion/completions/wfrun
  zsh:   wfrun completions zsh > ~/.zfunc/_wfrun   (with fpath+=~/.zfunc before compinit)
  fish:  wfrun completions fish > ~/.config/fish/completions/wfrun.fish";

#[derive(Debug, Args)]
#[command(after_help = COMPLETIONS_HELP)]
pub struct CompletionsCommand {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

impl CompletionsCommand {
    /// Writes the script to standard output.
    pub fn execute(self) -> anyhow::Result<ExitStatus> {
        let mut command = Cli::command();
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut command, "wfrun", &mut script);
        print_all(&script)
    }
}

#[derive(Debug, Args)]
pub struct ManCommand {
    /// Write `wfrun.1` and a `wfrun-COMMAND.1` per subcommand into DIR
    /// instead of printing `wfrun.1`.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

impl ManCommand {
    /// Renders the page(s).
    pub fn execute(self) -> anyhow::Result<ExitStatus> {
        let command = Cli::command();
        match self.out_dir {
            None => {
                let mut page = Vec::new();
                clap_mangen::Man::new(command).render(&mut page)?;
                return print_all(&page);
            }
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                clap_mangen::generate_to(command, &dir)
                    .map_err(|e| anyhow::anyhow!("cannot write manual pages into {}: {e}", dir.display()))?;
            }
        }
        Ok(ExitStatus::Success)
    }
}

/// Writes `bytes` to standard output; a reader that went away (`| head`)
/// had what it wanted.
fn print_all(bytes: &[u8]) -> anyhow::Result<ExitStatus> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitStatus::Success),
    }
}
