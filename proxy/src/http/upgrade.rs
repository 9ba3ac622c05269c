//! HTTP/1.1 Upgrade (WebSocket and the like) and CONNECT: the request is authorized like any
//! other, then forwarded on a connection of its own (HTTP/2 between sidecars cannot carry an
//! HTTP/1.1 upgrade), and once the upstream agrees (`101`, or `2xx` to CONNECT) both sides become
//! one opaque byte stream.

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::boxed;
use super::pool::{Io, UpstreamError};

/// Whether a request asks for an HTTP/1.1 upgrade or a CONNECT tunnel.
pub fn is_upgrade<B>(request: &Request<B>) -> bool {
    if request.version() >= http::Version::HTTP_2 {
        return false;
    }
    if request.method() == Method::CONNECT {
        return true;
    }
    let asks = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks && request.headers().contains_key(header::UPGRADE)
}

/// Whether the upstream's answer turns the exchange into a tunnel.
fn switched(method: &Method, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success())
}

/// Sends `request` over `io` as HTTP/1.1 and, if the upstream switches protocols, joins the
/// client's and the upstream's upgraded streams in a background task. Returns the upstream's
/// response for the client.
pub async fn forward(
    mut request: Request<Incoming>,
    io: Box<dyn Io>,
) -> Result<Response<Incoming>, UpstreamError> {
    let client_side = hyper::upgrade::on(&mut request);
    let method = request.method().clone();
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Handshake)?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upgrade connection to the upstream ended");
        }
    });
    let mut response = sender
        .send_request(request.map(boxed))
        .await
        .map_err(UpstreamError::Request)?;
    if switched(&method, response.status()) {
        let upstream_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client_side, upstream_side) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(%error, "an upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_upgrades_and_connect() {
        let ws = Request::get("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&ws));
        let connect = Request::connect("ledger:443").body(()).unwrap();
        assert!(is_upgrade(&connect));
        let plain = Request::get("/")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(
            !is_upgrade(&plain),
            "Upgrade without Connection: upgrade is not an upgrade"
        );
        let h2 = Request::connect("ledger:443")
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap();
        assert!(!is_upgrade(&h2));
        assert!(switched(&Method::CONNECT, StatusCode::OK));
        assert!(!switched(&Method::GET, StatusCode::OK));
    }
}
