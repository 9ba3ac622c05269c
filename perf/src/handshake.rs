//! `meshguard perf handshake`: every operation opens a new connection (TCP plus, with TLS, a full
//! or resumed handshake), makes one request on it and closes it. It measures how many new
//! connections per second a target sustains and how long the handshakes take.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::connect::{Connected, Connector, Handshake};
use crate::engine::Exchange;
use crate::http::HttpTarget;
use crate::recorder::{ErrorKind, Latencies};

/// The one request made on each new connection.
#[derive(Debug, Clone)]
pub enum FirstRequest {
    /// `GET /` with `Connection: close` (HTTP/1.1).
    Http(Arc<HttpTarget>),
    /// One byte echoed by a TCP echo server (for L4 targets).
    Echo(Connector),
}

/// One worker: new connection, one request, close; again.
#[derive(Debug)]
pub struct HandshakeExchange {
    request: FirstRequest,
    /// TCP connect + TLS handshake, from the actual start (the open-loop wait is not in it).
    pub handshakes: Latencies,
    /// Handshakes that resumed a TLS session.
    pub resumed: u64,
}

impl HandshakeExchange {
    pub fn new(request: FirstRequest) -> Self {
        HandshakeExchange {
            request,
            handshakes: Latencies::default(),
            resumed: 0,
        }
    }

    fn note(&mut self, handshake: Handshake) {
        self.handshakes.record(handshake.took);
        self.resumed += u64::from(handshake.resumed);
    }
}

impl Exchange for HandshakeExchange {
    async fn exchange(&mut self) -> Result<(), ErrorKind> {
        match self.request.clone() {
            FirstRequest::Http(target) => {
                let (mut sender, handshake) = target.open().await?;
                self.note(handshake);
                target.request(&mut sender, true).await
            }
            FirstRequest::Echo(connector) => {
                let Connected {
                    mut stream,
                    handshake,
                } = connector.connect().await?;
                self.note(handshake);
                stream.write_all(&[0]).await.map_err(|_| ErrorKind::Io)?;
                let mut byte = [1];
                stream
                    .read_exact(&mut byte)
                    .await
                    .map_err(|_| ErrorKind::Io)?;
                if byte != [0] {
                    return Err(ErrorKind::Protocol);
                }
                // Best effort: a close_notify keeps TLS servers from logging a truncation.
                let _ = stream.shutdown().await;
                Ok(())
            }
        }
    }

    fn reset(&mut self, _cause: ErrorKind) {}
}
