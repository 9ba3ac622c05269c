//! The bank's small applications, served in the demo process on 127.0.0.1: `ledger`, `keys`,
//! `payments`, `reporting` and the legacy `core-banking` host. Each one records every request
//! that actually reached it, with the caller identity its sidecar vouched for
//! (`x-forwarded-client-cert`), so the transcript can show that a denied request never arrived.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One request that reached an app.
#[derive(Debug, Clone)]
pub struct Hit {
    /// `POST /ledger/entries`.
    pub request: String,
    /// The `x-forwarded-client-cert` header the sidecar set, if any.
    pub xfcc: Option<String>,
    /// The `x-request-id` the request carried.
    pub request_id: Option<String>,
}

/// A running app.
#[derive(Debug, Clone)]
pub struct App {
    /// Its name in the transcript.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl App {
    /// Requests that reached it so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The hit carrying this request id.
    pub fn hit_with_id(&self, id: &str) -> Option<Hit> {
        self.hits()
            .into_iter()
            .find(|h| h.request_id.as_deref() == Some(id))
    }
}

/// Starts an app on 127.0.0.1 with a free port. It serves until the runtime ends.
pub async fn start(name: &'static str) -> anyhow::Result<App> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(Mutex::new(Vec::new()));
    let app = App {
        name,
        addr,
        hits: hits.clone(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let hits = hits.clone();
                    async move { Ok::<_, Infallible>(handle(name, &hits, request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(app)
}

async fn handle(
    name: &'static str,
    hits: &Mutex<Vec<Hit>>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let header = |n: &str| {
        request
            .headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let hit = Hit {
        request: format!("{} {}", request.method(), request.uri().path()),
        xfcc: header("x-forwarded-client-cert"),
        request_id: header("x-request-id"),
    };
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path();
    if path != "/healthz" {
        hits.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hit);
    }
    let (status, text) = route(name, &parts.method, path, &body);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

/// What each app answers. The apps trust their sidecar: authorization is not their job.
fn route(name: &str, method: &Method, path: &str, body: &[u8]) -> (StatusCode, String) {
    match (name, method.as_str(), path) {
        (_, "GET", "/healthz") => (StatusCode::OK, "ok".into()),
        ("ledger", "POST", p) if p.starts_with("/ledger/entries") => (
            StatusCode::CREATED,
            format!("entry recorded ({} bytes)", body.len()),
        ),
        ("ledger", "GET", "/ledger/balances") => (StatusCode::OK, r#"{"GBP": 1250000.00}"#.into()),
        ("ledger", "DELETE", p) if p.starts_with("/ledger/entries") => (
            StatusCode::OK,
            "entry deleted (the ledger app would have done it)".into(),
        ),
        ("keys", "POST", "/v1/keys/financial-report/decrypt") => {
            (StatusCode::OK, "data key released".into())
        }
        ("core-banking", "GET", p) if p.starts_with("/accounts/") => (
            StatusCode::OK,
            "ACCOUNT 12345678 BALANCE 1000.00 GBP".into(),
        ),
        _ => (StatusCode::NOT_FOUND, format!("{name}: no such resource\n")),
    }
}
