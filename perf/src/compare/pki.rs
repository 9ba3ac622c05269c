//! A throwaway trust domain for one `perf compare` run: a root made here with rcgen and one
//! X509-SVID per party (the load generator, each meshguard sidecar, each peer proxy), written as
//! PEM files into the run's directory. It is not the meshguard CA on purpose: `perf` depends on
//! `identity` only, and what is measured is the data path, not issuance.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The trust domain every party of a comparison belongs to.
pub const TRUST_DOMAIN: &str = "perf.meshguard.test";

/// The PEM files of one party: its SVID chain, its key and the bundle.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    pub spiffe_id: String,
    pub chain: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// The root of the run's trust domain; issues SVIDs into `dir`.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    bundle: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Pki {
    /// A fresh P-256 root, written to `dir/bundle.pem`.
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let key = KeyPair::generate().context("could not generate the root key")?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "meshguard perf compare root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![uri(&format!("spiffe://{TRUST_DOMAIN}"))?];
        params.not_before = (now - DAY).into();
        params.not_after = (now + 30 * DAY).into();
        let root = params
            .self_signed(&key)
            .context("could not self-sign the root")?;
        let bundle = dir.join("bundle.pem");
        write(&bundle, &root.pem())?;
        Ok(Pki {
            issuer: Issuer::new(params, key),
            dir: dir.to_owned(),
            bundle,
        })
    }

    /// An SVID for `spiffe://perf.meshguard.test/<name>`, valid for a day: the run outlasts no
    /// rotation, so rotation costs stay out of the figures.
    pub fn issue(&self, name: &str) -> anyhow::Result<SvidFiles> {
        let now = SystemTime::now();
        let signed = self.sign(name, now - Duration::from_secs(300), now + DAY)?;
        let chain = self.dir.join(format!("{name}.pem"));
        let key_path = self.dir.join(format!("{name}.key"));
        write(&chain, &signed.chain_pem)?;
        write(&key_path, &signed.key_pem)?;
        Ok(SvidFiles {
            spiffe_id: signed.spiffe_id,
            chain,
            key: key_path,
            bundle: self.bundle.clone(),
        })
    }

    /// A new key and an SVID for `spiffe://perf.meshguard.test/<name>` valid from `not_before` to
    /// `not_after`, as PEM, written nowhere: the soak rotates and forges with these.
    pub fn sign(
        &self,
        name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> anyhow::Result<SignedSvid> {
        let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/{name}");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![uri(&spiffe_id)?];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate().context("could not generate an SVID key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("could not sign the SVID of {spiffe_id}"))?;
        Ok(SignedSvid {
            spiffe_id,
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            leaf_der: cert.der().to_vec(),
        })
    }
}

/// An SVID and its key in memory.
#[derive(Debug, Clone)]
pub struct SignedSvid {
    pub spiffe_id: String,
    pub chain_pem: String,
    pub key_pem: String,
    /// The leaf certificate as DER, to recognise it when a server presents it.
    pub leaf_der: Vec<u8>,
}

fn uri(s: &str) -> anyhow::Result<SanType> {
    Ok(SanType::URI(
        s.try_into()
            .with_context(|| format!("{s} is not a valid URI SAN"))?,
    ))
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("could not write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshguard_identity::{
        BundleSet, TrustBundle, TrustDomain, X509Svid, unix_time, validate_svid,
    };

    #[test]
    fn issued_svids_validate_against_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path()).unwrap();
        let files = pki.issue("client").unwrap();
        let svid = X509Svid::from_pem(
            &std::fs::read(&files.chain).unwrap(),
            &std::fs::read(&files.key).unwrap(),
        )
        .unwrap();
        let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
        let bundle = TrustBundle::from_pem(td, &std::fs::read(&files.bundle).unwrap()).unwrap();
        let id = validate_svid(
            svid.chain(),
            &BundleSet::single(bundle),
            unix_time(SystemTime::now()),
        )
        .unwrap();
        assert_eq!(id.to_string(), files.spiffe_id);
    }
}
