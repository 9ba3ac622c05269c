//! Renewal: the caller proves its current SVID over mTLS and gets a new one for the same ID,
//! unless that SVID is revoked or its chain of renewals has run longer than the CA allows.

use std::time::{Duration, SystemTime};

use meshguard_identity::{BundleSet, SpiffeId, unix_time, validate_svid};
use rustls_pki_types::CertificateDer;

use super::{Authority, Provenance};
use crate::audit::{Event, timestamp};
use crate::error::{CaError, Refusal};
use crate::issue::{Issued, issued_at, parse_csr};

/// A client certificate as validated for renewals: its SPIFFE ID (or why it is not a valid SVID
/// of this CA) and its expiry.
#[derive(Debug, Clone)]
pub struct ClientCert {
    presented: String,
    id: Result<SpiffeId, String>,
    not_after: SystemTime,
    /// Upper-case hex, as the CA records serials.
    serial: String,
    issued_at: SystemTime,
}

impl Authority {
    /// Validates a client certificate chain once (per connection); renewals on that connection
    /// then re-check only its expiry, not the whole chain.
    pub fn client_cert(&self, chain: &[CertificateDer<'static>], now: SystemTime) -> ClientCert {
        let presented = chain
            .first()
            .and_then(|leaf| meshguard_identity::spiffe_id_of(leaf).ok())
            .map_or_else(
                || "an unreadable certificate".to_owned(),
                |id| id.to_string(),
            );
        let id = validate_svid(
            chain,
            &BundleSet::single(self.bundle.clone()),
            unix_time(now),
        )
        .map_err(|e| e.to_string());
        let parsed = chain
            .first()
            .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok());
        let time = |t: x509_parser::time::ASN1Time| {
            u64::try_from(t.timestamp()).map_or(SystemTime::UNIX_EPOCH, |secs| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
            })
        };
        let (serial, not_before, not_after) = parsed.map_or(
            (
                String::new(),
                SystemTime::UNIX_EPOCH,
                SystemTime::UNIX_EPOCH,
            ),
            |(_, cert)| {
                (
                    hex::encode_upper(cert.serial.to_bytes_be()),
                    time(cert.validity().not_before),
                    time(cert.validity().not_after),
                )
            },
        );
        ClientCert {
            presented,
            id,
            not_after,
            serial,
            issued_at: issued_at(not_before, not_after),
        }
    }

    /// Renewal: the caller proved its current SVID over mTLS; the CSR must ask for that same ID.
    pub fn renew(
        &self,
        client: Option<&ClientCert>,
        csr: &[u8],
        peer: &str,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let presented = client.map_or("no client certificate", |c| c.presented.as_str());
        let requester = format!("mtls:{presented} from {peer}");
        let parsed = parse_csr(csr);
        let asked = parsed.as_ref().ok().map(|c| c.spiffe_id.clone());
        let provenance = Provenance {
            renewed_from: client.map(|c| c.serial.clone()),
            chain_start: client.map_or_else(|| timestamp(now), |c| self.chain_start_of(c, now)),
        };
        let chain_start = provenance.chain_start.clone();
        self.record(
            Event::Renew,
            requester,
            asked.as_ref(),
            now,
            provenance,
            || {
                let client = client.ok_or(Refusal::NoClientCertificate)?;
                let current = client
                    .id
                    .clone()
                    .map_err(Refusal::InvalidClientCertificate)?;
                if now > client.not_after {
                    return Err(Refusal::InvalidClientCertificate(format!(
                        "it expired at {}",
                        timestamp(client.not_after)
                    ))
                    .into());
                }
                // A stolen SVID is renewable only until it is revoked, and only so far from the
                // bootstrap it descends from.
                self.revocations.current()?.check(
                    &client.serial,
                    current.as_str(),
                    client.issued_at,
                )?;
                self.check_chain_age(&chain_start, now)?;
                let csr = parsed?;
                if csr.spiffe_id != current {
                    return Err(Refusal::IdMismatch {
                        requested: csr.spiffe_id.to_string(),
                        allowed: current.to_string(),
                    }
                    .into());
                }
                self.issuer.issue_for_csr(&csr, None, now)
            },
        )
    }

    /// When the renewal chain of the presented certificate began: from the index, re-read from
    /// the trail when another process issued it, else the certificate's own issuance (a
    /// certificate of this CA that the trail does not know starts its own chain).
    fn chain_start_of(&self, client: &ClientCert, now: SystemTime) -> String {
        if let Some(start) = self.lineage.start_of(&client.serial) {
            return start;
        }
        if let Ok(records) = self.audit.records() {
            self.lineage.extend(&records, &timestamp(now));
        }
        self.lineage
            .start_of(&client.serial)
            .unwrap_or_else(|| timestamp(client.issued_at))
    }

    fn check_chain_age(&self, chain_start: &str, now: SystemTime) -> Result<(), Refusal> {
        let started = chain_start
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| u64::try_from(t.as_second()).ok())
            .map_or(now, |secs| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
            });
        let age = now.duration_since(started).unwrap_or_default();
        if age > self.max_chain {
            return Err(Refusal::ChainTooOld {
                started: chain_start.to_owned(),
                max: format!("{}s", self.max_chain.as_secs()),
            });
        }
        Ok(())
    }
}
