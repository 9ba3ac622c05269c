//! Trust bundles: the root certificates of one trust domain, and sets of them for federation.
//!
//! A [`TrustBundle`] is read from PEM or from the SPIFFE bundle format (a JWK Set whose keys carry
//! `use: "x509-svid"` and the root in `x5c`) and written back in both. The webpki trust anchors are
//! parsed once at construction, because verifiers consult them on every handshake.
//!
//! A [`BundleSet`] keeps several trust domains apart: a peer is only ever checked against the
//! bundle of its own trust domain, so a federated partner's CA can never vouch for our own IDs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde::{Deserialize, Serialize};

use crate::error::IdentityError;
use crate::spiffe_id::TrustDomain;

/// The `use` value of JWKs that carry X.509-SVID roots in a SPIFFE bundle.
const X509_SVID_USE: &str = "x509-svid";

/// The roots of one trust domain.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    sequence: Option<u64>,
    refresh_hint: Option<u64>,
    /// Serials (upper-case hex) of certificates this domain's CA revoked: refused although they
    /// chain to a root. Published by the meshguard CA (`GET /v1/revoked`).
    revoked: Arc<BTreeSet<String>>,
}

/// Bundles of several trust domains, kept apart (never merged into one root store).
#[derive(Clone, Default)]
pub struct BundleSet {
    by_domain: BTreeMap<String, TrustBundle>,
}

// === impl TrustBundle ===

impl TrustBundle {
    /// Builds a bundle from DER roots; each must parse as a trust anchor and at least one is needed.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        if roots.is_empty() {
            return Err(IdentityError::EmptyBundle { trust_domain });
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for (index, root) in roots.iter().enumerate() {
            match webpki::anchor_from_trusted_cert(root) {
                Ok(anchor) => anchors.push(anchor.to_owned()),
                Err(reason) => {
                    return Err(IdentityError::BadRoot {
                        trust_domain,
                        index,
                        reason,
                    });
                }
            }
            // A bundle is also published (`/v1/bundle?format=spiffe`, federation), so a root whose
            // key has no JWK form is refused here rather than failing at the first publication.
            if let Err(reason) = jwk_for_root(root) {
                return Err(IdentityError::UnsupportedRootKey {
                    trust_domain,
                    index,
                    reason,
                });
            }
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors,
            sequence: None,
            refresh_hint: None,
            revoked: Arc::default(),
        })
    }

    /// Reads every `CERTIFICATE` block of a PEM file as a root of `trust_domain`.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, IdentityError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Pem {
                what: "the trust bundle",
                reason: e.to_string(),
            })?;
        if roots.is_empty() {
            return Err(IdentityError::NoCertificate {
                what: "the trust bundle",
            });
        }
        Self::new(trust_domain, roots)
    }

    /// Writes the roots as concatenated PEM `CERTIFICATE` blocks.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|der| der_to_pem(der)).collect()
    }

    /// Reads the SPIFFE bundle format (RFC 7517 JWK Set). Keys with another `use` (JWT-SVID keys)
    /// are skipped; each `x509-svid` key must carry exactly one certificate in `x5c`.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::BundleJson {
            trust_domain: trust_domain.clone(),
            reason,
        };
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let mut roots = Vec::new();
        for (i, key) in set.keys.iter().enumerate() {
            if key.key_use.as_deref() != Some(X509_SVID_USE) {
                continue;
            }
            let [cert] = key.x5c.as_slice() else {
                return Err(bad(format!(
                    "key {i} (use x509-svid) must have exactly one certificate in x5c, found {}",
                    key.x5c.len()
                )));
            };
            let der = STANDARD
                .decode(cert)
                .map_err(|e| bad(format!("key {i}: x5c is not base64: {e}")))?;
            roots.push(CertificateDer::from(der));
        }
        if roots.is_empty() {
            return Err(bad("it holds no key with use \"x509-svid\"".to_owned()));
        }
        let mut bundle = Self::new(trust_domain, roots)?;
        bundle.sequence = set.spiffe_sequence;
        bundle.refresh_hint = set.spiffe_refresh_hint;
        Ok(bundle)
    }

    /// Writes the SPIFFE bundle format: one JWK per root with its public key parameters and `x5c`.
    pub fn to_spiffe_json(&self) -> Result<String, IdentityError> {
        let keys = self
            .roots
            .iter()
            .enumerate()
            .map(|(i, der)| {
                jwk_for_root(der).map_err(|reason| IdentityError::BundleJson {
                    trust_domain: self.trust_domain.clone(),
                    reason: format!("root {i}: {reason}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let set = JwkSet {
            keys,
            spiffe_sequence: self.sequence,
            spiffe_refresh_hint: self.refresh_hint,
        };
        serde_json::to_string_pretty(&set).map_err(|e| IdentityError::BundleJson {
            trust_domain: self.trust_domain.clone(),
            reason: e.to_string(),
        })
    }

    /// Sets the bundle's `spiffe_sequence` (incremented by the CA on every change).
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence = Some(sequence);
        self
    }

    /// Replaces the revoked serials (hex, any case).
    pub fn with_revoked(mut self, serials: impl IntoIterator<Item = String>) -> Self {
        self.revoked = Arc::new(
            serials
                .into_iter()
                .map(|s| s.trim().to_ascii_uppercase())
                .collect(),
        );
        self
    }

    /// Whether the certificate with `serial` (upper-case hex) was revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.contains(serial)
    }

    /// How many serials are revoked.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// Sets the bundle's `spiffe_refresh_hint` in seconds.
    pub fn with_refresh_hint(mut self, seconds: u64) -> Self {
        self.refresh_hint = Some(seconds);
        self
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors, parsed once at construction.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    pub fn refresh_hint(&self) -> Option<u64> {
        self.refresh_hint
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain.as_str())
            .field("roots", &self.roots.len())
            .field("sequence", &self.sequence)
            .field("refresh_hint", &self.refresh_hint)
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain
            && self.roots == other.roots
            && self.sequence == other.sequence
            && self.refresh_hint == other.refresh_hint
            && self.revoked == other.revoked
    }
}

// === impl BundleSet ===

impl BundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding the bundle of a single trust domain (the common, non-federated case).
    pub fn single(bundle: TrustBundle) -> Self {
        let mut set = Self::new();
        set.insert(bundle);
        set
    }

    /// Builds a set from bundles; a trust domain given twice is an error, not a merge.
    pub fn from_bundles(
        bundles: impl IntoIterator<Item = TrustBundle>,
    ) -> Result<Self, IdentityError> {
        let mut set = Self::new();
        for bundle in bundles {
            if set.get(bundle.trust_domain()).is_some() {
                return Err(IdentityError::DuplicateTrustDomain(
                    bundle.trust_domain().clone(),
                ));
            }
            set.insert(bundle);
        }
        Ok(set)
    }

    /// Adds or replaces the bundle of its trust domain; returns the one it replaced.
    pub fn insert(&mut self, bundle: TrustBundle) -> Option<TrustBundle> {
        self.by_domain
            .insert(bundle.trust_domain().as_str().to_owned(), bundle)
    }

    pub fn remove(&mut self, trust_domain: &TrustDomain) -> Option<TrustBundle> {
        self.by_domain.remove(trust_domain.as_str())
    }

    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.get_str(trust_domain.as_str())
    }

    /// Looks a bundle up by trust-domain name without allocating (the handshake path).
    pub fn get_str(&self, trust_domain: &str) -> Option<&TrustBundle> {
        self.by_domain.get(trust_domain)
    }

    pub fn trust_domains(&self) -> Vec<TrustDomain> {
        self.by_domain
            .values()
            .map(|b| b.trust_domain().clone())
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.by_domain.values()
    }

    pub fn len(&self) -> usize {
        self.by_domain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

impl fmt::Debug for BundleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.by_domain.values()).finish()
    }
}

impl PartialEq for BundleSet {
    fn eq(&self, other: &Self) -> bool {
        self.by_domain == other.by_domain
    }
}

// === SPIFFE bundle format ===

#[derive(Serialize, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

/// One JWK. Unknown members are ignored on read, as RFC 7517 requires.
#[derive(Serialize, Deserialize, Default)]
struct Jwk {
    kty: String,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    key_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    x5c: Vec<String>,
}

/// Fills the JWK's key parameters from the root's SubjectPublicKeyInfo.
fn jwk_for_root(der: &CertificateDer<'_>) -> Result<Jwk, String> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
        OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    };
    use x509_parser::public_key::PublicKey;

    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let spki = cert.public_key();
    let mut jwk = Jwk {
        key_use: Some(X509_SVID_USE.to_owned()),
        x5c: vec![STANDARD.encode(der.as_ref())],
        ..Jwk::default()
    };
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let (crv, len) = match curve {
            Some(oid) if oid == OID_EC_P256 => ("P-256", 32),
            Some(oid) if oid == OID_NIST_EC_P384 => ("P-384", 48),
            // rustls verifies P-521 signatures, so such a root is usable and must be publishable.
            Some(oid) if oid == OID_NIST_EC_P521 => ("P-521", 66),
            _ => return Err("unsupported elliptic curve".to_owned()),
        };
        let point = spki.subject_public_key.data.as_ref();
        if point.len() != 1 + 2 * len || point[0] != 0x04 {
            return Err("EC public key is not an uncompressed point".to_owned());
        }
        jwk.kty = "EC".to_owned();
        jwk.crv = Some(crv.to_owned());
        jwk.x = Some(URL_SAFE_NO_PAD.encode(&point[1..=len]));
        jwk.y = Some(URL_SAFE_NO_PAD.encode(&point[1 + len..]));
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err("malformed RSA public key".to_owned());
        };
        jwk.kty = "RSA".to_owned();
        jwk.n = Some(URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.modulus)));
        jwk.e = Some(URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.exponent)));
    } else if *alg == OID_SIG_ED25519 {
        jwk.kty = "OKP".to_owned();
        jwk.crv = Some("Ed25519".to_owned());
        jwk.x = Some(URL_SAFE_NO_PAD.encode(spki.subject_public_key.data.as_ref()));
    } else {
        return Err(format!("unsupported public key algorithm {alg}"));
    }
    Ok(jwk)
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// PEM-encodes one DER certificate (64-column base64, as OpenSSL writes it).
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
