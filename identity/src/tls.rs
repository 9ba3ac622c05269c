//! The one TLS profile of meshguard, for server and client configs alike: TLS 1.3 only, the
//! aws-lc-rs provider with X25519MLKEM768 first (see [`crate::provider`]), mutual SPIFFE
//! authentication through [`crate::verifier`], the SVID served from rotating credentials, and
//! session resumption on (server tickets, client session cache), bounded by credential rotation
//! (see [`crate::resumption`]).
//!
//! Peer verification cannot be switched off here. The only escape hatches are the `dangerous_*`
//! functions in [`dangerous`], compiled only with the `test-util` feature.

use std::fmt;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::version::TLS13;
use rustls::{ClientConfig, CommonState, HandshakeKind, ServerConfig};

use crate::bundle::BundleSet;
use crate::credentials::RotatingCredentials;
use crate::error::IdentityError;
use crate::expected::ExpectedIdentities;
use crate::provider::provider;
use crate::resumption::{RotationBoundSessionStore, RotationBoundTicketer};
use crate::verifier::{SpiffeClientVerifier, SpiffeServerVerifier, TrustSource};

#[cfg(feature = "test-util")]
pub mod dangerous;

/// Whether a server requires client certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a valid SVID (mesh traffic: the default).
    #[default]
    Required,
    /// Clients may connect without a certificate; one that is presented must still be valid.
    /// For endpoints that authenticate such clients otherwise (the CA's bootstrap-token API).
    Optional,
}

/// Builder for meshguard's server and client TLS configs.
#[derive(Clone, Debug)]
pub struct TlsProfile {
    identity: Option<RotatingCredentials>,
    trust: TrustSource,
    alpn: Vec<Vec<u8>>,
    expected: Option<ExpectedIdentities>,
    client_auth: ClientAuth,
}

/// What a connection negotiated, for logs: version, cipher suite, key exchange, ALPN, resumption.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1_3`
    pub version: Option<String>,
    /// e.g. `TLS13_AES_128_GCM_SHA256`
    pub cipher_suite: Option<String>,
    /// e.g. `X25519MLKEM768`
    pub kx_group: Option<String>,
    pub alpn: Option<String>,
    /// Whether the session was resumed (no certificate exchanged in this handshake).
    pub resumed: bool,
}

// === impl TlsProfile ===

impl TlsProfile {
    /// The profile of a workload: it presents its SVID and trusts peers by its rotating bundles.
    pub fn new(credentials: RotatingCredentials) -> Self {
        Self {
            trust: TrustSource::Rotating(credentials.clone()),
            identity: Some(credentials),
            alpn: Vec::new(),
            expected: None,
            client_auth: ClientAuth::Required,
        }
    }

    /// A client that has no SVID yet (bootstrapping against the meshguard CA) but still verifies
    /// the server's SVID against `bundles`. Only [`Self::client_config`] works with it.
    pub fn without_identity(bundles: BundleSet) -> Self {
        Self {
            identity: None,
            trust: TrustSource::Fixed(Arc::new(bundles)),
            alpn: Vec::new(),
            expected: None,
            client_auth: ClientAuth::Required,
        }
    }

    /// ALPN protocols to offer (client) or accept (server), most preferred first.
    pub fn with_alpn<P: AsRef<[u8]>>(mut self, protocols: impl IntoIterator<Item = P>) -> Self {
        self.alpn = protocols.into_iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    /// Only peers with one of these IDs pass the handshake (outbound: the server we dial; inbound:
    /// the clients allowed in, before any policy runs).
    pub fn expect(mut self, expected: ExpectedIdentities) -> Self {
        self.expected = Some(expected);
        self
    }

    /// Whether the server requires client certificates (default [`ClientAuth::Required`]).
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// A server config: TLS 1.3, the current SVID per handshake, client SVIDs verified.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, IdentityError> {
        let identity = self
            .identity
            .as_ref()
            .ok_or(IdentityError::ServerWithoutIdentity)?;
        let mut verifier = SpiffeClientVerifier::new(self.trust.clone(), self.expected.clone());
        if self.client_auth == ClientAuth::Optional {
            verifier = verifier.optional();
        }
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&TLS13])
            .map_err(IdentityError::Tls)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(identity.resolver());
        config.alpn_protocols = self.alpn.clone();
        // Stateless tickets, bound to our credentials generation and a short lifetime: resumption
        // skips certificate verification, so it must not outlive a rotation.
        config.ticketer =
            Arc::new(RotationBoundTicketer::new(identity.clone()).map_err(IdentityError::Tls)?);
        Ok(Arc::new(config))
    }

    /// A client config: TLS 1.3, PQ key exchange first, the server's SVID verified (and checked
    /// against the expected identities if set), our SVID presented when we have one.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, IdentityError> {
        let verifier = SpiffeServerVerifier::new(self.trust.clone(), self.expected.clone());
        // rustls names every custom server verifier `dangerous()`; ours verifies fully.
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&TLS13])
            .map_err(IdentityError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &self.identity {
            Some(identity) => {
                let mut config = builder.with_client_cert_resolver(identity.resolver());
                // Sessions cached under an old SVID are dropped at rotation, so servers see the
                // new certificate on the next connection.
                config.resumption =
                    Resumption::store(Arc::new(RotationBoundSessionStore::new(identity.clone())));
                config
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }
}

// === impl TlsInfo ===

/// What `conn` negotiated (all `None` before the handshake completes).
pub fn tls_info(conn: &CommonState) -> TlsInfo {
    TlsInfo {
        version: conn.protocol_version().map(|v| format!("{v:?}")),
        cipher_suite: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite())),
        kx_group: conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name())),
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        resumed: matches!(conn.handshake_kind(), Some(HandshakeKind::Resumed)),
    }
}

impl fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let none = "-";
        write!(
            f,
            "{} {} {} alpn={}{}",
            self.version.as_deref().unwrap_or(none),
            self.cipher_suite.as_deref().unwrap_or(none),
            self.kx_group.as_deref().unwrap_or(none),
            self.alpn.as_deref().unwrap_or(none),
            if self.resumed { " resumed" } else { "" }
        )
    }
}
