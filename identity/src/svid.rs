//! X.509-SVIDs: a workload's certificate chain and key, and the validation core that decides whether
//! a presented chain is a valid SVID.
//!
//! [`validate_svid`] does no I/O and takes the time as a parameter, so every rule is tested with
//! fixed certificates and clocks. The order matters: the leaf's SPIFFE ID is read first because it
//! names the trust domain whose bundle (and only that bundle) may vouch for the chain; then webpki
//! verifies the path (RFC 5280); then the X509-SVID leaf rules that webpki does not enforce.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::bundle::BundleSet;
use crate::error::{IdentityError, SvidError};
use crate::provider::signature_algorithms;
use crate::spiffe_id::SpiffeId;

/// A workload's X.509-SVID: the leaf first, then any intermediates, and the leaf's private key.
pub struct X509Svid {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Parsed once, so TLS resolvers hand out an `Arc` per handshake instead of re-parsing the key.
    certified: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

// === impl X509Svid ===

impl X509Svid {
    /// Reads the chain (leaf first) and the private key from PEM; the key must match the leaf.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Pem {
                what: "the SVID certificate chain",
                reason: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => IdentityError::NoPrivateKey,
            other => IdentityError::Pem {
                what: "the SVID private key",
                reason: other.to_string(),
            },
        })?;
        Self::from_der(chain, key)
    }

    /// Builds an SVID from DER; checks that the leaf names one SPIFFE ID and that the key matches.
    /// It does not check the chain against a bundle: that is [`validate_svid`]'s job, with a time.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::NoCertificate {
            what: "the SVID certificate chain",
        })?;
        let cert = parse_leaf(leaf)?;
        let id = spiffe_id_of_parsed(&cert)?;
        let validity = cert.validity();
        let not_before = to_system_time(validity.not_before.timestamp());
        let not_after = to_system_time(validity.not_after.timestamp());
        drop(cert);

        let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(IdentityError::UnsupportedKey)?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(SvidError::KeyMismatch { presented: id }.into());
            }
            // aws-lc-rs keys always know their public key; "unknown" cannot be judged, so it passes
            // here and a wrong key would fail the first handshake instead.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(other) => return Err(IdentityError::UnsupportedKey(other)),
        }
        Ok(Self {
            id,
            chain,
            key,
            certified: Arc::new(certified),
            not_before,
            not_after,
        })
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `from_der` refuses an empty chain, so there is always a leaf.
        &self.chain[0]
    }

    /// The private key, for writing it to a 0600 file or handing it to TLS. Never log it.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The chain and key as rustls uses them, parsed once.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When this SVID stops being valid (its leaf's notAfter); exported for metrics and renewal.
    pub fn expires_at(&self) -> SystemTime {
        self.not_after
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| crate::bundle::der_to_pem(c))
            .collect()
    }

    /// Validates this SVID against `bundles` at `now` (see [`validate_svid`]).
    pub fn validate(&self, bundles: &BundleSet, now: UnixTime) -> Result<SpiffeId, SvidError> {
        validate_svid(&self.chain, bundles, now)
    }
}

impl Clone for X509Svid {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            certified: self.certified.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// Shows the ID, chain length and validity; never the key.
impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("id", &self.id.as_str())
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

// === validation core ===

/// Decides whether `chain` (leaf first) is a valid X.509-SVID at `now`, and returns its SPIFFE ID.
///
/// The chain is verified only against the bundle of the leaf's own trust domain. Both TLS roles
/// use this one function: an SVID is valid as client and as server alike (the EKU rule).
pub fn validate_svid(
    chain: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: UnixTime,
) -> Result<SpiffeId, SvidError> {
    let (leaf, intermediates) = chain.split_first().ok_or(SvidError::EmptyChain)?;
    validate_svid_parts(leaf, intermediates, bundles, now)
}

/// [`validate_svid`] with the leaf and the intermediates apart, as rustls hands them over.
pub fn validate_svid_parts(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: UnixTime,
) -> Result<SpiffeId, SvidError> {
    let cert = parse_leaf(leaf)?;
    let id = spiffe_id_of_parsed(&cert)?;

    let Some(bundle) = bundles.get_str(id.trust_domain_str()) else {
        return Err(SvidError::NoBundleForTrustDomain {
            presented: id,
            known: bundles.trust_domains(),
        });
    };

    let end_entity =
        webpki::EndEntityCert::try_from(leaf).map_err(|reason| SvidError::ChainInvalid {
            presented: id.clone(),
            reason,
        })?;
    let verified = end_entity.verify_for_usage(
        signature_algorithms().all,
        bundle.anchors(),
        intermediates,
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    if let Err(reason) = verified {
        return Err(chain_error(id, reason));
    }
    if bundle.revoked_count() > 0 {
        let serial: String = cert
            .serial
            .to_bytes_be()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        if bundle.is_revoked(&serial) {
            return Err(SvidError::Revoked {
                presented: id,
                serial,
            });
        }
    }
    check_leaf_rules(&cert, id)
}

/// The SPIFFE ID named by a leaf certificate's single URI SAN (no chain validation).
pub fn spiffe_id_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    spiffe_id_of_parsed(&parse_leaf(leaf)?)
}

fn parse_leaf<'a>(leaf: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, SvidError> {
    match x509_parser::parse_x509_certificate(leaf) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::Malformed {
            reason: "trailing bytes after the certificate".to_owned(),
        }),
        Err(e) => Err(SvidError::Malformed {
            reason: e.to_string(),
        }),
    }
}

fn spiffe_id_of_parsed(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed {
            reason: format!("subjectAltName: {e}"),
        })?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [uri] => SpiffeId::parse(uri).map_err(|source| SvidError::NotSpiffeUri {
            uri: (*uri).to_owned(),
            source,
        }),
        many => Err(SvidError::MultipleUriSans(many.len())),
    }
}

/// Maps webpki's verdict to the SVID rule it expresses.
fn chain_error(presented: SpiffeId, reason: webpki::Error) -> SvidError {
    match reason {
        webpki::Error::CertExpired { time, not_after } => SvidError::Expired {
            presented,
            not_after,
            now: time,
        },
        webpki::Error::CertNotValidYet { time, not_before } => SvidError::NotYetValid {
            presented,
            not_before,
            now: time,
        },
        // An issuer name that matches a root whose key did not sign it is an impostor CA: to the
        // operator that is the same fact as an unknown issuer.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            SvidError::UnknownIssuer { presented }
        }
        webpki::Error::CaUsedAsEndEntity => SvidError::CaAsLeaf { presented },
        webpki::Error::RequiredEkuNotFoundContext(_) => SvidError::EkuMissingServerOrClientAuth {
            presented,
            missing: "serverAuth",
        },
        #[allow(deprecated)]
        webpki::Error::RequiredEkuNotFound => SvidError::EkuMissingServerOrClientAuth {
            presented,
            missing: "serverAuth",
        },
        reason => SvidError::ChainInvalid { presented, reason },
    }
}

/// The X509-SVID leaf rules that RFC 5280 path validation does not cover.
fn check_leaf_rules(
    cert: &X509Certificate<'_>,
    presented: SpiffeId,
) -> Result<SpiffeId, SvidError> {
    let malformed = |what: &str, e: x509_parser::error::X509Error| SvidError::Malformed {
        reason: format!("{what}: {e}"),
    };
    let basic_constraints = cert
        .basic_constraints()
        .map_err(|e| malformed("basicConstraints", e))?;
    if basic_constraints.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::CaAsLeaf { presented });
    }
    let Some(ku) = cert.key_usage().map_err(|e| malformed("keyUsage", e))? else {
        return Err(SvidError::KeyUsageMissing { presented });
    };
    if !ku.critical {
        return Err(SvidError::KeyUsageNotCritical { presented });
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::KeyCertSign { presented });
    }
    if !ku.value.digital_signature() {
        return Err(SvidError::MissingDigitalSignature { presented });
    }
    if let Some(eku) = cert
        .extended_key_usage()
        .map_err(|e| malformed("extendedKeyUsage", e))?
    {
        if !eku.value.server_auth {
            return Err(SvidError::EkuMissingServerOrClientAuth {
                presented,
                missing: "serverAuth",
            });
        }
        if !eku.value.client_auth {
            return Err(SvidError::EkuMissingServerOrClientAuth {
                presented,
                missing: "clientAuth",
            });
        }
    }
    Ok(presented)
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

/// Converts a `SystemTime` to the `UnixTime` the validation core takes (times before 1970 clamp).
pub fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}
