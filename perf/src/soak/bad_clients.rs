//! The bad clients of the soak, one per attack in docs/security.md that a network peer can make,
//! each run from 127.0.0.2 or above: failed handshakes count against the source address
//! (`[lockout.unauthenticated]`), and the good traffic from 127.0.0.1 must never share that fate.
//!
//! Each client does one attempt and reports what the sidecar did. Every kind is expected not to be
//! served: a 2xx answer, or any HTTP answer where the handshake itself should have failed, is a
//! security failure the soak reports.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use super::attacker;
use crate::compare::pki::{Pki, SvidFiles};

/// Longest one attempt may take before it is abandoned (and counted as refused: nothing served).
const ATTEMPT: Duration = Duration::from_secs(10);

/// One kind of bad client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadClient {
    /// TLS without a client certificate.
    NoClientCert,
    /// A certificate for an allowed SPIFFE ID, signed by a CA nobody trusts.
    UntrustedCa,
    /// An SVID of the right CA that expired yesterday.
    ExpiredSvid,
    /// A valid SVID that no policy allows (403; feeds lockout by identity).
    DeniedIdentity,
    /// Plaintext HTTP to the mTLS port (no plaintext fallback).
    PlaintextHttp,
    /// 1 KiB of random bytes.
    Garbage,
    /// Connects and says nothing for 2 s.
    SilentSocket,
    /// The first 43 bytes of a ClientHello, then 2 s of silence.
    HalfClientHello,
    /// `..` hidden as `%2e%2e` to climb out of a path rule (400 before policy).
    EncodedTraversal,
    /// Request target and `Host` naming different hosts (400).
    ConflictingHost,
    /// 64 KiB of headers.
    OversizedHeaders,
    /// A header line dripped one byte per 250 ms, then dropped (slowloris).
    SlowHeaders,
}

impl BadClient {
    pub const ALL: [BadClient; 12] = [
        BadClient::NoClientCert,
        BadClient::UntrustedCa,
        BadClient::ExpiredSvid,
        BadClient::DeniedIdentity,
        BadClient::PlaintextHttp,
        BadClient::Garbage,
        BadClient::SilentSocket,
        BadClient::HalfClientHello,
        BadClient::EncodedTraversal,
        BadClient::ConflictingHost,
        BadClient::OversizedHeaders,
        BadClient::SlowHeaders,
    ];

    /// Whether the sidecar must refuse this one before any HTTP exchange.
    fn refused_at_handshake(self) -> bool {
        matches!(
            self,
            BadClient::NoClientCert
                | BadClient::UntrustedCa
                | BadClient::ExpiredSvid
                | BadClient::PlaintextHttp
                | BadClient::Garbage
                | BadClient::SilentSocket
                | BadClient::HalfClientHello
        )
    }
}

/// What the sidecar did with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The handshake failed, or the connection closed (or stayed silent) with no HTTP answer.
    Refused,
    /// An HTTP answer with this status.
    Status(u16),
}

impl Outcome {
    /// The key in the report: `refused` or the status code.
    pub fn key(self) -> String {
        match self {
            Outcome::Refused => "refused".into(),
            Outcome::Status(code) => code.to_string(),
        }
    }

    /// True when `kind` got what it must never get.
    pub fn is_breach(self, kind: BadClient) -> bool {
        match self {
            Outcome::Refused => false,
            Outcome::Status(code) => kind.refused_at_handshake() || (200..300).contains(&code),
        }
    }
}

/// The certificates the bad clients present, made once per soak.
#[derive(Debug)]
pub struct Arsenal {
    target: SocketAddr,
    anonymous: Arc<ClientConfig>,
    untrusted: Arc<ClientConfig>,
    expired: Arc<ClientConfig>,
    intruder: Arc<ClientConfig>,
    prober: Arc<ClientConfig>,
}

impl Arsenal {
    /// `pki` is the mesh's own CA (for the expired SVID); `foreign` a CA outside the bundle.
    pub fn new(
        target: SocketAddr,
        pki: &Pki,
        foreign: &Pki,
        intruder: &SvidFiles,
        prober: &SvidFiles,
    ) -> anyhow::Result<Arsenal> {
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let forged = foreign.sign("load-generator", now - day, now + day)?;
        let expired = pki.sign("soak-expired", now - 2 * day, now - day)?;
        Ok(Arsenal {
            target,
            anonymous: attacker::client_config(None)?,
            untrusted: attacker::client_config(Some((&forged.chain_pem, &forged.key_pem)))?,
            expired: attacker::client_config(Some((&expired.chain_pem, &expired.key_pem)))?,
            intruder: files_config(intruder)?,
            prober: files_config(prober)?,
        })
    }

    /// Runs one attempt of `kind` from source address 127.0.0.`host` (2..=254).
    pub async fn attempt(&self, kind: BadClient, host: u8) -> Outcome {
        match tokio::time::timeout(ATTEMPT, self.run(kind, host)).await {
            Ok(Ok(outcome)) => outcome,
            // A connection the sidecar reset or closed, or an attempt it let time out: not served.
            Ok(Err(_)) | Err(_) => Outcome::Refused,
        }
    }

    async fn run(&self, kind: BadClient, host: u8) -> std::io::Result<Outcome> {
        let mut tcp = connect_from(host, self.target).await?;
        let request: Vec<u8> = match kind {
            BadClient::NoClientCert
            | BadClient::UntrustedCa
            | BadClient::ExpiredSvid
            | BadClient::DeniedIdentity => get("/"),
            BadClient::EncodedTraversal => get("/public/%2e%2e/admin"),
            BadClient::ConflictingHost => {
                b"GET http://one.example/ HTTP/1.1\r\nhost: two.example\r\n\r\n".to_vec()
            }
            BadClient::OversizedHeaders => {
                let mut r = b"GET / HTTP/1.1\r\nhost: soak\r\n".to_vec();
                for i in 0..1024 {
                    r.extend_from_slice(format!("x-pad-{i}: {}\r\n", "a".repeat(56)).as_bytes());
                }
                r.extend_from_slice(b"\r\n");
                r
            }
            BadClient::PlaintextHttp => return raw(&mut tcp, &get("/"), None).await,
            BadClient::Garbage => {
                let bytes: Vec<u8> = (0..1024).map(|_| rand::random::<u8>()).collect();
                return raw(&mut tcp, &bytes, None).await;
            }
            BadClient::SilentSocket => {
                return raw(&mut tcp, &[], Some(Duration::from_secs(2))).await;
            }
            BadClient::HalfClientHello => {
                let mut hello = vec![
                    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
                ];
                hello.extend((0..32).map(|_| rand::random::<u8>()));
                return raw(&mut tcp, &hello, Some(Duration::from_secs(2))).await;
            }
            BadClient::SlowHeaders => Vec::new(),
        };
        let config = match kind {
            BadClient::NoClientCert => &self.anonymous,
            BadClient::UntrustedCa => &self.untrusted,
            BadClient::ExpiredSvid => &self.expired,
            BadClient::DeniedIdentity => &self.intruder,
            _ => &self.prober,
        };
        let name = ServerName::try_from("sidecar.soak").map_err(std::io::Error::other)?;
        let mut tls = TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await?;
        if kind == BadClient::SlowHeaders {
            tls.write_all(b"GET / HTTP/1.1\r\nhost: soak\r\nx-slow: ")
                .await?;
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                tls.write_all(b"z").await?;
            }
            // Dropped here, mid-header: the sidecar must free the connection.
            return Ok(Outcome::Refused);
        }
        tls.write_all(&request).await?;
        read_status(&mut tls).await
    }
}

fn files_config(files: &SvidFiles) -> anyhow::Result<Arc<ClientConfig>> {
    let chain = std::fs::read_to_string(&files.chain)?;
    let key = std::fs::read_to_string(&files.key)?;
    attacker::client_config(Some((&chain, &key)))
}

/// A TCP connection to `target` from 127.0.0.`host`.
async fn connect_from(host: u8, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))?;
    socket.connect(target).await
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n").into_bytes()
}

/// Writes `bytes` in the clear, optionally stays silent for `hold`, and reads whatever comes back.
async fn raw(
    tcp: &mut TcpStream,
    bytes: &[u8],
    hold: Option<Duration>,
) -> std::io::Result<Outcome> {
    tcp.write_all(bytes).await?;
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
        return Ok(Outcome::Refused);
    }
    read_status(tcp).await
}

/// Reads until the status line of an HTTP/1.1 answer, or EOF (refused).
async fn read_status<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<Outcome> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < 64 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(code) = status_code(&got) {
            return Ok(Outcome::Status(code));
        }
    }
    Ok(Outcome::Refused)
}

/// The code of `HTTP/1.x NNN ...` once the first line is complete.
fn status_code(bytes: &[u8]) -> Option<u16> {
    let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&bytes[..line_end]).ok()?;
    let rest = line.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_and_anything_else_is_not() {
        assert_eq!(status_code(b"HTTP/1.1 403 Forbidden\r\n"), Some(403));
        assert_eq!(status_code(b"HTTP/1.0 200 OK\r\nx"), Some(200));
        assert_eq!(status_code(b"HTTP/1.1 403 Forb"), None);
        assert_eq!(status_code(b"\x15\x03\x03\x00\x02\x02\x28\r\n"), None);
    }

    #[test]
    fn an_answer_where_the_handshake_should_fail_is_a_breach() {
        assert!(Outcome::Status(400).is_breach(BadClient::PlaintextHttp));
        assert!(Outcome::Status(200).is_breach(BadClient::DeniedIdentity));
        assert!(!Outcome::Status(403).is_breach(BadClient::DeniedIdentity));
        assert!(!Outcome::Refused.is_breach(BadClient::NoClientCert));
    }
}
