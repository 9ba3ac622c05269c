//! The attacker's TLS: a rustls client that accepts any server certificate (an attacker does not
//! care who it talks to, and the soak must see the certificate a sidecar serves after a rotation)
//! and presents whatever chain it is given, valid or not, skipping the checks the load generator's
//! own profile would make before sending a bad certificate.
//!
//! identity's `dangerous_client_config_without_server_verification` does the same for tests, but
//! it sits behind the `test-util` feature on purpose: enabling that feature for the `meshguard`
//! binary (perf is linked into it) would put the test CA and every escape hatch into the proxy's
//! build. The attacker is perf's job, so its verifier lives here, in the load tester only.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// A TLS 1.3 client config offering `http/1.1`, presenting `chain_pem`/`key_pem` when given.
pub fn client_config(identity: Option<(&str, &str)>) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AnyServer {
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("the TLS 1.3 provider is not usable")?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("the attacker's chain is not PEM")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .context("the attacker's key is not PEM")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("rustls refused the attacker's certificate and key")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts every server certificate; signatures are still checked so the handshake is real TLS.
#[derive(Debug)]
struct AnyServer {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServer {
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The leaf certificate `target` serves right now, read over a real handshake with `config`.
pub async fn served_leaf(
    target: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> anyhow::Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(target)
        .await
        .with_context(|| format!("could not connect to {target}"))?;
    let name = ServerName::try_from("sidecar.soak").context("a bad server name")?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .with_context(|| format!("the TLS handshake with {target} failed"))?;
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("the server sent no certificate")?;
    Ok(leaf.to_vec())
}
