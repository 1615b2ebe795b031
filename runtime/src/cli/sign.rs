//! `wfrun keygen`, `wfrun sign` and `wfrun verify`: bundle signatures.

use crate::bundle::Bundle;
use crate::bundle::signature::{self, SecretKey, detached_path};
use crate::files::{Mode, write_atomic};
use crate::outcome::ExitStatus;
use crate::policy::TrustPolicy;
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct KeygenCommand {
    /// Directory to write the key pair into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Print {"key_id", "secret_key", "public_key"} (the files' paths) as JSON.
    #[arg(long)]
    json: bool,
}

impl KeygenCommand {
    /// Writes a fresh key pair; never overwrites one.
    pub fn execute(self) -> anyhow::Result<ExitStatus> {
        let (secret_path, public_path) = (self.out.join("wfrun.key"), self.out.join("wfrun.pub"));
        for path in [&secret_path, &public_path] {
            if path.exists() {
                eprintln!("wfrun: {} exists; refusing to overwrite a key", path.display());
                return Ok(ExitStatus::Invalid);
            }
        }
        std::fs::create_dir_all(&self.out).with_context(|| format!("creating {}", self.out.display()))?;
        let key = SecretKey::generate().map_err(anyhow::Error::msg)?;
        write_private(&secret_path, &format!("{}\n", key.to_text()))?;
        std::fs::write(&public_path, format!("{}\n", key.public().to_text()))
            .with_context(|| format!("writing {}", public_path.display()))?;
        if self.json {
            let written = serde_json::json!({
                "key_id": key.public().key_id(),
                "secret_key": secret_path,
                "public_key": public_path,
            });
            println!("{written}");
            return Ok(ExitStatus::Success);
        }
        println!("key id {}", key.public().key_id());
        eprintln!("wfrun: wrote {} (keep it secret) and {}", secret_path.display(), public_path.display());
        Ok(ExitStatus::Success)
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file =
        crate::files::create_private_file(path, true).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct SignCommand {
    /// The bundle to sign (rewritten in place unless --detached).
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,

    /// The secret key file from `wfrun keygen`.
    #[arg(long, value_name = "KEY")]
    key: PathBuf,

    /// Write the signature to BUNDLE.sig instead of into the bundle.
    #[arg(long)]
    detached: bool,
    /// Print {"bundle", "key_id", "signature"} (where it went) as JSON.
    #[arg(long)]
    json: bool,
}

impl SignCommand {
    /// Signs and writes atomically and durably.
    pub fn execute(self) -> anyhow::Result<ExitStatus> {
        let key = match SecretKey::load(&self.key) {
            Ok(key) => key,
            Err(e) => {
                eprintln!("wfrun: invalid_input: {e}");
                return Ok(ExitStatus::Invalid);
            }
        };
        let bundle = match Bundle::read(&self.bundle) {
            Ok(bundle) => bundle,
            Err(e) => {
                eprintln!("wfrun: invalid_bundle: {e}");
                return Ok(ExitStatus::Invalid);
            }
        };
        if bundle.is_signed() {
            eprintln!("wfrun: invalid_bundle: {}: is already signed; sign the unsigned bundle", self.bundle.display());
            return Ok(ExitStatus::Invalid);
        }
        let record = key.sign(bundle.bytes());
        let written = if self.detached {
            let path = detached_path(&self.bundle);
            write_atomic(&path, &serde_json::to_vec_pretty(&record)?, Mode::Shared)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wfrun: wrote {} (key {})", path.display(), record.key_id);
            path
        } else {
            write_atomic(&self.bundle, &signature::embed(bundle.bytes(), &record), Mode::Shared)
                .with_context(|| format!("writing {}", self.bundle.display()))?;
            eprintln!("wfrun: signed {} (key {})", self.bundle.display(), record.key_id);
            self.bundle.clone()
        };
        if self.json {
            let signed = serde_json::json!({ "bundle": self.bundle, "key_id": record.key_id, "signature": written });
            println!("{signed}");
        }
        Ok(ExitStatus::Success)
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Failure codes: signature_missing, signature_malformed, signature_duplicated,\n\
signature_misplaced, signature_invalid, signature_untrusted (exit status 6).")]
pub struct VerifyCommand {
    /// The bundle (its BUNDLE.sig is used when it has no embedded signature).
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,

    /// A trusted public key: a .pub file or `ed25519:<hex>`. Repeatable; at
    /// least one.
    #[arg(long, value_name = "PUBKEY", required = true)]
    trust: Vec<String>,

    /// Print one JSON object: {"valid", "key_id", "error_code", "message"}.
    #[arg(long)]
    json: bool,
}

impl VerifyCommand {
    /// Checks the signature and says why not, if not.
    pub fn execute(self) -> anyhow::Result<ExitStatus> {
        let result = self.check();
        let (valid, key_id, code, message) = match &result {
            Ok(key_id) => (true, Some(key_id.clone()), None, format!("valid signature by trusted key {key_id}")),
            Err((code, message)) => (false, None, Some(code.clone()), message.clone()),
        };
        if self.json {
            let json = serde_json::json!({"valid": valid, "key_id": key_id, "error_code": code, "message": message});
            println!("{json}");
        } else if valid {
            println!("{}: {message}", self.bundle.display());
        } else {
            eprintln!("wfrun: {}", super::printable(&message));
        }
        Ok(if valid { ExitStatus::Success } else { ExitStatus::Invalid })
    }

    fn check(&self) -> Result<String, (String, String)> {
        let policy = TrustPolicy::load(&self.trust, true).map_err(|e| ("invalid_input".to_owned(), e.to_string()))?;
        let bundle = Bundle::read(&self.bundle).map_err(|e| (error_code(&e), e.to_string()))?;
        match policy.verify(&bundle) {
            Ok(Some(key_id)) => Ok(key_id),
            Ok(None) => unreachable!("require_signed refuses unsigned bundles"),
            Err(e) => Err((error_code(&e), e.to_string())),
        }
    }
}

/// The stable code of a bundle error: the signature code, or `invalid_bundle`.
fn error_code(error: &crate::bundle::BundleError) -> String {
    match error {
        crate::bundle::BundleError::Signature { error, .. } => error.code().to_owned(),
        _ => "invalid_bundle".to_owned(),
    }
}
