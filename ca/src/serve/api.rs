//! The API's requests and responses: routing, JSON bodies, and the status and `code` of each
//! refusal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::limits::Gate;
use crate::audit::timestamp;
use crate::authority::{Authority, ClientCert};
use crate::error::{CaError, Refusal};
use crate::issue::Issued;
use crate::secret::Secret;

/// Largest request body accepted (a CSR is well under 2 KiB).
const MAX_BODY: usize = 64 * 1024;

/// The body of `POST /v1/sign`: a one-time bootstrap token and a CSR (PEM).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_debug_implementations)] // holds a token; never printed
pub struct SignRequest {
    pub token: String,
    pub csr: String,
}

/// The body of `POST /v1/renew`: a CSR (PEM); the caller proves itself with its current SVID.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

/// Decodes a request body as the API does, naming what is wrong in the words a client gets back.
pub fn decode_body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes)
        .map_err(|e| format!("the request body is not the expected JSON: {e}"))
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

/// One API request. Signing requests pass the rate limit, wait for a signing slot, and run on
/// the blocking pool: a signature is an HSM call and its audit record an fsync, neither of which
/// may hold an async worker.
pub(super) async fn handle(
    ca: &Arc<Authority>,
    gate: &Gate,
    client: Option<Arc<ClientCert>>,
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
        (Method::GET, "/v1/revoked") => match ca.published_revocations() {
            Ok(published) => match serde_json::to_string(&published) {
                Ok(json) => text(StatusCode::OK, "application/json", json),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &e.to_string(),
                ),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot read the revocation list");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the CA cannot read its revocation list; see its log",
                )
            }
        },
        (Method::POST, "/v1/sign") => {
            let body = match read_json::<SignRequest>(req, gate.limits.request_timeout).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            let token = Secret::new(body.token);
            sign(ca, gate, move |ca| {
                ca.sign_with_token(
                    &token,
                    body.csr.as_bytes(),
                    &peer.to_string(),
                    SystemTime::now(),
                )
            })
            .await
        }
        (Method::POST, "/v1/renew") => {
            let body = match read_json::<RenewRequest>(req, gate.limits.request_timeout).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            sign(ca, gate, move |ca| {
                ca.renew(
                    client.as_deref(),
                    body.csr.as_bytes(),
                    &peer.to_string(),
                    SystemTime::now(),
                )
            })
            .await
        }
        (_, "/v1/bundle" | "/v1/revoked" | "/v1/sign" | "/v1/renew") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET for /v1/bundle and /v1/revoked, POST for /v1/sign and /v1/renew",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "unknown path; the API serves /v1/sign, /v1/renew, /v1/bundle and /v1/revoked",
        ),
    }
}

/// Runs `issue` on the blocking pool once the gate lets it, and answers with its outcome.
async fn sign(
    ca: &Arc<Authority>,
    gate: &Gate,
    issue: impl FnOnce(&Authority) -> Result<Issued, CaError> + Send + 'static,
) -> Response<Full<Bytes>> {
    let permit = match gate.signing().await {
        Ok(permit) => permit,
        Err(retry_after) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "the CA is signing at its rate limit; retry after the Retry-After seconds",
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(retry_after.as_secs().max(1)),
            );
            return response;
        }
    };
    let owned = ca.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        issue(&owned)
    })
    .await
    .unwrap_or_else(|e| Err(CaError::Serve(format!("the signing task failed: {e}"))));
    issued(ca, result)
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<T, Response<Full<Bytes>>> {
    let collected =
        tokio::time::timeout(timeout, Limited::new(req.into_body(), MAX_BODY).collect());
    let bytes = match collected.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than 64 KiB",
            ));
        }
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                &format!("the request body did not arrive within {timeout:?}; send it at once"),
            ));
        }
    };
    decode_body(&bytes).map_err(|message| error(StatusCode::BAD_REQUEST, "bad_json", &message))
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
