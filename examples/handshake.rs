//! `cargo run --example handshake`: two meshguard endpoints complete an mTLS handshake in process.
//!
//! A throwaway CA (in memory) issues an SVID to a server and to a client; both build their TLS
//! configs from meshguard's one TLS profile, connect over 127.0.0.1, and each prints the SPIFFE ID
//! it verified on the other side, with the negotiated TLS version, cipher suite and key-exchange
//! group. Exits non-zero if any of that is not what the profile promises (TLS 1.3, X25519MLKEM768,
//! the expected IDs).

use std::time::Duration;

use anyhow::{Context as _, bail};
use meshguard_identity::test_ca::TestCa;
use meshguard_identity::{ExpectedIdentities, TlsInfo, TlsProfile, peer_spiffe_id, tls_info};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TRUST_DOMAIN: &str = "bank.example";
const SERVER_ID: &str = "spiffe://bank.example/ns/ledger/sa/ledger";
const CLIENT_ID: &str = "spiffe://bank.example/ns/payments/sa/payments";
const ALPN: &str = "meshguard/demo";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(20), run())
        .await
        .context("the handshake did not complete within 20 s")?
}

async fn run() -> anyhow::Result<()> {
    let ca = TestCa::new(TRUST_DOMAIN);
    println!("throwaway CA for trust domain {TRUST_DOMAIN} created in memory");

    let server_config = TlsProfile::new(ca.rotating("/ns/ledger/sa/ledger"))
        .with_alpn([ALPN])
        .server_config()?;
    let client_config = TlsProfile::new(ca.rotating("/ns/payments/sa/payments"))
        .with_alpn([ALPN])
        .expect(ExpectedIdentities::parse(&[SERVER_ID])?)
        .client_config()?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("server listening on {addr}");

    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = TlsAcceptor::from(server_config).accept(tcp).await?;
        let (_, conn) = tls.get_ref();
        let peer = peer_spiffe_id(conn)?;
        let info = tls_info(conn);
        tls.write_all(format!("hello {peer}\n").as_bytes()).await?;
        tls.shutdown().await?;
        anyhow::Ok((peer, info))
    });

    let tcp = TcpStream::connect(addr).await?;
    // SPIFFE peers are authenticated by their URI SAN; the server name only keys the session cache.
    let name = ServerName::try_from("ledger.bank.example")?;
    let mut tls = TlsConnector::from(client_config)
        .connect(name, tcp)
        .await
        .context("client handshake failed")?;
    let (_, conn) = tls.get_ref();
    let server_id = peer_spiffe_id(conn)?;
    let client_info = tls_info(conn);
    let mut greeting = String::new();
    tls.read_to_string(&mut greeting).await?;

    let (client_id, server_info) = server.await.context("server task panicked")??;

    println!("client verified server: {server_id}");
    println!("server verified client: {client_id}");
    println!("server said:            {}", greeting.trim_end());
    print_info("client side", &client_info);
    print_info("server side", &server_info);

    let mut problems = Vec::new();
    if server_id.as_str() != SERVER_ID {
        problems.push(format!("server ID {server_id}, expected {SERVER_ID}"));
    }
    if client_id.as_str() != CLIENT_ID {
        problems.push(format!("client ID {client_id}, expected {CLIENT_ID}"));
    }
    for (side, info) in [("client", &client_info), ("server", &server_info)] {
        if info.version.as_deref() != Some("TLSv1_3") {
            problems.push(format!(
                "{side} negotiated {:?}, expected TLSv1_3",
                info.version
            ));
        }
        if info.kx_group.as_deref() != Some("X25519MLKEM768") {
            problems.push(format!(
                "{side} key exchange {:?}, expected X25519MLKEM768",
                info.kx_group
            ));
        }
        if info.alpn.as_deref() != Some(ALPN) {
            problems.push(format!("{side} ALPN {:?}, expected {ALPN}", info.alpn));
        }
    }
    if !problems.is_empty() {
        bail!("handshake check failed:\n  {}", problems.join("\n  "));
    }
    println!("OK: mutual TLS 1.3 with X25519MLKEM768 between two SPIFFE identities");
    Ok(())
}

fn print_info(side: &str, info: &TlsInfo) {
    let none = "-";
    println!(
        "{side}: version {}  cipher suite {}  key exchange {}  ALPN {}",
        info.version.as_deref().unwrap_or(none),
        info.cipher_suite.as_deref().unwrap_or(none),
        info.kx_group.as_deref().unwrap_or(none),
        info.alpn.as_deref().unwrap_or(none),
    );
}
