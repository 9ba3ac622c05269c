//! TLS on the legacy side of a gateway. An `[[inbound]]` whose `forward_to` is a remote legacy
//! host may speak TLS to it (`forward_tls`): the host is verified against the CA file given (webpki
//! path validation and the configured server name), TLS 1.3 only unless `allow_tls12 = true`
//! says the legacy host needs 1.2. An `[[outbound]]` that legacy clients connect to may terminate
//! TLS for them (`listen_tls`, TLS 1.3 only). No client certificates on this side: legacy systems
//! have no SPIFFE identity; the mesh side stays mTLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// `forward_tls = { ca = "legacy-ca.pem", server_name = "core.bank.example" }`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardTls {
    /// PEM file of the CA certificates that may sign the legacy host's certificate.
    pub ca: PathBuf,
    /// The name the host's certificate must carry (also sent as SNI).
    pub server_name: String,
    /// Also offer TLS 1.2, for legacy hosts that cannot do 1.3. Off by default.
    #[serde(default)]
    pub allow_tls12: bool,
}

/// `listen_tls = { cert = "gateway.pem", key = "gateway.key" }`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    /// PEM certificate chain, leaf first, that legacy clients verify.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Read once at start; never logged.
    pub key: PathBuf,
}

/// Why the legacy-side TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyTlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// rustls refused the settings.
    #[error("legacy TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// A ready client side towards one legacy host.
#[derive(Debug, Clone)]
pub struct LegacyClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> LegacyTlsError {
    LegacyTlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LegacyTlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

// === impl LegacyClient ===

impl LegacyClient {
    /// Builds the client config: roots from the CA file, TLS 1.3 (and 1.2 only when allowed).
    pub fn new(settings: &ForwardTls) -> Result<Self, LegacyTlsError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&settings.ca)? {
            roots.add(cert).map_err(|e| {
                file_error(&settings.ca, format!("not a usable CA certificate: {e}"))
            })?;
        }
        let versions: &[&rustls::SupportedProtocolVersion] = if settings.allow_tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(settings.server_name.clone()).map_err(|_| {
            file_error(
                &settings.ca,
                format!(
                    "server_name `{}` is not a DNS name or IP address",
                    settings.server_name
                ),
            )
        })?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Completes TLS over a connected socket to the legacy host.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
    }
}

/// The server config legacy clients connect to: TLS 1.3 only, no client certificates.
pub fn server_config(settings: &ListenTls) -> Result<Arc<ServerConfig>, LegacyTlsError> {
    let chain = read_certs(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key)
        .map_err(|e| file_error(&settings.key, format!("cannot read a PEM private key: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}
