//! Errors of the identity crate.
//!
//! [`SvidError`] is the verdict on one presented certificate chain: each SPIFFE rule a certificate
//! can break has its own variant, so a refused peer is logged (and tested) with the precise reason.
//! [`IdentityError`] covers everything else a caller can get wrong: unreadable PEM, a key that does
//! not match its certificate, a bundle that cannot be parsed, a TLS configuration that cannot be built.

use std::path::PathBuf;

use rustls_pki_types::UnixTime;

use crate::spiffe_id::{IdError, SpiffeId, TrustDomain};

/// Why a presented X.509-SVID chain is refused. One variant per rule of the X509-SVID spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    #[error("the peer presented no certificate; a SPIFFE peer must present its X.509-SVID")]
    EmptyChain,
    #[error("the leaf certificate cannot be parsed as X.509 ({reason}); re-issue it")]
    Malformed { reason: String },
    #[error("the leaf certificate has no URI SAN, so it names no SPIFFE ID; re-issue it with one")]
    NoUriSan,
    #[error("the leaf certificate has {0} URI SANs; an X.509-SVID must carry exactly one")]
    MultipleUriSans(usize),
    #[error("the leaf's URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    NotSpiffeUri {
        uri: String,
        #[source]
        source: IdError,
    },
    #[error(
        "peer {presented} belongs to trust domain {}, for which no trust bundle is configured (known: {}); add a federated bundle for it if it should be trusted",
        presented.trust_domain_str(), join(known)
    )]
    NoBundleForTrustDomain {
        presented: SpiffeId,
        known: Vec<TrustDomain>,
    },
    #[error(
        "the certificate of {presented} expired at {} (now {}); renew it",
        show_time(*not_after), show_time(*now)
    )]
    Expired {
        presented: SpiffeId,
        not_after: UnixTime,
        now: UnixTime,
    },
    #[error(
        "the certificate of {presented} is not valid before {} (now {}); check the clocks of both hosts",
        show_time(*not_before), show_time(*now)
    )]
    NotYetValid {
        presented: SpiffeId,
        not_before: UnixTime,
        now: UnixTime,
    },
    #[error(
        "the certificate of {presented} was not issued by any root in the trust bundle of {}; it comes from an unknown CA",
        presented.trust_domain_str()
    )]
    UnknownIssuer { presented: SpiffeId },
    #[error(
        "the certificate chain of {presented} does not verify against the bundle of its trust domain: {reason}"
    )]
    ChainInvalid {
        presented: SpiffeId,
        #[source]
        reason: webpki::Error,
    },
    #[error(
        "the leaf certificate of {presented} is a CA certificate (cA=true); a CA cannot be used as a leaf"
    )]
    CaAsLeaf { presented: SpiffeId },
    #[error(
        "the leaf certificate of {presented} may sign certificates or CRLs (keyCertSign/cRLSign); a leaf must not"
    )]
    KeyCertSign { presented: SpiffeId },
    #[error(
        "the leaf certificate of {presented} lacks the digitalSignature key usage that TLS needs"
    )]
    MissingDigitalSignature { presented: SpiffeId },
    #[error(
        "the leaf certificate of {presented} has no key usage extension; an X.509-SVID must carry one"
    )]
    KeyUsageMissing { presented: SpiffeId },
    #[error(
        "the key usage extension of {presented}'s leaf is not marked critical, as the SPIFFE spec requires"
    )]
    KeyUsageNotCritical { presented: SpiffeId },
    #[error(
        "the extended key usage of {presented}'s leaf lacks {missing}; if present it must list both serverAuth and clientAuth"
    )]
    EkuMissingServerOrClientAuth {
        presented: SpiffeId,
        missing: &'static str,
    },
    #[error("the private key does not match the public key of the leaf certificate of {presented}")]
    KeyMismatch { presented: SpiffeId },
    #[error(
        "the certificate {serial} of {presented} was revoked by its CA; the workload must get a new SVID (bootstrap again)"
    )]
    Revoked { presented: SpiffeId, serial: String },
}

impl SvidError {
    /// A short, stable label for metrics and log fields (`handshake_failures{reason="expired"}`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::EmptyChain => "no_certificate",
            Self::Malformed { .. } => "malformed",
            Self::NoUriSan => "no_uri_san",
            Self::MultipleUriSans(_) => "multiple_uri_sans",
            Self::NotSpiffeUri { .. } => "not_spiffe_uri",
            Self::NoBundleForTrustDomain { .. } => "unknown_trust_domain",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::UnknownIssuer { .. } => "unknown_issuer",
            Self::ChainInvalid { .. } => "chain_invalid",
            Self::CaAsLeaf { .. } => "ca_as_leaf",
            Self::KeyCertSign { .. } => "key_cert_sign",
            Self::MissingDigitalSignature { .. } => "no_digital_signature",
            Self::KeyUsageMissing { .. } => "no_key_usage",
            Self::KeyUsageNotCritical { .. } => "key_usage_not_critical",
            Self::EkuMissingServerOrClientAuth { .. } => "eku",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::Revoked { .. } => "revoked",
        }
    }

    /// The SPIFFE ID the refused certificate claimed, when it named one.
    pub fn presented(&self) -> Option<&SpiffeId> {
        match self {
            Self::EmptyChain
            | Self::Malformed { .. }
            | Self::NoUriSan
            | Self::MultipleUriSans(_)
            | Self::NotSpiffeUri { .. } => None,
            Self::NoBundleForTrustDomain { presented, .. }
            | Self::Revoked { presented, .. }
            | Self::Expired { presented, .. }
            | Self::NotYetValid { presented, .. }
            | Self::UnknownIssuer { presented }
            | Self::ChainInvalid { presented, .. }
            | Self::CaAsLeaf { presented }
            | Self::KeyCertSign { presented }
            | Self::MissingDigitalSignature { presented }
            | Self::KeyUsageMissing { presented }
            | Self::KeyUsageNotCritical { presented }
            | Self::EkuMissingServerOrClientAuth { presented, .. }
            | Self::KeyMismatch { presented } => Some(presented),
        }
    }
}

/// Errors of the identity crate other than a refused peer chain (which is [`SvidError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error(transparent)]
    Svid(#[from] SvidError),
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("cannot read {what} as PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{what} contains no certificate; expected at least one `BEGIN CERTIFICATE` block")]
    NoCertificate { what: &'static str },
    #[error("no private key found; expected one PKCS#8, SEC1 or PKCS#1 `PRIVATE KEY` block")]
    NoPrivateKey,
    #[error(
        "the private key is not usable for TLS signatures (use ECDSA P-256/P-384, Ed25519 or RSA): {0}"
    )]
    UnsupportedKey(#[source] rustls::Error),
    #[error(
        "trust bundle for {trust_domain} holds no root certificate; a bundle needs at least one"
    )]
    EmptyBundle { trust_domain: TrustDomain },
    #[error(
        "root certificate {index} of the bundle for {trust_domain} is not a usable trust anchor: {reason}"
    )]
    BadRoot {
        trust_domain: TrustDomain,
        index: usize,
        #[source]
        reason: webpki::Error,
    },
    #[error(
        "root certificate {index} of the bundle for {trust_domain} has a key meshguard can neither check nor publish ({reason}); use an EC (P-256, P-384 or P-521), RSA or Ed25519 root"
    )]
    UnsupportedRootKey {
        trust_domain: TrustDomain,
        index: usize,
        reason: String,
    },
    #[error("the SPIFFE bundle (JWK Set) for {trust_domain} is invalid: {reason}")]
    BundleJson {
        trust_domain: TrustDomain,
        reason: String,
    },
    #[error("trust domain {0} appears twice in the bundle set; give each trust domain one bundle")]
    DuplicateTrustDomain(TrustDomain),
    #[error(
        "the server presented {presented}, but this connection expects {expected}; check the target address or the `expect` list"
    )]
    UnexpectedPeer {
        expected: String,
        presented: SpiffeId,
    },
    #[error("the connection has no verified peer certificate, so it has no SPIFFE ID")]
    NoPeerIdentity,
    #[error(
        "a TLS server needs an SVID to present; build the profile with TlsProfile::new(credentials)"
    )]
    ServerWithoutIdentity,
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("cannot access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity source {source_name} failed: {reason}")]
    Source { source_name: String, reason: String },
}

/// Formats a certificate time for humans (RFC 3339, UTC).
pub(crate) fn show_time(t: UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    match jiff::Timestamp::from_second(secs) {
        Ok(ts) => ts.to_string(),
        Err(_) => format!("{secs}s after the epoch"),
    }
}

fn join(domains: &[TrustDomain]) -> String {
    if domains.is_empty() {
        return "none".to_owned();
    }
    domains
        .iter()
        .map(TrustDomain::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiry_names_both_times_in_rfc3339() {
        let err = SvidError::Expired {
            presented: SpiffeId::parse("spiffe://bank.example/a").unwrap(),
            not_after: UnixTime::since_unix_epoch(Duration::from_secs(0)),
            now: UnixTime::since_unix_epoch(Duration::from_secs(86_400)),
        };
        let text = err.to_string();
        assert!(text.contains("1970-01-01T00:00:00Z"), "{text}");
        assert!(text.contains("1970-01-02T00:00:00Z"), "{text}");
    }

    #[test]
    fn missing_bundle_lists_known_domains() {
        let err = SvidError::NoBundleForTrustDomain {
            presented: SpiffeId::parse("spiffe://evil.example/x").unwrap(),
            known: vec![TrustDomain::parse("bank.example").unwrap()],
        };
        let text = err.to_string();
        assert!(text.contains("evil.example"), "{text}");
        assert!(text.contains("known: bank.example"), "{text}");
    }
}
