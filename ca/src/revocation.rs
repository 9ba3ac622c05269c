//! The deny list: SVIDs the CA will not renew, and publishes so that sidecars refuse them too.
//!
//! Short lifetimes bound a stolen SVID's use only if the thief cannot renew it. `meshguard ca
//! revoke --serial` names one certificate; `--spiffe-id` names every certificate of that identity
//! issued before the revocation (a fresh bootstrap with a new token gets a new, valid one). The
//! list lives in `state/revoked.json`, written atomically by `ca revoke` and re-read by a running
//! `ca serve` when it changes. Entries of certificates past their `not_after` are pruned: an
//! expired certificate is refused anyway.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use meshguard_identity::SpiffeId;

use crate::audit::{AuditLog, Entry, Event, Outcome, timestamp};
use crate::error::{CaError, Refusal};
use crate::state::StateDir;

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSerial {
    pub spiffe_id: Option<String>,
    /// RFC 3339; the entry is pruned after it.
    pub not_after: Option<String>,
    pub revoked_at: String,
    pub reason: String,
}

/// One revoked identity: its certificates issued before `revoked_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedId {
    pub revoked_at: String,
    pub reason: String,
}

/// The whole list, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    /// By serial, upper-case hex as `openssl x509 -serial` prints it.
    #[serde(default)]
    pub serials: BTreeMap<String, RevokedSerial>,
    #[serde(default)]
    pub spiffe_ids: BTreeMap<String, RevokedId>,
}

/// What the API publishes (`GET /v1/revoked`): the serials sidecars must refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub serials: Vec<String>,
}

impl Revocations {
    /// Reads `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Self, CaError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| CaError::State {
                path: path.to_owned(),
                reason: format!("the revocation list is not valid ({e}); restore it from backup"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CaError::io("reading the revocation list", path, e)),
        }
    }

    /// Writes `path` atomically (a synced temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), CaError> {
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_string_pretty(self).map_err(|e| CaError::State {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(json.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| CaError::io("writing the revocation list", path, e))
    }

    /// Refuses a certificate that is revoked by serial, or by identity when it was issued
    /// (`issued_at`) before the identity's revocation.
    pub fn check(
        &self,
        serial: &str,
        spiffe_id: &str,
        issued_at: SystemTime,
    ) -> Result<(), Refusal> {
        if let Some(entry) = self.serials.get(serial) {
            return Err(Refusal::Revoked(format!(
                "certificate {serial} was revoked at {} ({})",
                entry.revoked_at, entry.reason
            )));
        }
        if let Some(entry) = self.spiffe_ids.get(spiffe_id)
            && timestamp(issued_at) < entry.revoked_at
        {
            return Err(Refusal::Revoked(format!(
                "{spiffe_id} was revoked at {} ({}) and this certificate is older",
                entry.revoked_at, entry.reason
            )));
        }
        Ok(())
    }

    /// Drops serial entries whose certificate has expired.
    pub fn prune(&mut self, now: SystemTime) {
        let now = timestamp(now);
        self.serials
            .retain(|_, e| e.not_after.as_ref().is_none_or(|t| *t > now));
    }

    /// The serials to publish.
    pub fn published(&self) -> Published {
        Published {
            serials: self.serials.keys().cloned().collect(),
        }
    }
}

/// What `meshguard ca revoke` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One certificate, by serial (hex, any case).
    Serial(String),
    /// Every certificate of an identity issued until now.
    SpiffeId(SpiffeId),
}

/// Revokes `target`: adds it to the list in `state` (with every unexpired certificate of an
/// identity, found in the trail, so that sidecars can refuse them by serial), saves the list,
/// and records the revocation in the audit trail. Needs no signing key: a revocation must work
/// while the HSM is away. Returns the serials now revoked for `target`.
pub fn revoke(
    state: &StateDir,
    audit: &AuditLog,
    target: &Target,
    reason: &str,
    now: SystemTime,
) -> Result<Vec<String>, CaError> {
    if reason.trim().is_empty() {
        return Err(CaError::State {
            path: state.revoked(),
            reason: "a revocation needs a reason (--reason), e.g. the incident number".into(),
        });
    }
    let path = state.revoked();
    let mut list = Revocations::load(&path)?;
    list.prune(now);
    let revoked_at = timestamp(now);
    let records = audit.records()?;
    let issued = records.iter().filter(|r| {
        r.entry.outcome == Outcome::Issued
            && r.entry.not_after.as_ref().is_none_or(|t| *t > revoked_at)
    });
    let (serials, spiffe_id): (Vec<Found>, Option<String>) = match target {
        Target::Serial(serial) => {
            let serial = serial.trim().to_ascii_uppercase();
            let known = issued
                .clone()
                .find(|r| r.entry.serial.as_ref() == Some(&serial));
            let (id, not_after) = known.map_or((None, None), |r| {
                (r.entry.spiffe_id.clone(), r.entry.not_after.clone())
            });
            (vec![(serial, id, not_after)], None)
        }
        Target::SpiffeId(id) => {
            let id = id.to_string();
            let serials = issued
                .filter(|r| r.entry.spiffe_id.as_ref() == Some(&id))
                .filter_map(|r| {
                    Some((
                        r.entry.serial.clone()?,
                        Some(id.clone()),
                        r.entry.not_after.clone(),
                    ))
                })
                .collect();
            list.spiffe_ids.insert(
                id.clone(),
                RevokedId {
                    revoked_at: revoked_at.clone(),
                    reason: reason.to_owned(),
                },
            );
            (serials, Some(id))
        }
    };
    for (serial, id, not_after) in &serials {
        list.serials.insert(
            serial.clone(),
            RevokedSerial {
                spiffe_id: id.clone(),
                not_after: not_after.clone(),
                revoked_at: revoked_at.clone(),
                reason: reason.to_owned(),
            },
        );
    }
    // Recorded before it takes effect, as every decision of the CA.
    audit.append(
        Entry {
            event: Event::Revoke,
            outcome: Outcome::Revoked,
            requester: "operator (meshguard ca revoke)".into(),
            spiffe_id: spiffe_id.or_else(|| serials.first().and_then(|s| s.1.clone())),
            serial: match target {
                Target::Serial(_) => serials.first().map(|s| s.0.clone()),
                Target::SpiffeId(_) => None,
            },
            not_after: None,
            reason: Some(reason.to_owned()),
            renewed_from: None,
            chain_start: None,
        },
        now,
    )?;
    list.save(&path)?;
    Ok(serials.into_iter().map(|s| s.0).collect())
}

/// A certificate found in the trail: serial, SPIFFE ID, `not_after`.
type Found = (String, Option<String>, Option<String>);

/// The file's modification time and length when it was last read, and what it held.
#[derive(Debug, Default)]
struct Cached {
    stamp: Option<(SystemTime, u64)>,
    list: Arc<Revocations>,
}

/// The list as a running CA sees it: re-read whenever the file's modification time or length
/// changes, because `ca revoke` runs in another process.
#[derive(Debug)]
pub struct RevocationFile {
    path: PathBuf,
    cache: Mutex<Option<Cached>>,
}

impl RevocationFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new(None),
        }
    }

    /// The current list. A list that cannot be read fails the caller (renewals are refused
    /// rather than granted past a revocation nobody can read).
    pub fn current(&self) -> Result<Arc<Revocations>, CaError> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut cache = self.cache.lock().map_err(|_| CaError::State {
            path: self.path.clone(),
            reason: "the revocation cache lock was poisoned".into(),
        })?;
        match &*cache {
            Some(cached) if cached.stamp.is_some() && cached.stamp == stamp => {
                Ok(cached.list.clone())
            }
            _ => {
                let list = Arc::new(Revocations::load(&self.path)?);
                *cache = Some(Cached {
                    stamp,
                    list: list.clone(),
                });
                Ok(list)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn a_serial_or_an_older_certificate_of_a_revoked_id_is_refused() {
        let mut list = Revocations::default();
        list.serials.insert(
            "AB".into(),
            RevokedSerial {
                spiffe_id: None,
                not_after: Some(timestamp(at(3600))),
                revoked_at: timestamp(at(10)),
                reason: "INC-1".into(),
            },
        );
        list.spiffe_ids.insert(
            "spiffe://td/w".into(),
            RevokedId {
                revoked_at: timestamp(at(100)),
                reason: "INC-2".into(),
            },
        );
        let error = list.check("AB", "spiffe://td/x", at(500)).unwrap_err();
        assert!(error.to_string().contains("INC-1"), "{error}");
        assert!(list.check("CD", "spiffe://td/w", at(50)).is_err());
        assert!(
            list.check("CD", "spiffe://td/w", at(200)).is_ok(),
            "issued after"
        );
        assert!(list.check("CD", "spiffe://td/x", at(50)).is_ok());
        list.prune(at(7200));
        assert!(list.serials.is_empty(), "expired entries go");
        assert_eq!(list.spiffe_ids.len(), 1);
    }

    #[test]
    fn the_file_round_trips_and_a_running_ca_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.json");
        let file = RevocationFile::new(path.clone());
        assert!(file.current().unwrap().serials.is_empty(), "no file: empty");
        let mut list = Revocations::default();
        list.spiffe_ids.insert(
            "spiffe://td/w".into(),
            RevokedId {
                revoked_at: timestamp(at(0)),
                reason: "r".into(),
            },
        );
        list.save(&path).unwrap();
        assert_eq!(*file.current().unwrap(), list);
        std::fs::write(&path, "{\"serials\": 1}").unwrap();
        assert!(file.current().is_err(), "an unreadable list refuses");
    }
}
