//! The issuance API: HTTPS (hyper 1 over tokio-rustls, meshguard's TLS profile with optional client
//! certificates) with the CA's own server SVID, issued by itself at start and re-issued at half-life.
//!
//! - `POST /v1/sign` `{"token": "...", "csr": "PEM"}`: bootstrap with a one-time token.
//! - `POST /v1/renew` `{"csr": "PEM"}`: renewal over mTLS with the current SVID, same ID only.
//! - `GET /v1/bundle` (PEM) and `GET /v1/bundle?format=spiffe` (JWK Set).
//!
//! Success: `{"spiffe_id", "serial", "not_after", "svid" (PEM chain, leaf first), "bundle" (PEM)}`.
//! Errors: `{"error": "<sentence>", "code": "<code>"}`. Workload keys never travel: only CSRs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard_identity::{
    BundleSet, ClientAuth, Credentials, RotatingCredentials, SpiffeId, TlsProfile, X509Svid,
};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::audit::timestamp;
use crate::authority::{Authority, ClientCert};
use crate::error::{CaError, Refusal};
use crate::issue::Issued;
use crate::secret::Secret;

/// Largest request body accepted (a CSR is well under 2 KiB).
const MAX_BODY: usize = 64 * 1024;

/// The issuance API server.
pub struct Server {
    ca: Arc<Authority>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    credentials: RotatingCredentials,
    dns: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    token: String,
    csr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    csr: String,
}

/// A successful issuance, as the API returns it.
#[derive(Debug, Serialize, Deserialize)]
pub struct IssueResponse {
    pub spiffe_id: String,
    pub serial: String,
    pub not_after: String,
    pub svid: String,
    pub bundle: String,
}

/// An API error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    pub code: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `listen` and issues the CA's own server certificate (`spiffe://TD/meshguard/ca`, with
    /// `dns` and the listen IP as extra SANs).
    pub async fn bind(ca: Authority, listen: &str, dns: &[String]) -> Result<Self, CaError> {
        let listener = listen_reusable(listen).await?;
        let local = listener
            .local_addr()
            .map_err(|e| CaError::Serve(e.to_string()))?;
        let mut dns = dns.to_vec();
        dns.push(local.ip().to_string());
        dns.push("localhost".to_owned());
        let ca = Arc::new(ca);
        let credentials =
            RotatingCredentials::new(server_credentials(&ca, &dns)?).map_err(CaError::identity)?;
        let config = TlsProfile::new(credentials.clone())
            .client_auth(ClientAuth::Optional)
            .with_alpn(["h2", "http/1.1"])
            .server_config()
            .map_err(CaError::identity)?;
        let server = Self {
            ca,
            listener,
            acceptor: TlsAcceptor::from(config),
            credentials,
            dns,
        };
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The CA's SPIFFE ID as a server, for clients' expected identities.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.credentials.current().svid.spiffe_id().clone()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), CaError> {
        let Self {
            ca,
            listener,
            acceptor,
            credentials,
            dns,
        } = self;
        let renewer = tokio::spawn(renew_own_certificate(ca.clone(), credentials, dns));
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let ca = ca.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        handshake_failed(&ca, peer, &e);
                        return;
                    }
                };
                // The chain is validated once per connection; each renewal re-checks its expiry.
                let client: Option<Arc<ClientCert>> =
                    tls.get_ref().1.peer_certificates().map(|c| {
                        let chain: Vec<CertificateDer<'static>> =
                            c.iter().map(|d| d.clone().into_owned()).collect();
                        Arc::new(ca.client_cert(&chain, SystemTime::now()))
                    });
                let service = hyper::service::service_fn(move |req| {
                    let ca = ca.clone();
                    let client = client.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            handle(&ca, client.as_deref(), peer, req).await,
                        )
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        renewer.abort();
        Ok(())
    }
}

/// Binds with SO_REUSEADDR, so a restarted CA gets its port back while old connections linger.
async fn listen_reusable(listen: &str) -> Result<TcpListener, CaError> {
    let fail = |e: std::io::Error| CaError::Serve(format!("cannot listen on {listen}: {e}"));
    let addr = tokio::net::lookup_host(listen)
        .await
        .map_err(fail)?
        .next()
        .ok_or_else(|| CaError::Serve(format!("`{listen}` resolves to no address")))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(1024).map_err(fail)
}

/// A failed handshake whose cause is a client certificate that fails the SVID rules is a refused
/// renewal: it goes to the audit trail. Other failures (scanners, plaintext) are only logged.
fn handshake_failed(ca: &Authority, peer: SocketAddr, error: &std::io::Error) {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error.and_then(meshguard_identity::verifier::refusal_reason) {
        Some(reason) => {
            if let Err(e) = ca.record_handshake_refusal(
                &peer.to_string(),
                &reason.to_string(),
                SystemTime::now(),
            ) {
                tracing::error!(error = %e, "could not record a refused handshake");
            }
        }
        None => tracing::debug!(%peer, %error, "TLS handshake failed"),
    }
}

async fn handle(
    ca: &Authority,
    client: Option<&ClientCert>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/bundle") => {
            if query.split('&').any(|kv| kv == "format=spiffe") {
                match ca.bundle_spiffe_json() {
                    Ok(json) => text(StatusCode::OK, "application/json", json),
                    Err(e) => error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &e.to_string(),
                    ),
                }
            } else {
                text(StatusCode::OK, "application/x-pem-file", ca.bundle_pem())
            }
        }
        (Method::POST, "/v1/sign") => {
            let body = match read_json::<SignRequest>(req).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            let token = Secret::new(body.token);
            // Issuance runs inline: a SoftHSM signature takes ~50 us, and handing it to the
            // blocking pool cost more CPU than it saved (measured with benches/issuance.rs).
            let result = ca.sign_with_token(
                &token,
                body.csr.as_bytes(),
                &peer.to_string(),
                SystemTime::now(),
            );
            issued(ca, result)
        }
        (Method::POST, "/v1/renew") => {
            let body = match read_json::<RenewRequest>(req).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            let result = ca.renew(
                client,
                body.csr.as_bytes(),
                &peer.to_string(),
                SystemTime::now(),
            );
            issued(ca, result)
        }
        (_, "/v1/bundle" | "/v1/sign" | "/v1/renew") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET for /v1/bundle and POST for /v1/sign and /v1/renew",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "unknown path; the API serves /v1/sign, /v1/renew and /v1/bundle",
        ),
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, Response<Full<Bytes>>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than 64 KiB",
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            &format!("the request body is not the expected JSON: {e}"),
        )
    })
}

fn issued(ca: &Authority, result: Result<Issued, CaError>) -> Response<Full<Bytes>> {
    match result {
        Ok(issued) => {
            let body = IssueResponse {
                spiffe_id: issued.spiffe_id.to_string(),
                serial: issued.serial.clone(),
                not_after: timestamp(issued.not_after),
                svid: issued.pem(),
                bundle: ca.bundle_pem(),
            };
            match serde_json::to_string(&body) {
                Ok(json) => text(StatusCode::OK, "application/json", json),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &e.to_string(),
                ),
            }
        }
        Err(CaError::Refused(refusal)) => {
            error(status_of(&refusal), refusal.code(), &refusal.to_string())
        }
        Err(other) => {
            tracing::error!(error = %other, "issuance failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the CA failed to issue; see its log",
            )
        }
    }
}

fn status_of(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::MalformedCsr(_)
        | Refusal::BadSpiffeId(_)
        | Refusal::BadDnsName(_)
        | Refusal::TtlTooLong { .. } => StatusCode::BAD_REQUEST,
        Refusal::NoClientCertificate => StatusCode::UNAUTHORIZED,
        Refusal::HsmUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn error(status: StatusCode, code: &str, sentence: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_string(&ErrorResponse {
        error: sentence.to_owned(),
        code: code.to_owned(),
    })
    .unwrap_or_else(|_| "{\"error\":\"internal\",\"code\":\"internal\"}".to_owned());
    text(status, "application/json", body)
}

/// The CA's own server credentials: a fresh local key, an SVID from its own issuer.
fn server_credentials(ca: &Authority, dns: &[String]) -> Result<Credentials, CaError> {
    let id = SpiffeId::from_parts(ca.issuer().trust_domain(), "/meshguard/ca")
        .map_err(CaError::identity)?;
    let ttl = Some(ca.issuer().ttl().max_ttl);
    let (issued, key) = ca.issue_local(
        &id,
        dns,
        ttl,
        "ca serve (own server certificate)",
        SystemTime::now(),
    )?;
    let svid = X509Svid::from_pem(issued.pem().as_bytes(), key.serialize_pem().as_bytes())
        .map_err(CaError::identity)?;
    Ok(Credentials::new(
        svid,
        BundleSet::single(ca.bundle().clone()),
    ))
}

/// Re-issues the server certificate at half of its lifetime; retries each minute on failure.
async fn renew_own_certificate(
    ca: Arc<Authority>,
    credentials: RotatingCredentials,
    dns: Vec<String>,
) {
    loop {
        let lifetime = ca.issuer().ttl().max_ttl;
        tokio::time::sleep(lifetime / 2).await;
        loop {
            let ca2 = ca.clone();
            let dns2 = dns.clone();
            let fresh = tokio::task::spawn_blocking(move || server_credentials(&ca2, &dns2)).await;
            match fresh {
                Ok(Ok(fresh)) => match credentials.rotate(fresh) {
                    Ok(()) => break,
                    Err(e) => tracing::error!(error = %e, "the new server certificate is invalid"),
                },
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not renew the CA's server certificate; retrying")
                }
                Err(e) => tracing::error!(error = %e, "renewal task failed"),
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}
