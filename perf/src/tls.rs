//! Client TLS for the load generator, built only through identity's [`TlsProfile`]: TLS 1.3,
//! X25519MLKEM768 first, the server's SVID verified against the bundle and, when given, checked
//! against the expected SPIFFE ID. With a certificate and key it is mTLS; without, server-auth TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use meshguard_identity::{
    BundleSet, Credentials, ExpectedIdentities, RotatingCredentials, SpiffeId, TlsProfile,
    TrustBundle, TrustDomain, X509Svid,
};
use rustls::ClientConfig;

/// The TLS options every client mode takes (`--cert --key --bundle --expect-id`).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Our SVID chain (PEM); with `key`, makes the connection mutual TLS.
    pub cert: Option<PathBuf>,
    /// Our SVID's private key (PEM).
    pub key: Option<PathBuf>,
    /// Roots of the server's trust domain (PEM or SPIFFE JWK Set); turns TLS on.
    pub bundle: Option<PathBuf>,
    /// The SPIFFE ID (or `spiffe://td/prefix/*`) the server must present.
    pub expect_id: Option<String>,
}

impl TlsFiles {
    /// True when any TLS option was given.
    pub fn wants_tls(&self) -> bool {
        self.cert.is_some()
            || self.key.is_some()
            || self.bundle.is_some()
            || self.expect_id.is_some()
    }

    /// Builds the client config, offering `alpn`. Whether session resumption is kept is the
    /// caller's choice (`resume`): the profile enables it, handshake benchmarks may not want it.
    pub fn client_config(&self, alpn: &[&[u8]], resume: bool) -> anyhow::Result<Arc<ClientConfig>> {
        let bundle_path = self.bundle.as_deref().context(
            "TLS needs --bundle FILE (the trust bundle of the server's trust domain) to verify the server",
        )?;
        let expected = match &self.expect_id {
            Some(id) => Some(
                ExpectedIdentities::parse(&[id])
                    .with_context(|| format!("--expect-id {id:?} is not a SPIFFE ID"))?,
            ),
            None => None,
        };
        let profile = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let svid = X509Svid::from_pem(&read(cert, "certificate")?, &read(key, "key")?)
                    .with_context(|| {
                        format!(
                            "could not load the SVID from {} and {}",
                            cert.display(),
                            key.display()
                        )
                    })?;
                let bundle = read_bundle(bundle_path, svid.spiffe_id().trust_domain())?;
                let credentials =
                    RotatingCredentials::new(Credentials::new(svid, BundleSet::single(bundle)))
                        .context("the client SVID does not validate against --bundle now")?;
                TlsProfile::new(credentials)
            }
            (None, None) => {
                let trust_domain = match &self.expect_id {
                    Some(id) => SpiffeId::parse(id.trim_end_matches("/*"))
                        .with_context(|| format!("--expect-id {id:?} is not a SPIFFE ID"))?
                        .trust_domain(),
                    None => anyhow::bail!(
                        "TLS without a client certificate needs --expect-id to know the server's \
                         trust domain; or give --cert and --key for mTLS"
                    ),
                };
                let bundle = read_bundle(bundle_path, trust_domain)?;
                TlsProfile::without_identity(BundleSet::single(bundle))
            }
            _ => anyhow::bail!("--cert and --key go together: give both for mTLS, or neither"),
        };
        let profile = profile.with_alpn(alpn.iter().copied());
        let profile = match expected {
            Some(expected) => profile.expect(expected),
            None => profile,
        };
        let config = profile
            .client_config()
            .context("could not build the TLS client config")?;
        if resume {
            return Ok(config);
        }
        let mut config = Arc::unwrap_or_clone(config);
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// The options of a TLS-terminating server (the built-in upstream): SVID, key and bundle are all
/// required, and clients must present an SVID (optionally matching `expect_id`).
pub fn server_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (Some(cert), Some(key), Some(bundle)) = (&files.cert, &files.key, &files.bundle) else {
        anyhow::bail!("a TLS upstream needs all of --cert, --key and --bundle");
    };
    let svid =
        X509Svid::from_pem(&read(cert, "certificate")?, &read(key, "key")?).with_context(|| {
            format!(
                "could not load the SVID from {} and {}",
                cert.display(),
                key.display()
            )
        })?;
    let bundle = read_bundle(bundle, svid.spiffe_id().trust_domain())?;
    let credentials = RotatingCredentials::new(Credentials::new(svid, BundleSet::single(bundle)))
        .context("the server SVID does not validate against --bundle now")?;
    let mut profile = TlsProfile::new(credentials).with_alpn(alpn.iter().copied());
    if let Some(id) = &files.expect_id {
        let expected = ExpectedIdentities::parse(&[id])
            .with_context(|| format!("--expect-id {id:?} is not a SPIFFE ID"))?;
        profile = profile.expect(expected);
    }
    profile
        .server_config()
        .context("could not build the TLS server config")
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .with_context(|| format!("could not read the {what} file {}", path.display()))
}

/// A bundle file: a SPIFFE bundle (JWK Set, starts with `{`) or PEM certificates.
fn read_bundle(path: &Path, trust_domain: TrustDomain) -> anyhow::Result<TrustBundle> {
    let bytes = read(path, "trust bundle")?;
    let is_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let bundle = if is_json {
        TrustBundle::from_spiffe_json(trust_domain, &bytes)
    } else {
        TrustBundle::from_pem(trust_domain, &bytes)
    };
    bundle.with_context(|| format!("could not load the trust bundle {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_without_a_bundle_says_what_to_add() {
        let files = TlsFiles {
            expect_id: Some("spiffe://bank.example/api".into()),
            ..TlsFiles::default()
        };
        assert!(files.wants_tls());
        let err = files.client_config(&[], true).unwrap_err();
        assert!(err.to_string().contains("--bundle"), "{err:#}");
    }

    #[test]
    fn server_auth_only_tls_needs_the_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, "").unwrap();
        let files = TlsFiles {
            bundle: Some(bundle),
            ..TlsFiles::default()
        };
        let err = files.client_config(&[], true).unwrap_err();
        assert!(err.to_string().contains("--expect-id"), "{err:#}");
    }

    #[test]
    fn half_a_client_identity_is_refused() {
        let files = TlsFiles {
            cert: Some("svid.pem".into()),
            bundle: Some("bundle.pem".into()),
            ..TlsFiles::default()
        };
        let err = files.client_config(&[], true).unwrap_err();
        assert!(
            err.to_string().contains("--cert and --key go together"),
            "{err:#}"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let files = TlsFiles {
            cert: Some("/nonexistent/svid.pem".into()),
            key: Some("/nonexistent/svid.key".into()),
            bundle: Some("/nonexistent/bundle.pem".into()),
            expect_id: None,
        };
        let err = files.client_config(&[], true).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/svid.pem"),
            "{err:#}"
        );
    }
}
