//! The CA's signing key behind one trait, whether it lives in an HSM or (for development) a file.
//!
//! [`RcgenSigner`] plugs any [`SigningKey`] into rcgen 0.14 as an external signer, so certificates
//! are built by rcgen and only the signature is made by the key.

mod der;
pub mod pkcs11;
pub mod software;
mod token;
pub mod uri;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use pkcs11::Pkcs11Key;
pub use software::SoftwareKey;
pub use uri::{KeyUri, Pkcs11Uri};

use crate::error::CaError;
use crate::secret::Secret;

/// The signature algorithms a CA key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (the default).
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl KeyAlgorithm {
    /// rcgen's description of the algorithm (OIDs for the SPKI and the signature).
    pub fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The name used on the command line and in `ca status`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }

    /// Parses a name given by [`KeyAlgorithm::name`] (also `p256`, `p384`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ecdsa-p256" | "p256" | "P-256" => Some(KeyAlgorithm::EcdsaP256),
            "ecdsa-p384" | "p384" | "P-384" => Some(KeyAlgorithm::EcdsaP384),
            "ed25519" | "Ed25519" => Some(KeyAlgorithm::Ed25519),
            _ => None,
        }
    }
}

/// Whether the key is fit for production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Generated inside an HSM; never leaves it.
    Hsm,
    /// A key in a file: for development only, and labelled so everywhere.
    SoftwareDevelopmentOnly,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Hsm => "HSM (PKCS#11)",
            KeyKind::SoftwareDevelopmentOnly => "SOFTWARE KEY - DEVELOPMENT ONLY",
        })
    }
}

/// A signing key of the CA.
pub trait SigningKey: Send + Sync + fmt::Debug {
    /// The key's algorithm.
    fn algorithm(&self) -> KeyAlgorithm;
    /// The public key as it appears in the SPKI BIT STRING (SEC1 point, or 32 bytes for Ed25519).
    fn public_key_raw(&self) -> &[u8];
    /// Signs `message`, returning a signature ready for X.509 (DER `ECDSA-Sig-Value` for ECDSA).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError>;
    /// HSM or development key.
    fn kind(&self) -> KeyKind;
    /// Where the key lives, without any secret.
    fn location(&self) -> String;
    /// `None` when the key can sign; else why not (the HSM fault, as a sentence).
    fn unavailable(&self) -> Option<String> {
        None
    }
    /// The DER SubjectPublicKeyInfo of the key.
    fn subject_public_key_info(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&PublicOnly {
            algorithm: self.algorithm(),
            raw: self.public_key_raw(),
        })
    }
}

/// Options for opening (or creating) a key.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Generate the key when it does not exist.
    pub create: bool,
    /// Use a key that already exists (when `create` is set and one is found).
    pub use_existing: bool,
    /// Algorithm of a generated key.
    pub algorithm: KeyAlgorithm,
    /// The PIN, when the URI has no `pin-source` (from `MESHGUARD_HSM_PIN`).
    pub pin_from_env: Option<Secret>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            create: false,
            use_existing: true,
            algorithm: KeyAlgorithm::EcdsaP256,
            pin_from_env: None,
        }
    }
}

/// Opens the key a URI names.
pub fn open_key(uri: &KeyUri, options: &OpenOptions) -> Result<Arc<dyn SigningKey>, CaError> {
    Ok(match uri {
        KeyUri::File(path) => Arc::new(SoftwareKey::open(path, options)?),
        KeyUri::Pkcs11(p11) => Arc::new(Pkcs11Key::open(p11, options)?),
    })
}

/// Reads the PIN: `pin-source` file first, else the environment's `MESHGUARD_HSM_PIN`.
pub(crate) fn read_pin(
    source: Option<&PathBuf>,
    from_env: Option<&Secret>,
) -> Result<Secret, CaError> {
    let pin = match source {
        Some(path) => Secret::new(
            std::fs::read_to_string(path)
                .map_err(|e| CaError::io("reading the HSM PIN file", path, e))?,
        ),
        None => from_env.cloned().ok_or(CaError::PinMissing)?,
    };
    if pin.is_empty() {
        return Err(CaError::PinMissing);
    }
    Ok(pin)
}

// === impl RcgenSigner ===

thread_local! {
    /// rcgen's error type cannot carry ours, and signing runs synchronously on the caller's
    /// thread, so the key's own error waits here for [`rcgen_error`].
    static LAST_KEY_ERROR: std::cell::RefCell<Option<CaError>> = const { std::cell::RefCell::new(None) };
}

/// Adapts a shared [`SigningKey`] to rcgen's external-signer traits.
#[derive(Clone)]
pub struct RcgenSigner(pub Arc<dyn SigningKey>);

impl fmt::Debug for RcgenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RcgenSigner({:?})", self.0)
    }
}

impl rcgen::PublicKeyData for RcgenSigner {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm().rcgen()
    }
}

impl rcgen::SigningKey for RcgenSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg).map_err(|e| {
            LAST_KEY_ERROR.with(|slot| *slot.borrow_mut() = Some(e));
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A public key alone, to compute its SPKI.
struct PublicOnly<'a> {
    algorithm: KeyAlgorithm,
    raw: &'a [u8],
}

impl rcgen::PublicKeyData for PublicOnly<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm.rcgen()
    }
}

/// Turns an rcgen failure into our error, preferring the key's own error when it caused it.
pub(crate) fn rcgen_error(error: rcgen::Error) -> CaError {
    LAST_KEY_ERROR
        .with(|slot| slot.borrow_mut().take())
        .unwrap_or_else(|| CaError::Certificate(error.to_string()))
}
