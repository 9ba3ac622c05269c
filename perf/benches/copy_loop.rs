//! The proxy's forwarding fast path in isolation: bytes copied between two connections by
//! `tokio::io::copy_bidirectional`, the loop an L4 proxy runs per connection. Over an in-memory
//! duplex (the copy loop alone) and over loopback TCP (with the kernel's socket costs).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const PAYLOAD: usize = 4 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Writes `PAYLOAD` bytes into `tx`, closes it, and counts what arrives on `rx` until EOF.
async fn drive<W, R>(mut tx: W, mut rx: R) -> u64
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    R: tokio::io::AsyncRead + Unpin,
{
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; CHUNK];
        for _ in 0..PAYLOAD / CHUNK {
            tx.write_all(&chunk).await.expect("write");
        }
        tx.shutdown().await.expect("shutdown");
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = rx.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    writer.await.expect("writer");
    got
}

/// client -> [copy_bidirectional] -> sink, all in memory.
async fn duplex_once() -> u64 {
    let (client, proxy_down) = tokio::io::duplex(CHUNK);
    let (mut proxy_up, sink) = tokio::io::duplex(CHUNK);
    let proxy = tokio::spawn(async move {
        let mut proxy_down = proxy_down;
        let _ = tokio::io::copy_bidirectional(&mut proxy_down, &mut proxy_up).await;
    });
    let (_client_rx, client_tx) = tokio::io::split(client);
    let (sink_rx, mut sink_tx) = tokio::io::split(sink);
    let got = drive(client_tx, sink_rx).await;
    // The sink never answers; closing its side ends the proxy's other direction too.
    sink_tx.shutdown().await.expect("shutdown");
    proxy.await.expect("proxy");
    got
}

/// client -> TCP -> [accept, copy_bidirectional] -> TCP -> sink, on 127.0.0.1.
async fn tcp_once(proxy_addr: std::net::SocketAddr, sink: &TcpListener) -> u64 {
    let client = TcpStream::connect(proxy_addr).await.expect("connect");
    let (sink_conn, _) = sink.accept().await.expect("sink accept");
    let (_crx, ctx) = client.into_split();
    let (srx, _stx) = sink_conn.into_split();
    drive(ctx, srx).await
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("copy_loop");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));

    group.bench_function("duplex_4MiB", |b| {
        b.iter(|| black_box(rt.block_on(duplex_once())))
    });

    let (proxy_addr, sink) = rt.block_on(async {
        let sink = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let sink_addr = sink.local_addr().expect("addr");
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy_addr = proxy.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let (mut down, _) = proxy.accept().await.expect("accept");
                let mut up = TcpStream::connect(sink_addr).await.expect("connect sink");
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
            }
        });
        (proxy_addr, sink)
    });
    group.bench_function("loopback_tcp_4MiB", |b| {
        b.iter(|| black_box(rt.block_on(tcp_once(proxy_addr, &sink))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
