//! `wfrun-tuf-client`: the device's TUF client (`wfrun_runtime::sync`, the
//! very code the daemon uses) behind the command line of the upstream
//! tuf-conformance suite's client, so that suite can test it:
//!
//! ```text
//! wfrun-tuf-client --metadata-dir D init ROOT
//! wfrun-tuf-client --metadata-dir D --metadata-url U refresh
//! wfrun-tuf-client --metadata-dir D --metadata-url U --target-name P [--target-name P …] \
//!     --target-base-url T --target-dir DIR download
//! ```
//!
//! Exit 0 on success, 1 on any failure (the reason on stderr). `D` holds
//! only the newest `root.json`, `timestamp.json`, `snapshot.json` and
//! `targets.json` (and `ROLE.json` for delegated roles). A downloaded target
//! is `DIR/NAME` with `NAME` the target path percent-encoded (`/` as `%2F`);
//! one already there with the signed length and hash is not downloaded
//! again. `docs/releases.md` lists what it does not support.

use sha2::Digest;
use std::path::PathBuf;
use std::process::ExitCode;
use wfrun_runtime::sync::{Client, Origin, PlainStore, Timeouts};

#[derive(Debug, Default)]
struct Args {
    metadata_dir: Option<PathBuf>,
    metadata_url: Option<String>,
    target_names: Vec<String>,
    target_base_url: Option<String>,
    target_dir: Option<PathBuf>,
    command: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args::default();
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = || given.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--metadata-dir" => args.metadata_dir = Some(PathBuf::from(value()?)),
            "--metadata-url" => args.metadata_url = Some(value()?),
            "--target-name" => args.target_names.push(value()?),
            "--target-base-url" => args.target_base_url = Some(value()?),
            "--target-dir" => args.target_dir = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err("usage: see the module documentation (docs/releases.md)".to_owned()),
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => args.command.push(arg),
        }
    }
    Ok(args)
}

/// A target path as one file name: `/` and `%` percent-encoded, as
/// python-tuf names downloaded targets.
fn file_name(target: &str) -> String {
    target.replace('%', "%25").replace('/', "%2F")
}

async fn run(args: Args) -> Result<(), String> {
    let dir = args.metadata_dir.clone().ok_or("--metadata-dir is required")?;
    let command: Vec<&str> = args.command.iter().map(String::as_str).collect();
    if let ["init", root] = command.as_slice() {
        let bytes = std::fs::read(root).map_err(|e| format!("{root}: {e}"))?;
        // Only a root that verifies becomes the trusted one.
        let origin = Origin::new("http://127.0.0.1:9", Timeouts::default()).map_err(|e| e.to_string())?;
        Client::with_store(origin, &bytes, PlainStore::new(&dir)).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let url = args.metadata_url.clone().ok_or("--metadata-url is required")?;
    let root = std::fs::read(dir.join("root.json")).map_err(|e| format!("{}: {e} (run init first)", dir.display()))?;
    let targets_url = args.target_base_url.clone().unwrap_or_else(|| url.clone());
    let origin = Origin::with_urls(&url, &targets_url, Timeouts::default()).map_err(|e| e.to_string())?;
    let mut client = Client::with_store(origin, &root, PlainStore::new(&dir)).map_err(|e| e.to_string())?;
    let now = jiff::Timestamp::now();
    client.refresh(now).await.map_err(|e| e.to_string())?;
    match command.as_slice() {
        ["refresh"] => Ok(()),
        ["download"] => {
            let target_dir = args.target_dir.clone().ok_or("--target-dir is required")?;
            std::fs::create_dir_all(&target_dir).map_err(|e| format!("{}: {e}", target_dir.display()))?;
            for name in &args.target_names {
                let (length, sha256) = client.target_info(name, now).await.map_err(|e| e.to_string())?;
                let path = target_dir.join(file_name(name));
                let present = std::fs::read(&path).ok().is_some_and(|bytes| {
                    bytes.len() as u64 == length
                        && sha256.as_deref() == Some(hex::encode(sha2::Sha256::digest(&bytes)).as_str())
                });
                if present {
                    continue;
                }
                let bytes = client.target(name, now).await.map_err(|e| e.to_string())?;
                wfrun_runtime::files::write_atomic(&path, &bytes, wfrun_runtime::files::Mode::Shared)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Ok(())
        }
        other => Err(format!("unknown command {other:?} (init ROOT, refresh, download)")),
    }
}

fn main() -> ExitCode {
    let result = parse().and_then(|args| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the async runtime: {e}"))?;
        runtime.block_on(run(args))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wfrun-tuf-client: {message}");
            ExitCode::from(1)
        }
    }
}
