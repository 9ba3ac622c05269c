//! rustls verifiers for both TLS roles that accept a peer only if its chain is a valid X.509-SVID
//! under the bundle of its own trust domain, and (when asked) only if its SPIFFE ID is expected.
//!
//! DNS names play no part: SPIFFE authenticates the URI SAN, so the server name a client dials is
//! ignored. The bundles are read at each handshake, so a bundle rotation applies to new handshakes.
//! A refusal carries the precise [`SvidError`] (or [`IdentityError::UnexpectedPeer`]) inside
//! `rustls::Error`, recoverable with [`refusal_reason`] for logs and tests.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{Error as TlsError, SignatureScheme};

use crate::bundle::BundleSet;
use crate::credentials::RotatingCredentials;
use crate::error::{IdentityError, SvidError};
use crate::expected::ExpectedIdentities;
use crate::provider::signature_algorithms;
use crate::spiffe_id::SpiffeId;
use crate::svid::{spiffe_id_of, validate_svid_parts};

/// Where a verifier reads the bundles from at each handshake.
#[derive(Clone)]
pub enum TrustSource {
    /// The bundles of the workload's rotating credentials (the normal case).
    Rotating(RotatingCredentials),
    /// A fixed set, for a client that has no SVID yet (bootstrap against the CA).
    Fixed(Arc<BundleSet>),
}

/// Verifies a server's SVID (client side of a connection).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    trust: TrustSource,
    expected: Option<ExpectedIdentities>,
}

/// Verifies a client's SVID (server side of a connection).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    trust: TrustSource,
    expected: Option<ExpectedIdentities>,
    mandatory: bool,
}

// === impl TrustSource ===

impl TrustSource {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, SvidError> {
        match self {
            Self::Rotating(creds) => {
                validate_svid_parts(end_entity, intermediates, &creds.current().bundles, now)
            }
            Self::Fixed(bundles) => validate_svid_parts(end_entity, intermediates, bundles, now),
        }
    }
}

impl fmt::Debug for TrustSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rotating(_) => f.write_str("TrustSource::Rotating"),
            Self::Fixed(b) => f.debug_tuple("TrustSource::Fixed").field(b).finish(),
        }
    }
}

// === impl SpiffeServerVerifier ===

impl SpiffeServerVerifier {
    pub fn new(trust: TrustSource, expected: Option<ExpectedIdentities>) -> Self {
        Self { trust, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let id = self
            .trust
            .verify(end_entity, intermediates, now)
            .map_err(refuse)?;
        if let Some(expected) = &self.expected {
            expected.check(&id).map_err(refuse)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}

// === impl SpiffeClientVerifier ===

impl SpiffeClientVerifier {
    /// A verifier that requires every client to present a valid SVID.
    pub fn new(trust: TrustSource, expected: Option<ExpectedIdentities>) -> Self {
        Self {
            trust,
            expected,
            mandatory: true,
        }
    }

    /// Lets clients connect without a certificate (a certificate that is presented must still be
    /// valid). Only for endpoints that authenticate such clients otherwise, e.g. the CA's
    /// issuance API accepting bootstrap tokens. The caller must check [`peer_spiffe_id`].
    pub fn optional(mut self) -> Self {
        self.mandatory = false;
        self
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No CA names are hinted: with federation there are several roots, and an SVID's issuer
    /// is not a name clients choose by.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let id = self
            .trust
            .verify(end_entity, intermediates, now)
            .map_err(refuse)?;
        if let Some(expected) = &self.expected {
            expected.check(&id).map_err(refuse)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}

// === peer identity and refusal reasons ===

/// The SPIFFE ID of the peer of an established connection (its leaf was validated by our verifier
/// during the handshake). `NoPeerIdentity` if the peer presented no certificate (only possible with
/// an optional-client-auth server).
pub fn peer_spiffe_id(conn: &CommonState) -> Result<SpiffeId, IdentityError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(IdentityError::NoPeerIdentity)?;
    Ok(spiffe_id_of(leaf)?)
}

/// The meshguard reason behind a handshake refused by our verifiers, if that is what `err` is.
pub fn refusal_reason(err: &TlsError) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
    match err {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            Some(inner.as_ref())
        }
        _ => None,
    }
}

/// The SVID rule behind a refused handshake, if any (see [`refusal_reason`]).
pub fn svid_refusal(err: &TlsError) -> Option<&SvidError> {
    refusal_reason(err)?.downcast_ref::<SvidError>()
}

/// Wraps our reason so rustls sends a `bad_certificate` alert and the caller can still read it.
fn refuse(reason: impl Into<IdentityError>) -> TlsError {
    let reason: Arc<dyn std::error::Error + Send + Sync> = match reason.into() {
        IdentityError::Svid(svid) => Arc::new(svid),
        other => Arc::new(other),
    };
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(reason)))
}

fn tls12_refused() -> TlsError {
    TlsError::General("meshguard speaks TLS 1.3 only; TLS 1.2 signatures are not accepted".into())
}
