//! A throwaway CA for tests (feature `test-util`), built on rcgen: it issues good X.509-SVIDs and
//! every kind of bad one the negative tests need, so each SVID rule is exercised by a real
//! certificate rather than a mock.
//!
//! It panics on rcgen failures: it is a test fixture, and a CA that cannot sign is a broken test.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::bundle::{BundleSet, TrustBundle, der_to_pem};
use crate::credentials::{Credentials, RotatingCredentials};
use crate::error::IdentityError;
use crate::spiffe_id::TrustDomain;
use crate::svid::X509Svid;

const HOUR: Duration = Duration::from_secs(3600);

/// A CA for one trust domain, held in memory: a root, or an intermediate below one.
pub struct TestCa {
    trust_domain: TrustDomain,
    /// The trust anchor: this CA's own certificate if it is a root, else its root's.
    root: CertificateDer<'static>,
    /// Certificates issued SVIDs carry after the leaf: this intermediate and its parents, if any.
    intermediates: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate chain and key as issued, possibly violating SVID rules on purpose.
#[derive(Debug)]
pub struct IssuedSvid {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub chain_pem: String,
    pub key_pem: String,
}

/// Paths written by [`IssuedSvid::write_to_dir`] (names as `meshguard ca issue` writes them).
#[derive(Clone, Debug)]
pub struct SvidFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// What a good SVID should look like: ID path, extra DNS SANs, validity.
#[derive(Clone, Debug)]
pub struct SvidSpec {
    pub path: String,
    pub dns_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The kinds of bad certificate the negative tests need; each breaks exactly one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadSvid {
    Expired,
    NotYetValid,
    /// A valid SVID of `other.example`, issued by that trust domain's own CA.
    OtherTrustDomain,
    TwoUriSans,
    NoUriSan,
    /// A CA certificate (cA=true, keyCertSign) carrying a SPIFFE ID, used as the leaf.
    CaAsLeaf,
    NoKeyUsage,
    /// Issued for our trust domain by a CA that is not in our bundle.
    UnknownIssuer,
    KeyUsageNotCritical,
    /// A non-CA leaf that nevertheless has keyCertSign.
    KeyCertSign,
    NoDigitalSignature,
    /// EKU lists serverAuth only.
    EkuServerAuthOnly,
}

// === impl TestCa ===

impl TestCa {
    /// A fresh root for `trust_domain` (e.g. `"bank.example"`), valid from a day ago for ten years.
    pub fn new(trust_domain: &str) -> Self {
        Self::named(trust_domain, &format!("meshguard test CA {trust_domain}"))
    }

    /// As [`Self::new`] with a chosen subject common name (two CAs of one trust domain with the
    /// same name are an impostor pair: same issuer name, different key).
    pub fn named(trust_domain: &str, common_name: &str) -> Self {
        let trust_domain = TrustDomain::parse(trust_domain).expect("test CA: bad trust domain");
        let key = KeyPair::generate().expect("test CA: key generation");
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![uri(&format!("spiffe://{trust_domain}"))];
        params.serial_number = Some(random_serial());
        params.not_before = (now - 24 * HOUR).into();
        params.not_after = (now + 3650 * 24 * HOUR).into();
        let root = params.self_signed(&key).expect("test CA: self-sign");
        Self {
            trust_domain,
            root: root.der().clone(),
            intermediates: Vec::new(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one; SVIDs it issues carry it after the leaf, and the
    /// bundle stays the root's.
    pub fn intermediate(&self, common_name: &str) -> Self {
        let key = KeyPair::generate().expect("test CA: key generation");
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - 24 * HOUR).into();
        params.not_after = (now + 365 * 24 * HOUR).into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("test CA: sign intermediate");
        let mut intermediates = vec![cert.der().clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Self {
            trust_domain: self.trust_domain.clone(),
            root: self.root.clone(),
            intermediates,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(self.trust_domain.clone(), vec![self.root.clone()])
            .expect("test CA: own root is a trust anchor")
    }

    pub fn bundle_set(&self) -> BundleSet {
        BundleSet::single(self.bundle())
    }

    pub fn bundle_pem(&self) -> String {
        self.bundle().to_pem()
    }

    /// A good SVID for `spiffe://<td><path>`, valid from 5 minutes ago for an hour.
    pub fn issue(&self, path: &str) -> IssuedSvid {
        self.issue_with(&SvidSpec::new(path))
    }

    /// A good SVID as described by `spec`.
    pub fn issue_with(&self, spec: &SvidSpec) -> IssuedSvid {
        let mut params = self.leaf_params(&spec.path);
        params.subject_alt_names.extend(
            spec.dns_names
                .iter()
                .map(|n| SanType::DnsName(n.clone().try_into().expect("test CA: DNS name"))),
        );
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        self.sign(&params)
    }

    /// An SVID broken in the given way (see [`BadSvid`]).
    pub fn issue_bad(&self, bad: BadSvid, path: &str) -> IssuedSvid {
        let now = SystemTime::now();
        let mut params = self.leaf_params(path);
        match bad {
            BadSvid::Expired => {
                params.not_before = (now - 2 * HOUR).into();
                params.not_after = (now - HOUR).into();
            }
            BadSvid::NotYetValid => {
                params.not_before = (now + HOUR).into();
                params.not_after = (now + 2 * HOUR).into();
            }
            BadSvid::OtherTrustDomain => return TestCa::new("other.example").issue(path),
            BadSvid::UnknownIssuer => {
                let rogue = format!("rogue CA {}", self.trust_domain);
                return TestCa::named(self.trust_domain.as_str(), &rogue).issue(path);
            }
            BadSvid::TwoUriSans => params.subject_alt_names.push(uri(&format!(
                "spiffe://{}/second/identity",
                self.trust_domain
            ))),
            BadSvid::NoUriSan => {
                params.subject_alt_names = vec![SanType::DnsName(
                    "workload.test".try_into().expect("test CA: DNS name"),
                )];
            }
            BadSvid::CaAsLeaf => {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                params.extended_key_usages.clear();
            }
            BadSvid::NoKeyUsage => params.key_usages.clear(),
            BadSvid::KeyUsageNotCritical => {
                params.key_usages.clear();
                // keyUsage (2.5.29.15) = BIT STRING { digitalSignature }, written non-critical.
                let mut ext = CustomExtension::from_oid_content(
                    &[2, 5, 29, 15],
                    vec![0x03, 0x02, 0x07, 0x80],
                );
                ext.set_criticality(false);
                params.custom_extensions.push(ext);
            }
            BadSvid::KeyCertSign => params.key_usages.push(KeyUsagePurpose::KeyCertSign),
            BadSvid::NoDigitalSignature => {
                params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
            }
            BadSvid::EkuServerAuthOnly => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
        }
        self.sign(&params)
    }

    /// A certificate shaped like a good SVID but naming any `spiffe_id` (another trust domain's, say),
    /// signed by this CA: the forgery a federated partner's CA could attempt.
    pub fn issue_claiming(&self, spiffe_id: &str) -> IssuedSvid {
        let mut params = self.leaf_params("");
        params.subject_alt_names = vec![uri(spiffe_id)];
        self.sign(&params)
    }

    /// Good credentials (SVID + this CA's bundle) for `path`.
    pub fn credentials(&self, path: &str) -> Credentials {
        let svid = self.issue(path).to_svid().expect("test CA: good SVID");
        Credentials::new(svid, self.bundle_set())
    }

    /// Rotating credentials starting from a good SVID for `path`.
    pub fn rotating(&self, path: &str) -> RotatingCredentials {
        RotatingCredentials::new(self.credentials(path)).expect("test CA: good credentials")
    }

    fn leaf_params(&self, path: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![uri(&format!("spiffe://{}{path}", self.trust_domain))];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = (now + HOUR).into();
        params
    }

    fn sign(&self, params: &CertificateParams) -> IssuedSvid {
        let key = KeyPair::generate().expect("test CA: key generation");
        let cert = params.signed_by(&key, &self.issuer).expect("test CA: sign");
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        let chain_pem = chain.iter().map(|c| der_to_pem(c)).collect();
        IssuedSvid {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            chain_pem,
            key_pem: key.serialize_pem(),
        }
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("trust_domain", &self.trust_domain.as_str())
            .finish_non_exhaustive()
    }
}

// === impl IssuedSvid ===

impl IssuedSvid {
    /// Parses the issued chain and key as an [`X509Svid`] (fails for the bad kinds it must).
    pub fn to_svid(&self) -> Result<X509Svid, IdentityError> {
        X509Svid::from_der(self.chain.clone(), self.key.clone_key())
    }

    /// The chain and key, as the `dangerous_*` configs take them.
    pub fn cert_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }

    /// Writes `svid.pem`, `svid.key` (mode 0600) and `bundle.pem` into `dir`, for curl and openssl.
    pub fn write_to_dir(&self, dir: &Path, bundle_pem: &str) -> std::io::Result<SvidFiles> {
        let files = SvidFiles {
            cert: dir.join("svid.pem"),
            key: dir.join("svid.key"),
            bundle: dir.join("bundle.pem"),
        };
        fs::write(&files.cert, &self.chain_pem)?;
        fs::write(&files.bundle, bundle_pem)?;
        let mut key = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&files.key)?;
        key.write_all(self.key_pem.as_bytes())?;
        Ok(files)
    }
}

// === impl SvidSpec ===

impl SvidSpec {
    /// ID path (e.g. `/ns/ledger/sa/ledger`), valid from 5 minutes ago for an hour.
    pub fn new(path: &str) -> Self {
        let now = SystemTime::now();
        Self {
            path: path.to_owned(),
            dns_names: Vec::new(),
            not_before: now - Duration::from_secs(300),
            not_after: now + HOUR,
        }
    }

    /// Adds a DNS SAN (e.g. `localhost`, for clients that check host names, like curl).
    pub fn dns(mut self, name: &str) -> Self {
        self.dns_names.push(name.to_owned());
        self
    }

    pub fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().expect("test CA: URI SAN is ASCII"))
}

/// 128 random bits, top bit cleared so the DER INTEGER stays positive.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}
