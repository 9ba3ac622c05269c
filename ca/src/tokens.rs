//! Bootstrap tokens: one-time secrets bound to one SPIFFE ID, stored only as SHA-256 hashes.
//!
//! Each token is a file `tokens/<hash>.json`; redeeming renames it to `<hash>.used`. A rename is
//! atomic, so a token is used once even when two processes race for it, and `meshguard ca token
//! create` can add tokens while `meshguard ca serve` runs.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use meshguard_identity::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::audit::{sha256_hex, timestamp};
use crate::error::{CaError, Refusal};
use crate::secret::Secret;

/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
const PREFIX: &str = "mgt1.";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredToken {
    spiffe_id: String,
    created_at: String,
    expires_at_unix: u64,
}

/// The token directory of a CA.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

/// A token that passed its checks and was consumed; [`TokenStore::restore`] puts it back when the
/// issuance it was for could not happen (the HSM was away).
#[derive(Debug)]
pub struct Redeemed {
    pub spiffe_id: SpiffeId,
    /// First 8 hex digits of the hash: names the token in the audit trail without revealing it.
    pub tag: String,
    hash: String,
}

impl TokenStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Creates a token for `spiffe_id` valid for `ttl`; the secret is returned once and never stored.
    pub fn create(
        &self,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Secret, CaError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| CaError::Certificate("the system RNG failed".into()))?;
        let token = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let hash = sha256_hex(token.as_bytes());
        let stored = StoredToken {
            spiffe_id: spiffe_id.to_string(),
            created_at: timestamp(now),
            expires_at_unix: (now + ttl)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let path = self.dir.join(format!("{hash}.json"));
        let json =
            serde_json::to_string(&stored).map_err(|e| CaError::Certificate(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CaError::io("creating a token", &path, e))?;
        file.write_all(json.as_bytes())
            .map_err(|e| CaError::io("writing a token", &path, e))?;
        Ok(Secret::new(token))
    }

    /// Checks a presented token and consumes it. `requested` is the SPIFFE ID the CSR asks for: a
    /// mismatch is refused without consuming the token.
    pub fn redeem(
        &self,
        token: &Secret,
        requested: &SpiffeId,
        now: SystemTime,
    ) -> Result<Redeemed, CaError> {
        let token = token.expose().trim();
        if !token.starts_with(PREFIX) || token.len() > 128 {
            return Err(Refusal::TokenUnknown.into());
        }
        let hash = sha256_hex(token.as_bytes());
        let tag = hash[..8].to_owned();
        let live = self.dir.join(format!("{hash}.json"));
        let used = self.dir.join(format!("{hash}.used"));
        let text = match std::fs::read_to_string(&live) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if used.exists() {
                    Refusal::TokenUsed
                } else {
                    Refusal::TokenUnknown
                }
                .into());
            }
            Err(e) => return Err(CaError::io("reading a token", &live, e)),
        };
        let stored: StoredToken = serde_json::from_str(&text).map_err(|e| CaError::State {
            path: live.clone(),
            reason: format!("the token record is corrupt: {e}"),
        })?;
        let expires = UNIX_EPOCH + Duration::from_secs(stored.expires_at_unix);
        if now >= expires {
            return Err(Refusal::TokenExpired {
                expired_at: timestamp(expires),
            }
            .into());
        }
        let allowed = SpiffeId::parse(&stored.spiffe_id).map_err(|e| CaError::State {
            path: live.clone(),
            reason: format!("the token's SPIFFE ID is invalid: {e}"),
        })?;
        if &allowed != requested {
            return Err(Refusal::IdMismatch {
                requested: requested.to_string(),
                allowed: allowed.to_string(),
            }
            .into());
        }
        match std::fs::rename(&live, &used) {
            Ok(()) => Ok(Redeemed {
                spiffe_id: allowed,
                tag,
                hash,
            }),
            // Someone else redeemed it between our read and our rename.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Refusal::TokenUsed.into()),
            Err(e) => Err(CaError::io("consuming a token", &live, e)),
        }
    }

    /// Puts a consumed token back, when issuance failed for a reason that is not the requester's.
    pub fn restore(&self, redeemed: &Redeemed) {
        let live = self.dir.join(format!("{}.json", redeemed.hash));
        let used = self.dir.join(format!("{}.used", redeemed.hash));
        if let Err(e) = std::fs::rename(&used, &live) {
            tracing::warn!(token = %redeemed.tag, error = %e, "could not restore a token after a failed issuance");
        }
    }

    /// The tag (hash prefix) a presented token is known by in the audit trail.
    pub fn tag_of(token: &Secret) -> String {
        sha256_hex(token.expose().trim().as_bytes())[..8].to_owned()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_single_use_bound_and_expiring() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let id = SpiffeId::parse("spiffe://td/ns/a").unwrap();
        let other = SpiffeId::parse("spiffe://td/ns/b").unwrap();
        let now = SystemTime::now();
        let token = store.create(&id, Duration::from_secs(60), now).unwrap();
        // Only the hash is stored.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(!text.contains(token.expose()));
        }
        let err = store.redeem(&token, &other, now).unwrap_err();
        assert!(
            matches!(err, CaError::Refused(Refusal::IdMismatch { .. })),
            "{err}"
        );
        let late = now + Duration::from_secs(61);
        assert!(matches!(
            store.redeem(&token, &id, late),
            Err(CaError::Refused(Refusal::TokenExpired { .. }))
        ));
        let redeemed = store.redeem(&token, &id, now).unwrap();
        assert_eq!(redeemed.spiffe_id, id);
        assert!(matches!(
            store.redeem(&token, &id, now),
            Err(CaError::Refused(Refusal::TokenUsed))
        ));
        store.restore(&redeemed);
        store.redeem(&token, &id, now).unwrap();
        let forged = Secret::new("mgt1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert!(matches!(
            store.redeem(&forged, &id, now),
            Err(CaError::Refused(Refusal::TokenUnknown))
        ));
    }
}
