//! Test harness: a real TLS server on 127.0.0.1:0 that reports each handshake's outcome and then
//! echoes lines, and a client connector. Shared by the handshake, rotation and interop tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use meshguard_identity::{SpiffeId, TlsInfo, peer_spiffe_id, tls_info};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// What the server learned from one handshake.
#[derive(Debug)]
pub struct Accepted {
    pub peer: Result<SpiffeId, String>,
    pub info: TlsInfo,
}

/// How the server answers after the handshake.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// Each line `x` is answered with `echo <peer id>: x`.
    Echo,
    /// One HTTP/1.1 request is answered with 200 and the peer's SPIFFE ID as the body.
    Http,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub handshakes: mpsc::UnboundedReceiver<Result<Accepted, io::Error>>,
}

impl TestServer {
    pub async fn start(config: Arc<ServerConfig>, reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, handshakes) = mpsc::unbounded_channel();
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let (_, conn) = tls.get_ref();
                            let peer = peer_spiffe_id(conn).map_err(|e| e.to_string());
                            let info = tls_info(conn);
                            let _ = tx.send(Ok(Accepted {
                                peer: peer.clone(),
                                info,
                            }));
                            let peer_text = peer.map(|p| p.to_string()).unwrap_or_else(|e| e);
                            let _ = serve(tls, reply, peer_text).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            }
        });
        Self { addr, handshakes }
    }

    /// The outcome of the next handshake the server saw.
    pub async fn next_handshake(&mut self) -> Result<Accepted, io::Error> {
        self.handshakes.recv().await.expect("server task ended")
    }
}

async fn serve(tls: server::TlsStream<TcpStream>, reply: Reply, peer: String) -> io::Result<()> {
    let (read, mut write) = tokio::io::split(tls);
    let mut lines = BufReader::new(read).lines();
    match reply {
        Reply::Echo => {
            while let Some(line) = lines.next_line().await? {
                write
                    .write_all(format!("echo {peer}: {line}\n").as_bytes())
                    .await?;
                write.flush().await?;
            }
        }
        Reply::Http => {
            while let Some(line) = lines.next_line().await? {
                if line.is_empty() {
                    break;
                }
            }
            let body = format!("hello {peer}\n");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            write.write_all(response.as_bytes()).await?;
            write.shutdown().await?;
        }
    }
    Ok(())
}

/// Connects and completes the client side of the handshake.
pub async fn connect(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
) -> io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // SPIFFE verification ignores the server name; it only selects the session-cache entry.
    let name = ServerName::try_from("meshguard.test").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// Sends one line and reads the answer line (an error if the server refused us).
pub async fn round_trip(tls: &mut client::TlsStream<TcpStream>, line: &str) -> io::Result<String> {
    tls.write_all(format!("{line}\n").as_bytes()).await?;
    tls.flush().await?;
    let mut reader = BufReader::new(tls);
    let mut answer = String::new();
    let n = reader.read_line(&mut answer).await?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    Ok(answer.trim_end().to_owned())
}

/// The rustls error inside an I/O error from tokio-rustls.
pub fn tls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}
