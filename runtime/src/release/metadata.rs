//! TUF metadata (spec 1.0.x) as wfrun writes it: the four top-level roles,
//! ed25519 keys, signatures over canonical JSON.
//!
//! Every file is `{"signatures": [{"keyid", "sig"}], "signed": {...}}`. A
//! key's id is the SHA-256 of the canonical JSON of its public form, as
//! securesystemslib computes it, so python-tuf and wfrun agree on key ids.

use super::canonical;
use crate::bundle::signature::{PublicKey, SecretKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The spec version written into every role.
pub const SPEC_VERSION: &str = "1.0.31";

/// The top-level roles, in the order they are listed.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// A public key as TUF lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// `ed25519`.
    pub keytype: String,
    /// `ed25519`.
    pub scheme: String,
    /// The key itself.
    pub keyval: KeyVal,
}

/// A key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// The 32 public bytes, hex.
    pub public: String,
}

impl Key {
    /// The TUF form of an ed25519 public key.
    pub fn ed25519(key: &PublicKey) -> Key {
        Key { keytype: "ed25519".to_owned(), scheme: "ed25519".to_owned(), keyval: KeyVal { public: key.to_hex() } }
    }

    /// The key id: SHA-256 of the key's canonical JSON, hex.
    pub fn key_id(&self) -> String {
        let value = serde_json::to_value(self).expect("keys serialise");
        hex::encode(Sha256::digest(canonical::to_bytes(&value).expect("keys hold no floats")))
    }
}

/// Which keys sign a role, and how many must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// The key ids.
    pub keyids: Vec<String>,
    /// Signatures needed, at least 1.
    pub threshold: u32,
}

/// The root role: every key, and which role each signs for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// `root`.
    #[serde(rename = "_type")]
    pub kind: String,
    /// [`SPEC_VERSION`].
    pub spec_version: String,
    /// Whether snapshots and targets are published as `N.name.json` and
    /// target files as `HASH.name` (wfrun always does).
    pub consistent_snapshot: bool,
    /// When it stops being trusted (RFC 3339, seconds, UTC).
    pub expires: String,
    /// Every key, by id.
    pub keys: BTreeMap<String, Key>,
    /// Each role's keys and threshold.
    pub roles: BTreeMap<String, RoleKeys>,
    /// Its version.
    pub version: u32,
}

/// One target file: its length, hashes, and what wfrun says about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Bytes.
    pub length: u64,
    /// `sha256` → hex.
    pub hashes: BTreeMap<String, String>,
    /// wfrun's custom metadata: `{"wfrun": {...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<serde_json::Value>,
}

/// The targets role: every target file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// `targets`.
    #[serde(rename = "_type")]
    pub kind: String,
    /// [`SPEC_VERSION`].
    pub spec_version: String,
    /// When it stops being trusted.
    pub expires: String,
    /// Target path → file.
    pub targets: BTreeMap<String, TargetFile>,
    /// Its version.
    pub version: u32,
}

/// A metadata file's version, as the snapshot or timestamp pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// The pinned version.
    pub version: u32,
    /// Its length, if pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes, if pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
}

/// The snapshot or timestamp role: the versions of other metadata files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pins {
    /// `snapshot` or `timestamp`.
    #[serde(rename = "_type")]
    pub kind: String,
    /// [`SPEC_VERSION`].
    pub spec_version: String,
    /// When it stops being trusted.
    pub expires: String,
    /// File name (`targets.json`, `snapshot.json`) → pinned version.
    pub meta: BTreeMap<String, MetaFile>,
    /// Its version.
    pub version: u32,
}

/// One signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signing key's id.
    pub keyid: String,
    /// The signature, hex.
    pub sig: String,
}

/// A signed metadata file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata<T> {
    /// The signatures over the canonical JSON of `signed`.
    pub signatures: Vec<Signature>,
    /// The role's content.
    pub signed: T,
}

/// Why metadata cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Not the expected JSON.
    #[error("{name}: not valid {role} metadata: {reason}")]
    Parse {
        /// The file.
        name: String,
        /// The role expected.
        role: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl<T: Serialize + DeserializeOwned> Metadata<T> {
    /// `signed`, signed by every key in `keys`.
    pub fn sign(signed: T, keys: &[&SecretKey]) -> Metadata<T> {
        let bytes = canonical_bytes(&signed);
        let signatures = keys
            .iter()
            .map(|key| Signature {
                keyid: Key::ed25519(&key.public()).key_id(),
                sig: hex::encode(key.sign_raw(&bytes)),
            })
            .collect();
        Metadata { signatures, signed }
    }

    /// The file's bytes: pretty JSON (the signatures cover the canonical
    /// form, so any formatting verifies).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("metadata serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a file's bytes.
    pub fn from_bytes(name: &str, role: &'static str, bytes: &[u8]) -> Result<Metadata<T>, MetadataError> {
        serde_json::from_slice(bytes).map_err(|e| MetadataError::Parse {
            name: name.to_owned(),
            role,
            reason: e.to_string(),
        })
    }

    /// How many distinct keys of `role` in `root` signed this.
    pub fn valid_signatures(&self, root: &Root, role: &str) -> usize {
        let Some(allowed) = root.roles.get(role) else { return 0 };
        let bytes = canonical_bytes(&self.signed);
        let mut seen = std::collections::BTreeSet::new();
        for signature in &self.signatures {
            if !allowed.keyids.contains(&signature.keyid) || seen.contains(&signature.keyid) {
                continue;
            }
            let Some(key) = root.keys.get(&signature.keyid) else { continue };
            let Ok(public) = PublicKey::from_text(&format!("ed25519:{}", key.keyval.public)) else { continue };
            let Ok(sig) = hex::decode(&signature.sig) else { continue };
            if public.verify_raw(&bytes, &sig) {
                seen.insert(signature.keyid.clone());
            }
        }
        seen.len()
    }
}

fn canonical_bytes<T: Serialize>(signed: &T) -> Vec<u8> {
    let value = serde_json::to_value(signed).expect("metadata serialises");
    canonical::to_bytes(&value).expect("wfrun's metadata holds no floats")
}

/// `sha256` → hex of `bytes`, as a TUF hashes map.
pub fn hashes(bytes: &[u8]) -> BTreeMap<String, String> {
    BTreeMap::from([("sha256".to_owned(), hex::encode(Sha256::digest(bytes)))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_the_securesystemslib_ones() {
        // The keyid python-tuf computes for this public key (securesystemslib
        // 1.6: sha256 of the canonical {"keytype","keyval":{"public"},"scheme"}).
        let key =
            Key { keytype: "ed25519".into(), scheme: "ed25519".into(), keyval: KeyVal { public: "0".repeat(64) } };
        let canonical = canonical::to_bytes(&serde_json::to_value(&key).unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(canonical).unwrap(),
            format!(
                "{{\"keytype\":\"ed25519\",\"keyval\":{{\"public\":\"{}\"}},\"scheme\":\"ed25519\"}}",
                "0".repeat(64)
            )
        );
        // securesystemslib: hashlib.sha256(encode_canonical(key).encode()).hexdigest()
        assert_eq!(key.key_id(), "7f7373360bc914a5d4a7bd87711615178beb6cf52494fcc49082ec65ba62908c");
    }

    #[test]
    fn a_signature_counts_once_and_only_for_its_role() {
        let a = SecretKey::from_seed([1; 32]);
        let b = SecretKey::from_seed([2; 32]);
        let (ka, kb) = (Key::ed25519(&a.public()), Key::ed25519(&b.public()));
        let root = Root {
            kind: "root".into(),
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: true,
            expires: "2030-01-01T00:00:00Z".into(),
            keys: [(ka.key_id(), ka.clone()), (kb.key_id(), kb.clone())].into(),
            roles: [
                ("root".to_owned(), RoleKeys { keyids: vec![ka.key_id()], threshold: 1 }),
                ("targets".to_owned(), RoleKeys { keyids: vec![kb.key_id()], threshold: 1 }),
            ]
            .into(),
            version: 1,
        };
        let signed = Metadata::sign(root.clone(), &[&a, &a, &b]);
        assert_eq!(signed.valid_signatures(&root, "root"), 1, "a duplicate signature counts once; b is not a root key");
        let mut tampered = signed.clone();
        tampered.signed.version = 2;
        assert_eq!(tampered.valid_signatures(&root, "root"), 0);
    }
}
