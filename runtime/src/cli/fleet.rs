//! `wfrun fleet`: a fleet on one machine. `serve` is the release origin and
//! the report receiver (`crate::fleet`); `devices` and `reports` read what
//! it received.

use super::{GlobalArgs, printable};
use crate::fleet::{Receiver, read_tokens};
use crate::outcome::ExitStatus;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

const FLEET_HELP: &str = "\
`serve` answers devices whose daemon has a [sync] table with url = \"http://ADDR\"
and a [report] table with endpoint = \"http://ADDR\" and token_file = FILE (the
device's line of the tokens file, the token only). It keeps fleet.db in the
state directory. Plain http is for loopback: put TLS in front of it anywhere
else. See docs/fleet.md and docs/reports.md (the protocol).

Examples:
  echo \"kiosk-17=$(openssl rand -hex 16)\" >> tokens     # the device's [device] id
  wfrun fleet serve --repo repo --listen 127.0.0.1:8440 --tokens tokens --state-dir fleet
  wfrun fleet devices --state-dir fleet
  wfrun fleet reports --state-dir fleet --device d1 --json";

#[derive(Debug, Args)]
#[command(after_help = FLEET_HELP)]
pub struct FleetCommand {
    #[command(subcommand)]
    command: FleetSubcommand,
}

#[derive(Debug, Subcommand)]
enum FleetSubcommand {
    /// Serve a release repository and receive reports and heartbeats.
    Serve {
        /// The release repository directory to serve (`wfrun release init`).
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
        /// Where to listen.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8440")]
        listen: std::net::SocketAddr,
        /// The devices' tokens: one DEVICE_ID=TOKEN a line.
        #[arg(long, value_name = "FILE")]
        tokens: PathBuf,
    },
    /// The devices that reported: last seen, report count, last heartbeat.
    Devices {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The reports received, oldest first.
    Reports {
        /// Only this device's.
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON (one array).
        #[arg(long)]
        json: bool,
    },
}

impl FleetCommand {
    /// Runs the subcommand.
    pub fn execute(self, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        let state_dir = global.state_dir();
        match self.command {
            FleetSubcommand::Serve { repo, listen, tokens } => {
                let tokens = match read_tokens(&tokens) {
                    Ok(tokens) => tokens,
                    Err(e) => {
                        eprintln!("wfrun: invalid_input: {e}");
                        return Ok(ExitStatus::Invalid);
                    }
                };
                if let Some(repo) = repo.as_ref().filter(|r| !r.join("metadata/root.json").is_file()) {
                    eprintln!(
                        "wfrun: invalid_input: {}: not a release repository (no metadata/root.json)",
                        repo.display()
                    );
                    return Ok(ExitStatus::Invalid);
                }
                let receiver = Arc::new(Receiver::open(&state_dir, tokens, repo.clone())?);
                crate::descriptors::raise_limit();
                let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                runtime.block_on(async {
                    let listener = tokio::net::TcpListener::bind(listen)
                        .await
                        .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?;
                    eprintln!(
                        "wfrun fleet: on http://{} · releases from {} · reports into {}",
                        listener.local_addr()?,
                        repo.as_ref().map_or("(none)".to_owned(), |r| r.display().to_string()),
                        state_dir.join("fleet.db").display()
                    );
                    let server = tokio::spawn(receiver.serve(listener));
                    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate.recv() => {}
                    }
                    server.abort();
                    eprintln!("wfrun fleet: stopped");
                    Ok::<_, anyhow::Error>(())
                })?;
                Ok(ExitStatus::Success)
            }
            FleetSubcommand::Devices { json } => {
                let devices = Receiver::open(&state_dir, Default::default(), None)?.devices()?;
                if json {
                    println!("{}", serde_json::to_string(&devices)?);
                    return Ok(ExitStatus::Success);
                }
                if devices.is_empty() {
                    println!("no device has reported yet");
                }
                for d in devices {
                    let release = d
                        .heartbeat
                        .as_ref()
                        .and_then(|h| h["active_release"]["version"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "-".to_owned());
                    println!(
                        "{}  last seen {}  {} report(s)  release {}",
                        printable(&d.device_id),
                        d.last_seen,
                        d.reports,
                        printable(&release)
                    );
                }
                Ok(ExitStatus::Success)
            }
            FleetSubcommand::Reports { device, limit, json } => {
                let reports =
                    Receiver::open(&state_dir, Default::default(), None)?.reports_of(device.as_deref(), limit)?;
                if json {
                    println!("{}", serde_json::to_string(&reports)?);
                    return Ok(ExitStatus::Success);
                }
                for r in reports {
                    let what = match r["kind"].as_str() {
                        Some("run") => format!(
                            "run {} job {} {}{}",
                            r["run"]["execution_id"].as_str().unwrap_or(""),
                            r["run"]["job"].as_str().unwrap_or("-"),
                            r["run"]["status"].as_str().unwrap_or(""),
                            r["run"]["error_code"].as_str().map(|c| format!(" ({c})")).unwrap_or_default()
                        ),
                        Some("release") => format!(
                            "release {} {}{}",
                            r["release"]["event"].as_str().unwrap_or(""),
                            r["release"]["version"].as_str().unwrap_or(""),
                            r["release"]["code"].as_str().map(|c| format!(" ({c})")).unwrap_or_default()
                        ),
                        Some(kind) => kind.to_owned(),
                        None => "?".to_owned(),
                    };
                    println!(
                        "{}  {}  {}",
                        r["created_at"].as_str().unwrap_or(""),
                        printable(r["device_id"].as_str().unwrap_or("")),
                        printable(&what)
                    );
                }
                Ok(ExitStatus::Success)
            }
        }
    }
}
