//! A signing key in a PKCS#8 file, for development only. Every log line that mentions it, and
//! `meshguard ca status`, says so.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{KeyAlgorithm, KeyKind, OpenOptions, SigningKey};
use crate::error::CaError;

/// A key held in process memory, loaded from (or created as) a mode-0600 PKCS#8 PEM file.
pub struct SoftwareKey {
    path: PathBuf,
    algorithm: KeyAlgorithm,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareKey")
            .field("path", &self.path)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SoftwareKey {
    /// Opens the key file, creating it when `options.create` is set and it does not exist.
    pub fn open(path: &Path, options: &OpenOptions) -> Result<Self, CaError> {
        let err = |reason: String| CaError::SoftwareKey {
            path: path.to_owned(),
            reason,
        };
        let exists = path.exists();
        if exists && options.create && !options.use_existing {
            return Err(CaError::KeyExists {
                what: path.display().to_string(),
            });
        }
        if !exists {
            if !options.create {
                return Err(err(
                    "the file does not exist; create it with `meshguard ca init`".into(),
                ));
            }
            let key = rcgen::KeyPair::generate_for(options.algorithm.rcgen())
                .map_err(|e| err(format!("key generation failed: {e}")))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| CaError::io("creating the key file", path, e))?;
            file.write_all(key.serialize_pem().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| CaError::io("writing the key file", path, e))?;
            tracing::warn!(path = %path.display(), "created a SOFTWARE CA key: for development only, use an HSM in production");
        }
        let mode = std::fs::metadata(path)
            .map_err(|e| CaError::io("reading the key file's metadata", path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "the file is readable by others (mode {:o}); run `chmod 600 {}`",
                mode & 0o777,
                path.display()
            )));
        }
        let pem = std::fs::read_to_string(path)
            .map_err(|e| CaError::io("reading the key file", path, e))?;
        let key =
            rcgen::KeyPair::from_pem(&pem).map_err(|e| err(format!("not a PKCS#8 key: {e}")))?;
        let algorithm = [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
        ]
        .into_iter()
        .find(|a| a.rcgen() == key.algorithm())
        .ok_or_else(|| err("the key is neither ECDSA P-256/P-384 nor Ed25519".into()))?;
        tracing::warn!(path = %path.display(), "using a SOFTWARE CA key: DEVELOPMENT ONLY");
        Ok(Self {
            path: path.to_owned(),
            algorithm,
            key,
        })
    }
}

impl SigningKey for SoftwareKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key_raw(&self) -> &[u8] {
        rcgen::PublicKeyData::der_bytes(&self.key)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        rcgen::SigningKey::sign(&self.key, message).map_err(|e| CaError::Certificate(e.to_string()))
    }

    fn kind(&self) -> KeyKind {
        KeyKind::SoftwareDevelopmentOnly
    }

    fn location(&self) -> String {
        format!(
            "file:{} (SOFTWARE KEY - DEVELOPMENT ONLY)",
            self.path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_file_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let options = OpenOptions {
            create: true,
            use_existing: false,
            ..OpenOptions::default()
        };
        let key = SoftwareKey::open(&path, &options).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = SoftwareKey::open(&path, &OpenOptions::default()).unwrap();
        assert_eq!(key.public_key_raw(), again.public_key_raw());
        assert!(matches!(
            SoftwareKey::open(&path, &options),
            Err(CaError::KeyExists { .. })
        ));
        assert!(key.location().contains("DEVELOPMENT ONLY"));
    }

    #[test]
    fn refuses_a_world_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let options = OpenOptions {
            create: true,
            ..OpenOptions::default()
        };
        SoftwareKey::open(&path, &options).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SoftwareKey::open(&path, &OpenOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn signatures_verify_with_the_public_key() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
        let dir = tempfile::tempdir().unwrap();
        let key = SoftwareKey::open(
            &dir.path().join("k"),
            &OpenOptions {
                create: true,
                ..Default::default()
            },
        )
        .unwrap();
        let sig = key.sign(b"hello").unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key_raw())
            .verify(b"hello", &sig)
            .unwrap();
    }
}
