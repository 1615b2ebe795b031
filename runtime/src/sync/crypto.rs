//! The cryptography the TUF client uses: ed25519 and SHA-2, on the same
//! crates wfrun signs bundles with (`ed25519-dalek`, `sha2`).
//!
//! `sigstore-tuf` takes its cryptography from a process-wide provider;
//! wfrun builds it without a default backend, so [`install`] must run
//! before any metadata is verified (every entry point of [`super`] calls
//! it). Only ed25519 signatures are accepted: a repository whose keys use
//! another scheme is refused, never verified with a weaker one.

use sha2::Digest;
use sigstore_crypto::{CryptoProvider, Error, HashContext, Result, SigningScheme};
use sigstore_types::HashAlgorithm;

#[derive(Debug)]
struct Provider;

static PROVIDER: Provider = Provider;

/// Installs wfrun's provider, once per process; later calls do nothing.
pub fn install() {
    let _ = sigstore_crypto::install_default_provider(&PROVIDER);
}

struct Hash<D: Digest + Send>(D);

impl<D: Digest + Send> HashContext for Hash<D> {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn finalize(self: Box<Self>) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

impl CryptoProvider for Provider {
    fn hash(&self, algorithm: HashAlgorithm) -> Result<Box<dyn HashContext>> {
        Ok(match algorithm {
            HashAlgorithm::Sha2256 => Box::new(Hash(sha2::Sha256::new())),
            HashAlgorithm::Sha2384 => Box::new(Hash(sha2::Sha384::new())),
            HashAlgorithm::Sha2512 => Box::new(Hash(sha2::Sha512::new())),
            // The enum is non-exhaustive: a future algorithm is refused.
            other => return Err(Error::UnsupportedAlgorithm(format!("{other:?}"))),
        })
    }

    fn verify_raw(&self, scheme: SigningScheme, public_key: &[u8], data: &[u8], signature: &[u8]) -> Result<()> {
        if scheme != SigningScheme::Ed25519 {
            return Err(Error::UnsupportedAlgorithm(format!("{scheme:?}: wfrun accepts ed25519 keys only")));
        }
        let key: [u8; 32] =
            public_key.try_into().map_err(|_| Error::InvalidKeyFormat("an ed25519 key is 32 bytes".to_owned()))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|e| Error::InvalidKeyFormat(e.to_string()))?;
        let signature: [u8; 64] =
            signature.try_into().map_err(|_| Error::Verification("an ed25519 signature is 64 bytes".to_owned()))?;
        key.verify_strict(data, &ed25519_dalek::Signature::from_bytes(&signature))
            .map_err(|e| Error::Verification(e.to_string()))
    }

    fn verify_prehashed(&self, scheme: SigningScheme, _: &[u8], _: &[u8], _: &[u8]) -> Result<()> {
        Err(Error::UnsupportedAlgorithm(format!("{scheme:?} over a digest: wfrun accepts ed25519 keys only")))
    }
}
