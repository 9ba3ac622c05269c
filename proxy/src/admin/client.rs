//! Calls a running proxy's admin control socket (`meshguard policy break-glass --admin-socket`):
//! one HTTP/1.1 request over the Unix socket, the answer's status and body.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The proxy's answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: http::StatusCode,
    /// The body, as text.
    pub body: String,
}

/// Sends `method path_and_query` (with a JSON `body`, when given) to the control socket at
/// `socket`. The error is a sentence for the operator.
pub async fn call(
    socket: &Path,
    method: http::Method,
    path_and_query: &str,
    body: Option<String>,
) -> Result<Answer, String> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach the admin control socket {} ({e}): is the proxy running with `[admin.control] socket` set, and may this user open the socket?",
            socket.display()
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("the admin control socket did not speak HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, "meshguard-admin");
    if body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("`{path_and_query}` is not a request path: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the admin control call failed: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the admin control answer failed: {e}"))?
        .to_bytes();
    driver.abort();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
