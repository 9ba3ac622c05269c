//! Costs on the connection path: validating a presented SVID, and a full and a resumed mTLS
//! handshake through the meshguard TLS profile, in memory (no sockets, both sides on one core).
//! Run with `cargo bench -p meshguard-identity --bench handshake`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use meshguard_identity::test_ca::TestCa;
use meshguard_identity::{TlsProfile, unix_time, validate_svid};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

fn validate(c: &mut Criterion) {
    let ca = TestCa::new("bank.example");
    let issued = ca.issue("/ns/payments/sa/payments");
    let bundles = ca.bundle_set();
    let now = unix_time(SystemTime::now());
    c.bench_function("validate_svid", |b| {
        b.iter(|| validate_svid(black_box(&issued.chain), &bundles, now).unwrap())
    });
}

/// Moves TLS records between the two sides until neither has anything to send.
fn handshake(client_cfg: &Arc<ClientConfig>, server_cfg: &Arc<ServerConfig>) -> bool {
    let name = ServerName::try_from("ledger.bank.example").unwrap();
    let mut client = ClientConnection::new(client_cfg.clone(), name).unwrap();
    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let mut moved = false;
        while client.wants_write() {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            moved = true;
        }
        while server.wants_write() {
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    matches!(
        client.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    )
}

fn handshakes(c: &mut Criterion) {
    let ca = TestCa::new("bank.example");
    let server_cfg = TlsProfile::new(ca.rotating("/ns/ledger/sa/ledger"))
        .server_config()
        .unwrap();
    let client = TlsProfile::new(ca.rotating("/ns/payments/sa/payments"));

    c.bench_function("mtls_handshake_full", |b| {
        b.iter_batched(
            || client.client_config().unwrap(),
            |fresh| assert!(!handshake(&fresh, &server_cfg)),
            criterion::BatchSize::SmallInput,
        )
    });

    let warm = client.client_config().unwrap();
    handshake(&warm, &server_cfg);
    c.bench_function("mtls_handshake_resumed", |b| {
        b.iter(|| assert!(handshake(&warm, &server_cfg)))
    });
}

criterion_group!(benches, validate, handshakes);
criterion_main!(benches);
