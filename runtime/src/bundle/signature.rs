//! Bundle signatures: ed25519 over a domain-separated digest.
//!
//! A signature travels either inside the bundle, as a custom section named
//! [`SIGNATURE_SECTION`] that must be the bundle's **last** top-level
//! section and signs every byte before it, or beside it in `BUNDLE.sig`,
//! signing the whole file. Both hold the same [`SignatureRecord`] (JSON). The
//! signed message is [`DOMAIN`] followed by the SHA-256 of the signed bytes,
//! so a wfrun signature can never be replayed as a signature over anything
//! else. `docs/bundle-format.md` specifies it, with a test vector that
//! `the_documented_test_vector_holds` checks.
//!
//! [`verify`] always checks a signature that is present, against the public
//! key the record carries, and then that the key is among the trusted ones
//! when any are given. Whether a signature is required at all is the trust
//! policy's decision (`policy::TrustPolicy`). Every way to fail has its own
//! [`SignatureError`] code.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The custom section holding an embedded signature.
pub const SIGNATURE_SECTION: &str = "wfrun:signature";

/// Prefixed to the digest before signing: what the signature is *for*.
pub const DOMAIN: &[u8] = b"wfrun-bundle-signature-v1\0";

/// The record in the signature section or in `BUNDLE.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRecord {
    /// Always 1 for this layout.
    pub format: u32,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signer's key id (see [`PublicKey::key_id`]).
    pub key_id: String,
    /// The signer's public key, hex.
    pub public_key: String,
    /// The 64-byte signature, hex.
    pub signature: String,
}

/// Why a signature check failed. Each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature, and the trust policy requires one.
    #[error("signature_missing: the bundle is not signed, and the trust policy requires a signature")]
    Missing,
    /// The record does not parse, or a field has the wrong length or value.
    #[error("signature_malformed: {0}")]
    Malformed(String),
    /// More than one signature section.
    #[error("signature_duplicated: the bundle has more than one `{SIGNATURE_SECTION}` section")]
    Duplicated,
    /// The signature section is not the last section of the bundle.
    #[error("signature_misplaced: the `{SIGNATURE_SECTION}` section must be the last section of the bundle")]
    Misplaced,
    /// The signature does not verify: some signed byte changed.
    #[error("signature_invalid: the signature does not match the bundle's bytes (key {key_id})")]
    Invalid {
        /// The key the record claims.
        key_id: String,
    },
    /// The signature verifies, but its key is not trusted.
    #[error("signature_untrusted: signed by key {key_id}, which is not among the trusted keys")]
    Untrusted {
        /// The signer's key id.
        key_id: String,
    },
}

impl SignatureError {
    /// The stable code, e.g. `signature_invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed(_) => "signature_malformed",
            SignatureError::Duplicated => "signature_duplicated",
            SignatureError::Misplaced => "signature_misplaced",
            SignatureError::Invalid { .. } => "signature_invalid",
            SignatureError::Untrusted { .. } => "signature_untrusted",
        }
    }
}

/// A public key that may be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key id: the first 16 hex digits of SHA-256 of the key's 32 bytes.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// The key as written in `.pub` files and `--trust`: `ed25519:<hex>`.
    pub fn to_text(&self) -> String {
        format!("ed25519:{}", hex::encode(self.0.as_bytes()))
    }

    /// Parses `ed25519:<64 hex digits>`.
    pub fn from_text(text: &str) -> Result<PublicKey, String> {
        let hex_key = text.trim().strip_prefix("ed25519:").ok_or("a public key starts with `ed25519:`")?;
        let bytes: [u8; 32] = hex::decode(hex_key)
            .map_err(|e| format!("not hex: {e}"))?
            .try_into()
            .map_err(|_| "an ed25519 public key is 32 bytes (64 hex digits)".to_owned())?;
        VerifyingKey::from_bytes(&bytes).map(PublicKey).map_err(|e| format!("not a valid ed25519 key: {e}"))
    }

    /// The key's 32 bytes, hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Checks a plain ed25519 signature (no domain prefix) over `message`.
    pub fn verify_raw(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = <[u8; 64]>::try_from(signature) else { return false };
        self.0.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature)).is_ok()
    }

    /// Reads a `.pub` file, or takes `text` itself if it is a key.
    pub fn load(text_or_path: &str) -> Result<PublicKey, String> {
        if text_or_path.starts_with("ed25519:") {
            return PublicKey::from_text(text_or_path);
        }
        let text = crate::files::read_capped_text(Path::new(text_or_path), crate::files::caps::SETTINGS)
            .map_err(|e| format!("{text_or_path}: {e}"))?;
        PublicKey::from_text(&text).map_err(|e| format!("{text_or_path}: {e}"))
    }
}

/// A private signing key.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public().key_id())
    }
}

impl SecretKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<SecretKey, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness from the OS: {e}"))?;
        Ok(SecretKey::from_seed(seed))
    }

    /// The key with this 32-byte seed (for test vectors).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key as written in `.key` files: `ed25519-secret:<hex seed>`.
    pub fn to_text(&self) -> String {
        format!("ed25519-secret:{}", hex::encode(self.0.to_bytes()))
    }

    /// Reads a `.key` file.
    pub fn load(path: &Path) -> Result<SecretKey, String> {
        let text = crate::files::read_capped_text(path, crate::files::caps::SETTINGS)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let hex_seed = text
            .trim()
            .strip_prefix("ed25519-secret:")
            .ok_or_else(|| format!("{}: a secret key file starts with `ed25519-secret:`", path.display()))?;
        let seed: [u8; 32] = hex::decode(hex_seed)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{}: the seed must be 64 hex digits", path.display()))?;
        Ok(SecretKey::from_seed(seed))
    }

    /// A plain ed25519 signature over `message`, with no domain prefix: for
    /// formats that define their own signed bytes (TUF metadata signs the
    /// canonical JSON of its `signed` object).
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Signs `signed_bytes` as a bundle signature.
    pub fn sign(&self, signed_bytes: &[u8]) -> SignatureRecord {
        let public = self.public();
        SignatureRecord {
            format: 1,
            algorithm: "ed25519".to_owned(),
            key_id: public.key_id(),
            public_key: hex::encode(public.0.as_bytes()),
            signature: hex::encode(self.0.sign(&message(signed_bytes)).to_bytes()),
        }
    }
}

/// The message actually signed: [`DOMAIN`] ‖ SHA-256(`signed_bytes`).
pub fn message(signed_bytes: &[u8]) -> Vec<u8> {
    message_of_digest(&Sha256::digest(signed_bytes).into())
}

/// [`message`] of bytes whose SHA-256 is `sha256`.
fn message_of_digest(sha256: &[u8; 32]) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(sha256);
    message
}

/// Appends `record` as the bundle's signature section.
pub fn embed(bundle: &[u8], record: &SignatureRecord) -> Vec<u8> {
    let mut section = Vec::new();
    let json = serde_json::to_vec(record).expect("signature records serialise");
    wasm_encoder::Encode::encode(
        &wasm_encoder::CustomSection { name: SIGNATURE_SECTION.into(), data: json.into() },
        &mut section,
    );
    // A custom section's id is 0; Encode for CustomSection writes only the
    // contents with their size, so the id byte goes first.
    let mut bytes = bundle.to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&section);
    bytes
}

/// Parses a signature record (section content or `.sig` file).
pub fn parse_record(data: &[u8]) -> Result<SignatureRecord, SignatureError> {
    let record: SignatureRecord =
        serde_json::from_slice(data).map_err(|e| SignatureError::Malformed(format!("the record is not valid: {e}")))?;
    if record.format != 1 || record.algorithm != "ed25519" {
        return Err(SignatureError::Malformed(format!(
            "format {} / algorithm {:?} is not supported (format 1, ed25519)",
            record.format, record.algorithm
        )));
    }
    Ok(record)
}

/// Checks `record` over `signed_bytes`, then that its key is among
/// `trusted` (when any are given). Returns the signer's key id.
pub fn verify(record: &SignatureRecord, signed_bytes: &[u8], trusted: &[PublicKey]) -> Result<String, SignatureError> {
    verify_digest(record, &Sha256::digest(signed_bytes).into(), trusted)
}

/// [`verify`] given the SHA-256 of the signed bytes rather than the bytes
/// (the signed message holds only that hash).
pub fn verify_digest(
    record: &SignatureRecord,
    signed_sha256: &[u8; 32],
    trusted: &[PublicKey],
) -> Result<String, SignatureError> {
    let key = PublicKey::from_text(&format!("ed25519:{}", record.public_key))
        .map_err(|e| SignatureError::Malformed(format!("public_key: {e}")))?;
    if key.key_id() != record.key_id {
        return Err(SignatureError::Malformed(format!(
            "key_id {} does not belong to the record's public key ({})",
            record.key_id,
            key.key_id()
        )));
    }
    let signature: [u8; 64] = hex::decode(&record.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| SignatureError::Malformed("signature: must be 64 bytes (128 hex digits)".to_owned()))?;
    let signature = ed25519_dalek::Signature::from_bytes(&signature);
    key.0
        .verify_strict(&message_of_digest(signed_sha256), &signature)
        .map_err(|_| SignatureError::Invalid { key_id: record.key_id.clone() })?;
    if !trusted.is_empty() && !trusted.contains(&key) {
        return Err(SignatureError::Untrusted { key_id: record.key_id.clone() });
    }
    Ok(record.key_id.clone())
}

/// Where a bundle's detached signature lives: `BUNDLE.sig`.
pub fn detached_path(bundle: &Path) -> PathBuf {
    let mut name = bundle.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Parses trusted keys (`--trust` values and `trusted_keys` entries: key
/// files or `ed25519:<hex>`), or says which one is unusable.
pub fn load_keys(keys: &[String]) -> Result<Vec<PublicKey>, KeyError> {
    keys.iter().map(|k| PublicKey::load(k).map_err(|reason| KeyError { key: k.clone(), reason })).collect()
}

/// A trusted key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trusted key {key}: {reason}")]
pub struct KeyError {
    /// The key or key file as given.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the test vector from docs/bundle-format.md, so the document
    /// and the code cannot drift apart.
    #[test]
    fn the_documented_test_vector_holds() {
        let doc = include_str!("../../../docs/bundle-format.md");
        let field = |name: &str| {
            let prefix = format!("- {name}:");
            let line = doc.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no `{prefix}` line"));
            let value = line[prefix.len()..].trim();
            value.split('`').nth(1).unwrap_or(value).to_owned()
        };
        let bundle = hex::decode(field("vector-bundle")).unwrap();
        let seed: [u8; 32] = hex::decode(field("vector-seed")).unwrap().try_into().unwrap();
        let key = SecretKey::from_seed(seed);
        assert_eq!(key.public().to_text(), field("vector-public-key"));
        assert_eq!(key.public().key_id(), field("vector-key-id"));
        assert_eq!(hex::encode(message(&bundle)), field("vector-message"));
        let record = key.sign(&bundle);
        assert_eq!(record.signature, field("vector-signature"));
        let signed = embed(&bundle, &record);
        wasmparser::Validator::new().validate_all(&signed).expect("a signed bundle is still a valid component");
    }

    #[test]
    fn a_record_verifies_only_over_the_bytes_it_signed() {
        let key = SecretKey::from_seed([7; 32]);
        let record = key.sign(b"bundle bytes");
        let trust = vec![key.public()];
        assert_eq!(verify(&record, b"bundle bytes", &trust).unwrap(), key.public().key_id());
        assert_eq!(verify(&record, b"bundle byteZ", &trust).unwrap_err().code(), "signature_invalid");
        let stranger = vec![SecretKey::from_seed([8; 32]).public()];
        assert_eq!(verify(&record, b"bundle bytes", &stranger).unwrap_err().code(), "signature_untrusted");
        let mut short = record.clone();
        short.signature.truncate(100);
        assert_eq!(verify(&short, b"bundle bytes", &trust).unwrap_err().code(), "signature_malformed");
    }
}
