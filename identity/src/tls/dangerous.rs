//! Escape hatches for tests only (feature `test-util`): configs that present an arbitrary,
//! possibly invalid certificate chain, or that skip verifying the peer. Never use them in a
//! product path; their names say so at every call site.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::version::TLS13;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use crate::bundle::BundleSet;
use crate::error::IdentityError;
use crate::provider::{provider, signature_algorithms};
use crate::verifier::{SpiffeClientVerifier, SpiffeServerVerifier, TrustSource};

/// A client that verifies the server's SVID against `bundles` but presents `client_cert` as is
/// (a bad SVID from the test CA, say), or no certificate at all with `None`.
pub fn dangerous_client_config_presenting(
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    bundles: BundleSet,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let verifier = SpiffeServerVerifier::new(TrustSource::Fixed(Arc::new(bundles)), None);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(IdentityError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(IdentityError::Tls)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server that verifies client SVIDs against `bundles` but presents `chain` as is.
pub fn dangerous_server_config_presenting(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundles: BundleSet,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let verifier = SpiffeClientVerifier::new(TrustSource::Fixed(Arc::new(bundles)), None);
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(IdentityError::Tls)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .map_err(IdentityError::Tls)?;
    Ok(Arc::new(config))
}

/// A client that presents `chain` and accepts any server certificate without verifying it.
pub fn dangerous_client_config_without_server_verification(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(IdentityError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_auth_cert(chain, key)
        .map_err(IdentityError::Tls)?;
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}
