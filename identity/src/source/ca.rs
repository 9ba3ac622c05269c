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
//! (`Connection: close`) through hyper's connection-level client: renewals are rare (half-life), so
//! a pool would only hold idle sockets open to the CA.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};

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
    /// The CA's revoked serials as last fetched; kept when a fetch fails.
    revoked: Vec<String>,
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
struct RevokedResponse {
    serials: Vec<String>,
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
            revoked: Vec::new(),
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
            .expect(ExpectedIdentities::exact([ca_id.clone()]))
            .with_alpn(["http/1.1"])
            .client_config()
            .map_err(|e| SourceError::Invalid {
                source_name: self.name(),
                source: Box::new(e),
            })?;
        let exchange = send(config, &self.authority, &self.host, path, Some(body));
        let (status, response) = tokio::time::timeout(self.config.timeout, exchange)
            .await
            .map_err(|_| SourceError::Timeout {
                source_name: self.name(),
                after: self.config.timeout,
            })?
            .map_err(|e| other(&self.config.url, format!("cannot reach the CA: {e}")))?;
        if status != StatusCode::OK {
            let reason = match serde_json::from_slice::<ErrorResponse>(&response) {
                Ok(err) => format!("the CA refused ({}): {}", err.code, err.error),
                Err(_) => format!("the CA answered HTTP {}", status.as_u16()),
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
        // With every new SVID, the CA's revocations: peers holding a revoked SVID are refused
        // from this rotation on, so within one renewal period of `ca revoke`.
        match self.fetch_revoked(&bundle, &ca_id).await {
            Ok(serials) => self.revoked = serials,
            Err(reason) => tracing::warn!(
                ca = %self.config.url, %reason, kept = self.revoked.len(),
                "could not fetch the CA's revocations; keeping the last list"
            ),
        }
        let bundle = bundle.with_revoked(self.revoked.iter().cloned());
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

impl CaSource {
    /// `GET /v1/revoked`, verifying the CA against `bundle`.
    async fn fetch_revoked(
        &self,
        bundle: &TrustBundle,
        ca_id: &SpiffeId,
    ) -> Result<Vec<String>, String> {
        let config = TlsProfile::without_identity(BundleSet::single(bundle.clone()))
            .expect(ExpectedIdentities::exact([ca_id.clone()]))
            .with_alpn(["http/1.1"])
            .client_config()
            .map_err(|e| e.to_string())?;
        let request = send(config, &self.authority, &self.host, "/v1/revoked", None);
        let (status, body) = tokio::time::timeout(self.config.timeout, request)
            .await
            .map_err(|_| format!("no answer within {:?}", self.config.timeout))??;
        if status != StatusCode::OK {
            return Err(format!("the CA answered HTTP {}", status.as_u16()));
        }
        serde_json::from_slice::<RevokedResponse>(&body)
            .map(|r| r.serials)
            .map_err(|e| format!("the CA's revocation list is not the expected JSON: {e}"))
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

/// One HTTP/1.1 request over a fresh TLS connection, a JSON POST with `body` or else a GET;
/// returns the status and the body (at most [`MAX_RESPONSE`] bytes). The error is a sentence
/// for "cannot reach the CA: ...".
async fn send(
    config: Arc<rustls::ClientConfig>,
    authority: &str,
    host: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(StatusCode, Bytes), String> {
    let server_name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let builder = Request::builder()
        .uri(path)
        .header(header::HOST, authority)
        .header(header::CONNECTION, "close");
    let request = match body {
        Some(body) => builder
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes()))),
        None => builder.method(Method::GET).body(Full::new(Bytes::new())),
    }
    .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| chain(&e))?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(|e| chain(&e))?;
        // Dropping the sender lets the connection future finish once the body is read.
        drop(sender);
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    "the CA's response is too large".to_owned()
                } else {
                    chain(e.as_ref())
                }
            })?
            .to_bytes();
        Ok((status, body))
    };
    // The connection is driven here rather than spawned, so a timeout drops it with the exchange.
    // Its own result is not needed: any failure that matters reaches `exchange` as an error, and a
    // server closing without close_notify after a complete response is fine.
    let (result, _connection) = tokio::join!(exchange, connection);
    result
}

/// An error and its causes on one line (hyper's `Display` names only the outermost kind).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
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

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA stand-in on 127.0.0.1:0 with a real `spiffe://td.example/meshguard/ca` SVID that reads
    /// one request and answers with `response` verbatim (`None`: never answers). Returns a source
    /// pointed at it and the task yielding the request it received.
    async fn fake_ca(
        dir: &std::path::Path,
        response: Option<Vec<u8>>,
    ) -> (CaSource, tokio::task::JoinHandle<String>) {
        let ca = crate::test_ca::TestCa::new("td.example");
        let server = TlsProfile::new(ca.rotating("/meshguard/ca"))
            .client_auth(crate::tls::ClientAuth::Optional)
            .with_alpn(["http/1.1"])
            .server_config()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(server)
                .accept(tcp)
                .await
                .unwrap();
            let request = read_request(&mut tls).await;
            match response {
                Some(bytes) => {
                    tls.write_all(&bytes).await.unwrap();
                    tls.shutdown().await.unwrap();
                }
                None => std::future::pending::<()>().await,
            }
            request
        });
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, ca.bundle_pem()).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "tok-123\n").unwrap();
        let id = SpiffeId::parse("spiffe://td.example/w").unwrap();
        let config = CaSourceConfig::new(format!("https://{addr}"), id, token, bundle);
        (CaSource::new(config).unwrap(), task)
    }

    /// Reads the head and a `content-length` body, as hyper's client must send them.
    async fn read_request(tls: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before sending a whole request");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length header");
                if body.len() >= length {
                    return text.into_owned();
                }
            }
        }
    }

    fn answer(status: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
        let mut raw = format!("HTTP/1.1 {status}\r\n{extra_headers}\r\n").into_bytes();
        raw.extend_from_slice(body);
        raw
    }

    /// The whole error as a user reads it (`SourceError`'s `Display` includes its source).
    fn message(error: SourceError) -> String {
        error.to_string()
    }

    #[tokio::test]
    async fn the_bootstrap_request_is_a_json_post_with_the_token_and_a_csr() {
        let dir = tempfile::tempdir().unwrap();
        let refusal = br#"{"error":"the token was already used","code":"token_replayed"}"#;
        let headers = format!("content-length: {}\r\n", refusal.len());
        let response = answer("403 Forbidden", &headers, refusal);
        let (mut source, server) = fake_ca(dir.path(), Some(response)).await;
        let error = message(source.bootstrap().await.unwrap_err());
        assert!(
            error.contains("the CA refused (token_replayed): the token was already used"),
            "{error}"
        );
        let request = server.await.unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/sign HTTP/1.1\r\n"), "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["token"], "tok-123");
        assert!(
            json["csr"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
    }

    #[tokio::test]
    async fn a_chunked_refusal_is_read_like_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let json = br#"{"error":"HSM unavailable","code":"hsm_unavailable"}"#;
        let mut body = format!("{:x}\r\n", json.len()).into_bytes();
        body.extend_from_slice(json);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        let response = answer(
            "503 Service Unavailable",
            "transfer-encoding: chunked\r\n",
            &body,
        );
        let (mut source, _server) = fake_ca(dir.path(), Some(response)).await;
        let error = message(source.bootstrap().await.unwrap_err());
        assert!(
            error.contains("the CA refused (hsm_unavailable)"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_non_json_error_names_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let response = answer("502 Bad Gateway", "content-length: 4\r\n", b"oops");
        let (mut source, _server) = fake_ca(dir.path(), Some(response)).await;
        let error = message(source.bootstrap().await.unwrap_err());
        assert!(error.contains("the CA answered HTTP 502"), "{error}");
    }

    #[tokio::test]
    async fn oversized_and_truncated_responses_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'x'; MAX_RESPONSE + 1];
        let headers = format!("content-length: {}\r\n", big.len());
        let (mut source, _server) =
            fake_ca(dir.path(), Some(answer("200 OK", &headers, &big))).await;
        let error = message(source.bootstrap().await.unwrap_err());
        assert!(
            error.contains("cannot reach the CA: the CA's response is too large"),
            "{error}"
        );

        let short = answer("200 OK", "content-length: 9\r\n", b"short");
        let (mut source, _server) = fake_ca(dir.path(), Some(short)).await;
        let error = message(source.bootstrap().await.unwrap_err());
        assert!(error.contains("cannot reach the CA: "), "{error}");
        assert!(source.current().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_ca_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let (mut source, _server) = fake_ca(dir.path(), None).await;
        source.config.timeout = Duration::from_secs(3);
        match source.bootstrap().await {
            Err(SourceError::Timeout { after, .. }) => assert_eq!(after, Duration::from_secs(3)),
            other => panic!("expected a timeout, got {other:?}"),
        }
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
