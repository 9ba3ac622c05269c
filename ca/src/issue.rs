//! Certificates: the self-signed root and X.509-SVID leaves, built by rcgen and signed by the CA key.
//!
//! Leaves follow the X509-SVID spec: exactly one URI SAN (the SPIFFE ID), `cA=false` written out,
//! key usage `digitalSignature` only and critical, EKU serverAuth + clientAuth, a random 128-bit
//! serial, `not_before` backdated for clock skew. What a CSR asks for beyond its key and its SPIFFE
//! ID is never copied into the certificate: the CA decides the extensions.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshguard_identity::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;

use crate::error::{CaError, Refusal};
use crate::key::{RcgenSigner, SigningKey, rcgen_error};

/// How far `not_before` is set in the past, so peers with slightly slow clocks accept a new SVID.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// How far `not_before` is backdated for a certificate living `ttl`: [`BACKDATE`], but at most a
/// tenth of the lifetime. Renewal happens at half of the whole validity, so a backdate near the TTL
/// would put the renewal time in the past at issuance and make workloads renew in a loop.
pub fn backdate_for(ttl: Duration) -> Duration {
    BACKDATE.min(ttl / 10)
}
/// When a certificate valid from `not_before` to `not_after` was issued: `not_before` plus the
/// backdate [`backdate_for`] gave it (the inverse of `lifetime = ttl + min(BACKDATE, ttl / 10)`).
pub fn issued_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let backdate = if lifetime >= BACKDATE * 11 {
        BACKDATE
    } else {
        lifetime / 11
    };
    not_before + backdate
}

/// Default SVID lifetime (SPIRE's default too).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Lifetimes the CA grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    /// Used when a request names no lifetime.
    pub default_ttl: Duration,
    /// Requests for longer are refused.
    pub max_ttl: Duration,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_TTL,
            max_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub spiffe_id: SpiffeId,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_after: SystemTime,
}

impl Issued {
    /// The certificate in PEM.
    pub fn pem(&self) -> String {
        pem_cert(&self.der)
    }
}

/// A parsed, signature-checked CSR: the key to certify and the SPIFFE ID it asks for.
#[derive(Debug)]
pub struct Csr {
    pub spiffe_id: SpiffeId,
    pub public_key: rcgen::PublicKey,
}

/// The issuing side of the CA: its key, root certificate and lifetime policy.
#[derive(Debug)]
pub struct CaIssuer {
    trust_domain: TrustDomain,
    key: Arc<dyn SigningKey>,
    root: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, RcgenSigner>,
    ttl: TtlPolicy,
}

impl CaIssuer {
    /// Creates the self-signed root for `trust_domain` with `key`, valid for `lifetime` from `now`.
    pub fn create_root(
        key: Arc<dyn SigningKey>,
        trust_domain: &TrustDomain,
        root_id: Option<&SpiffeId>,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "meshguard");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("meshguard CA {}", trust_domain.as_str()),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now));
        params.not_after = to_offset(now + lifetime);
        params.serial_number = Some(random_serial()?);
        if let Some(id) = root_id {
            let uri = rcgen::string::Ia5String::try_from(id.as_str())
                .map_err(|e| CaError::Certificate(e.to_string()))?;
            params.subject_alt_names = vec![SanType::URI(uri)];
        }
        let cert = params.self_signed(&RcgenSigner(key)).map_err(rcgen_error)?;
        Ok(cert.der().clone())
    }

    /// The CA over an existing root certificate, which must belong to `key`.
    pub fn new(
        trust_domain: TrustDomain,
        key: Arc<dyn SigningKey>,
        root: CertificateDer<'static>,
        ttl: TtlPolicy,
    ) -> Result<Self, CaError> {
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&root, RcgenSigner(key.clone())).map_err(|e| {
                CaError::Certificate(format!("the root certificate cannot be read: {e}"))
            })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&root).map_err(|e| {
            CaError::Certificate(format!("the root certificate cannot be read: {e}"))
        })?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Certificate(
                "the root certificate does not belong to the configured key; was the key replaced?"
                    .into(),
            ));
        }
        Ok(Self {
            trust_domain,
            key,
            root,
            issuer,
            ttl,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    pub fn key(&self) -> &Arc<dyn SigningKey> {
        &self.key
    }

    pub fn ttl(&self) -> TtlPolicy {
        self.ttl
    }

    /// Issues an SVID for `spiffe_id` over `public_key`; `dns_names` may hold IP addresses too.
    pub fn issue(
        &self,
        public_key: &impl PublicKeyData,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        if !spiffe_id.is_member_of(&self.trust_domain) {
            return Err(Refusal::ForeignTrustDomain {
                id: spiffe_id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            }
            .into());
        }
        let ttl = ttl.unwrap_or(self.ttl.default_ttl);
        if ttl > self.ttl.max_ttl {
            return Err(Refusal::TtlTooLong {
                requested_secs: ttl.as_secs(),
                max_secs: self.ttl.max_ttl.as_secs(),
            }
            .into());
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "meshguard");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let uri = rcgen::string::Ia5String::try_from(spiffe_id.as_str())
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for name in dns_names {
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                params.subject_alt_names.push(SanType::IpAddress(ip));
                continue;
            }
            let dns = rcgen::string::Ia5String::try_from(name.as_str())
                .ok()
                .filter(|_| valid_dns_name(name))
                .ok_or_else(|| Refusal::BadDnsName(name.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        let not_after = now + ttl;
        params.not_before = to_offset(now.checked_sub(backdate_for(ttl)).unwrap_or(now));
        params.not_after = to_offset(not_after);
        let serial = random_serial()?;
        let serial_hex = hex::encode_upper(serial.as_ref());
        params.serial_number = Some(serial);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(rcgen_error)?;
        Ok(Issued {
            der: cert.der().clone(),
            spiffe_id: spiffe_id.clone(),
            serial: serial_hex,
            // Certificates carry whole seconds.
            not_after: UNIX_EPOCH
                + Duration::from_secs(
                    not_after
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                ),
        })
    }

    /// Issues an SVID for a CSR.
    pub fn issue_for_csr(
        &self,
        csr: &Csr,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        self.issue(&csr.public_key, &csr.spiffe_id, &[], ttl, now)
    }
}

/// Parses a CSR (PEM or DER), checks its self-signature, and reads the one SPIFFE ID it asks for.
pub fn parse_csr(bytes: &[u8]) -> Result<Csr, Refusal> {
    let params = if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Refusal::MalformedCsr("the PEM is not text".into()))?;
        CertificateSigningRequestParams::from_pem(text)
    } else {
        CertificateSigningRequestParams::from_der(&bytes.to_vec().into())
    }
    .map_err(|e| Refusal::MalformedCsr(e.to_string()))?;
    let mut uris = Vec::new();
    for san in &params.params.subject_alt_names {
        match san {
            SanType::URI(uri) => uris.push(uri.as_str().to_owned()),
            SanType::DnsName(name) => {
                return Err(Refusal::MalformedCsr(format!(
                    "it asks for the DNS name `{}`; DNS names are only issued by the operator (`meshguard ca issue --dns`)",
                    name.as_str()
                )));
            }
            other => {
                return Err(Refusal::MalformedCsr(format!(
                    "it asks for a SAN the CA does not issue ({other:?})"
                )));
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(Refusal::BadSpiffeId(format!(
            "the CSR has {} URI SANs",
            uris.len()
        )));
    };
    let spiffe_id = SpiffeId::parse(uri).map_err(|e| Refusal::BadSpiffeId(e.to_string()))?;
    Ok(Csr {
        spiffe_id,
        public_key: params.public_key,
    })
}

/// A certificate in PEM.
pub fn pem_cert(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::with_capacity(b64.len() + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| CaError::Certificate("the system RNG failed".into()))?;
    // A leading zero octet would shorten the DER integer; keep all 128 bits significant.
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// rcgen takes `time::OffsetDateTime`.
fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_half_life_lies_after_issuance_for_any_ttl() {
        for secs in [20, 30, 90, 600, 3600, 86_400] {
            let ttl = Duration::from_secs(secs);
            let backdate = backdate_for(ttl);
            // The half-life point, counted from the backdated not_before, minus the backdate.
            let renew_after_issuance = (ttl + backdate) / 2 - backdate;
            assert!(
                renew_after_issuance >= ttl * 45 / 100,
                "ttl {secs}s renews {renew_after_issuance:?} after issuance"
            );
        }
        assert_eq!(backdate_for(Duration::from_secs(3600)), BACKDATE);
    }
}
