//! The meshguard CA as an identity source: bootstrap with a one-time token, renew over mTLS.
//!
//! The workload's key is generated here (P-256, rcgen) for every certificate and never leaves the
//! process: only a CSR travels. The first `fetch` redeems the token from `token_file`; later ones
//! renew over mTLS with the current SVID (the CA only renews the same SPIFFE ID). The driver calls
//! `fetch` at half-life with jitter and retries with backoff; while the CA is down the current SVID
//! keeps serving, and the next successful `fetch` recovers.
//!
//! The CA server is verified like any peer: its SVID must chain to the configured bundle and carry
//! `spiffe://<trust domain>/meshguard/ca`. The exchange is one HTTP/1.1 request per TLS connection
//! (`Connection: close`), written here because this crate has no HTTP client dependency.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bundle::{BundleSet, TrustBundle};
use crate::credentials::{Credentials, RotatingCredentials};
use crate::expected::ExpectedIdentities;
use crate::source::{IdentitySource, SourceError, SourceFuture};
use crate::spiffe_id::SpiffeId;
use crate::svid::{X509Svid, unix_time};
use crate::tls::TlsProfile;

/// Largest response accepted from the CA.
const MAX_RESPONSE: usize = 256 * 1024;

/// Where the CA is and who we are (the proxy's `[identity] ca = {...}` table).
#[derive(Debug, Clone)]
pub struct CaSourceConfig {
    /// `https://HOST:PORT` of `meshguard ca serve`.
    pub url: String,
    /// The SPIFFE ID the token is bound to.
    pub spiffe_id: SpiffeId,
    /// File holding the one-time bootstrap token (read at bootstrap only).
    pub token_file: PathBuf,
    /// PEM trust bundle of the CA's trust domain, to verify the CA and as the initial bundle.
    pub bundle: PathBuf,
    /// How long one exchange with the CA may take.
    pub timeout: Duration,
}

impl CaSourceConfig {
    pub fn new(
        url: impl Into<String>,
        spiffe_id: SpiffeId,
        token_file: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Self {
        Self {
            url: url.into(),
            spiffe_id,
            token_file: token_file.into(),
            bundle: bundle.into(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The CA identity source.
#[derive(Debug)]
pub struct CaSource {
    config: CaSourceConfig,
    authority: String,
    host: String,
    bundle: TrustBundle,
    current: Option<Credentials>,
}

#[derive(Serialize)]
struct SignRequest<'a> {
    token: &'a str,
    csr: &'a str,
}

#[derive(Serialize)]
struct RenewRequest<'a> {
    csr: &'a str,
}

#[derive(Deserialize)]
struct IssueResponse {
    svid: String,
    bundle: String,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    code: String,
}

impl CaSource {
    /// Reads the bundle; the token is read only when bootstrapping.
    pub fn new(config: CaSourceConfig) -> Result<Self, SourceError> {
        let authority = config
            .url
            .strip_prefix("https://")
            .map(|rest| rest.trim_end_matches('/').to_owned())
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| {
                other(
                    &config.url,
                    format!(
                        "the CA url `{}` must look like https://HOST:PORT",
                        config.url
                    ),
                )
            })?;
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => {
                host.trim_matches(['[', ']']).to_owned()
            }
            _ => {
                return Err(other(
                    &config.url,
                    format!("the CA url `{}` needs a port", config.url),
                ));
            }
        };
        let pem = std::fs::read(&config.bundle).map_err(|e| SourceError::File {
            role: "CA bundle",
            path: config.bundle.clone(),
            source: Box::new(crate::error::IdentityError::Pem {
                what: "the CA bundle",
                reason: e.to_string(),
            }),
        })?;
        let bundle = TrustBundle::from_pem(config.spiffe_id.trust_domain(), &pem).map_err(|e| {
            SourceError::File {
                role: "CA bundle",
                path: config.bundle.clone(),
                source: Box::new(e),
            }
        })?;
        Ok(Self {
            config,
            authority,
            host,
            bundle,
            current: None,
        })
    }

    /// The credentials from the last successful exchange.
    pub fn current(&self) -> Option<&Credentials> {
        self.current.as_ref()
    }

    /// First SVID: redeem the token with a CSR for a key generated here.
    pub async fn bootstrap(&mut self) -> Result<Credentials, SourceError> {
        let token = std::fs::read_to_string(&self.config.token_file).map_err(|e| {
            other(
                &self.config.url,
                format!(
                    "cannot read the token file {}: {e}",
                    self.config.token_file.display()
                ),
            )
        })?;
        let (csr, key) = self.csr()?;
        let body = serde_json::to_string(&SignRequest {
            token: token.trim(),
            csr: &csr,
        })
        .map_err(|e| other(&self.config.url, e))?;
        let profile = TlsProfile::without_identity(BundleSet::single(self.bundle.clone()));
        let creds = self.exchange(profile, "/v1/sign", &body, key).await?;
        tracing::info!(spiffe_id = %self.config.spiffe_id, ca = %self.config.url, "bootstrapped from the meshguard CA");
        Ok(creds)
    }

    /// Next SVID: a new key and CSR, authenticated with the current SVID over mTLS.
    pub async fn renew(&mut self) -> Result<Credentials, SourceError> {
        let current = self.current.clone().ok_or_else(|| SourceError::NotReady {
            source_name: self.name(),
            reason: "nothing to renew yet; bootstrap first".into(),
        })?;
        let rotating = RotatingCredentials::new(current).map_err(|e| SourceError::Invalid {
            source_name: self.name(),
            source: Box::new(e),
        })?;
        let (csr, key) = self.csr()?;
        let body = serde_json::to_string(&RenewRequest { csr: &csr })
            .map_err(|e| other(&self.config.url, e))?;
        self.exchange(TlsProfile::new(rotating), "/v1/renew", &body, key)
            .await
    }

    fn csr(&self) -> Result<(String, rcgen::KeyPair), SourceError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| other(&self.config.url, e))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(self.config.spiffe_id.as_str())
            .map_err(|e| other(&self.config.url, e))?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| other(&self.config.url, e))?;
        Ok((csr, key))
    }

    async fn exchange(
        &mut self,
        profile: TlsProfile,
        path: &str,
        body: &str,
        key: rcgen::KeyPair,
    ) -> Result<Credentials, SourceError> {
        let ca_id = SpiffeId::from_parts(&self.config.spiffe_id.trust_domain(), "/meshguard/ca")
            .map_err(|e| other(&self.config.url, e))?;
        let config = profile
            .expect(ExpectedIdentities::exact([ca_id]))
            .with_alpn(["http/1.1"])
            .client_config()
            .map_err(|e| SourceError::Invalid {
                source_name: self.name(),
                source: Box::new(e),
            })?;
        let exchange = post(config, &self.authority, &self.host, path, body);
        let (status, response) = tokio::time::timeout(self.config.timeout, exchange)
            .await
            .map_err(|_| SourceError::Timeout {
                source_name: self.name(),
                after: self.config.timeout,
            })?
            .map_err(|e| other(&self.config.url, format!("cannot reach the CA: {e}")))?;
        if status != 200 {
            let reason = match serde_json::from_slice::<ErrorResponse>(&response) {
                Ok(err) => format!("the CA refused ({}): {}", err.code, err.error),
                Err(_) => format!("the CA answered HTTP {status}"),
            };
            return Err(other(&self.config.url, reason));
        }
        let issued: IssueResponse = serde_json::from_slice(&response).map_err(|e| {
            other(
                &self.config.url,
                format!("the CA's answer is not the expected JSON: {e}"),
            )
        })?;
        let svid = X509Svid::from_pem(issued.svid.as_bytes(), key.serialize_pem().as_bytes())
            .map_err(|e| SourceError::Invalid {
                source_name: self.name(),
                source: Box::new(e),
            })?;
        if svid.spiffe_id() != &self.config.spiffe_id {
            return Err(other(
                &self.config.url,
                format!(
                    "the CA issued {} instead of {}",
                    svid.spiffe_id(),
                    self.config.spiffe_id
                ),
            ));
        }
        // The answer comes from the CA we authenticated with our current bundle, so its bundle is
        // taken (that is how a root rotation reaches workloads); the new SVID must validate under it.
        let bundle = TrustBundle::from_pem(
            self.config.spiffe_id.trust_domain(),
            issued.bundle.as_bytes(),
        )
        .unwrap_or_else(|_| self.bundle.clone());
        let creds = Credentials::new(svid, BundleSet::single(bundle.clone()));
        creds
            .check(unix_time(SystemTime::now()))
            .map_err(|e| SourceError::Invalid {
                source_name: self.name(),
                source: Box::new(e),
            })?;
        self.bundle = bundle;
        self.current = Some(creds.clone());
        Ok(creds)
    }
}

impl IdentitySource for CaSource {
    fn name(&self) -> String {
        format!("meshguard CA {}", self.config.url)
    }

    fn fetch(&mut self) -> SourceFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(async move {
            let valid = self
                .current
                .as_ref()
                .is_some_and(|c| c.check(unix_time(SystemTime::now())).is_ok());
            if valid {
                self.renew().await
            } else {
                self.bootstrap().await
            }
        })
    }
}

/// One HTTP/1.1 POST over a fresh TLS connection; returns the status and the body.
async fn post(
    config: Arc<rustls::ClientConfig>,
    authority: &str,
    host: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, Vec<u8>)> {
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    let mut response = Vec::new();
    let read = (&mut tls)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut response)
        .await;
    // Servers may close without close_notify after a complete response; the length check decides.
    match read {
        Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => return Err(e),
        _ => {}
    }
    parse_response(&response)
}

fn parse_response(raw: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    if raw.len() > MAX_RESPONSE {
        return Err(bad("the CA's response is too large"));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("incomplete HTTP response"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("the HTTP head is not text"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
            if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked responses are not expected from the CA"));
            }
        }
    }
    let body = &raw[split + 4..];
    match length {
        Some(n) if body.len() >= n => Ok((status, body[..n].to_vec())),
        Some(_) => Err(bad("the CA's response was cut short")),
        None => Ok((status, body.to_vec())),
    }
}

fn other(url: &str, error: impl ToString) -> SourceError {
    SourceError::Other {
        source_name: format!("meshguard CA {url}"),
        source: error.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_by_length() {
        let raw = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(raw).unwrap(), (403, b"hello".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello")
                .is_err()
        );
    }

    #[test]
    fn urls_need_https_and_a_port() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::test_ca::TestCa::new("td.example");
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, ca.bundle_pem()).unwrap();
        let id = SpiffeId::parse("spiffe://td.example/w").unwrap();
        for bad in [
            "http://127.0.0.1:1",
            "https://127.0.0.1",
            "https://",
            "127.0.0.1:80",
        ] {
            assert!(
                CaSource::new(CaSourceConfig::new(bad, id.clone(), "t", &bundle)).is_err(),
                "{bad}"
            );
        }
        CaSource::new(CaSourceConfig::new(
            "https://127.0.0.1:8443",
            id,
            "t",
            &bundle,
        ))
        .unwrap();
    }
}
