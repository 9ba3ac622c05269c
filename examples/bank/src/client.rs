//! The apps' HTTP/1.1 client: one request on a fresh plaintext connection to a sidecar's outbound
//! listener (or an admin port). A refused or cut connection is an answer too, reported as such.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What came back.
#[derive(Debug, Clone)]
pub enum Reply {
    /// An HTTP response.
    Http {
        /// Status code.
        status: u16,
        /// Body, as text.
        body: String,
    },
    /// No HTTP response: the connection was refused, reset or closed, with the error.
    NoResponse(String),
}

impl Reply {
    /// Short form for the transcript.
    pub fn describe(&self) -> String {
        match self {
            Self::Http { status, body } => {
                let body = body.trim();
                let body: String = body.chars().take(160).collect();
                format!("HTTP {status} {body:?}")
            }
            Self::NoResponse(why) => format!("no HTTP response ({why})"),
        }
    }

    /// The status, when there was a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::NoResponse(_) => None,
        }
    }
}

/// Sends one request and waits up to 5 s for the whole response.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    host: &str,
) -> Reply {
    match tokio::time::timeout(
        Duration::from_secs(5),
        exchange(addr, method, path, headers, host, None),
    )
    .await
    {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => Reply::NoResponse(error),
        Err(_) => Reply::NoResponse("no answer within 5 s".into()),
    }
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    host: &str,
    json: Option<String>,
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let body = match json {
        Some(json) => Bytes::from(json),
        None if method == "POST" => {
            Bytes::from_static(br#"{"amount": "100.00", "currency": "GBP"}"#)
        }
        None => Bytes::new(),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let result = match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok(Reply::Http {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        }
        Err(error) => Ok(Reply::NoResponse(hyper_error(&error))),
    };
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
    result
}

fn hyper_error(error: &hyper::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// `POST path` with a JSON body on an admin port.
pub async fn post_json(addr: SocketAddr, path: &str, json: String) -> Reply {
    let headers = [("content-type", "application/json")];
    match tokio::time::timeout(
        Duration::from_secs(5),
        exchange(addr, "POST", path, &headers, "localhost", Some(json)),
    )
    .await
    {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => Reply::NoResponse(error),
        Err(_) => Reply::NoResponse("no answer within 5 s".into()),
    }
}

/// `GET path` on an admin port: the status, or `None` when nothing answers.
pub async fn admin_status(addr: SocketAddr, path: &str) -> Option<u16> {
    send(addr, "GET", path, &[], "localhost").await.status()
}
