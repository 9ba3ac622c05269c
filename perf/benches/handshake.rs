//! Full and resumed mTLS handshakes in memory: a rustls client and server with meshguard's one TLS
//! profile (identity's `TlsProfile`, SVIDs from the test CA) pumping records through a buffer, no
//! sockets. This is the handshake cost a proxy pays per new connection, on one core.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use meshguard_identity::test_ca::TestCa;
use meshguard_identity::{ExpectedIdentities, TlsProfile};
use rustls::{
    ClientConfig, ClientConnection, Connection, HandshakeKind, ServerConfig, ServerConnection,
};
use rustls_pki_types::ServerName;

/// Moves every pending TLS record from `from` to `to` and lets `to` process it.
fn transfer(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write to a Vec");
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read from a slice");
        to.process_new_packets().expect("handshake succeeds");
    }
}

/// One complete handshake, including the session tickets the server sends after it.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> Option<HandshakeKind> {
    let name = ServerName::try_from("upstream.bank.example").expect("valid name");
    let mut c = Connection::Client(ClientConnection::new(client.clone(), name).expect("client"));
    let mut s = Connection::Server(ServerConnection::new(server.clone()).expect("server"));
    let mut buf = Vec::with_capacity(16 * 1024);
    while c.is_handshaking() || s.is_handshaking() {
        transfer(&mut c, &mut s, &mut buf);
        transfer(&mut s, &mut c, &mut buf);
    }
    transfer(&mut s, &mut c, &mut buf);
    c.handshake_kind()
}

fn configs(resume: bool) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let ca = TestCa::new("bank.example");
    let server = TlsProfile::new(ca.rotating("/ns/perf/upstream"))
        .server_config()
        .expect("server config");
    let expected =
        ExpectedIdentities::parse(&["spiffe://bank.example/ns/perf/upstream"]).expect("valid ID");
    let client = TlsProfile::new(ca.rotating("/ns/perf/loadgen"))
        .expect(expected)
        .client_config()
        .expect("client config");
    let client = if resume {
        client
    } else {
        let mut c = Arc::unwrap_or_clone(client);
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    (client, server)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("mtls_handshake");

    let (client, server) = configs(false);
    assert_eq!(handshake(&client, &server), Some(HandshakeKind::Full));
    group.bench_function("full", |b| {
        b.iter(|| black_box(handshake(&client, &server)))
    });

    let (client, server) = configs(true);
    handshake(&client, &server);
    assert_eq!(handshake(&client, &server), Some(HandshakeKind::Resumed));
    group.bench_function("resumed", |b| {
        b.iter(|| black_box(handshake(&client, &server)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
