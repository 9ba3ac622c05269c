//! Hostile HTTP on the sidecar's listener: request smuggling, invalid header bytes, oversized
//! headers, slowloris, HTTP/2 rapid reset and CONTINUATION floods. Each is refused or cut off,
//! counted, and other connections carry on.

#![allow(clippy::unwrap_used)] // test helpers

mod http_support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use http_support::*;
use meshguard_proxy::http::settings::HttpSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for "the proxy reacts"; tests finish far earlier.
const BOUND: Duration = Duration::from_secs(10);

/// Sends raw bytes and reads until the proxy closes the connection.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

async fn still_serves(pair: &Pair) {
    let mut client = h1_client(pair.outbound).await;
    let request = Request::get("/public/ok")
        .header("host", "ledger")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        client.send_request(request).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let pair = start_pair(HttpSettings::default()).await;
    // A front end that trusts Content-Length would see one request; one that trusts
    // Transfer-Encoding would see a second, `GET /admin`. The proxy re-frames every request and
    // authorizes the second on its own.
    let attack = b"POST /public/a HTTP/1.1\r\nHost: ledger\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n\
                   0\r\n\r\nGET /admin HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(pair.outbound, attack).await;
    // Transfer-Encoding wins (RFC 9112 §6.3), the body is empty, and the connection is closed
    // after the response so nothing after the body is read as a request.
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("connection: close"),
        "{reply}"
    );
    assert_eq!(pair.seen.paths(), ["/public/a"]);
    still_serves(&pair).await;
}

#[tokio::test]
async fn two_content_lengths_are_refused() {
    let pair = start_pair(HttpSettings::default()).await;
    let attack = b"POST /public/a HTTP/1.1\r\nHost: ledger\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\nhelloGET /admin HTTP/1.1\r\n\r\n";
    let reply = raw_exchange(pair.outbound, attack).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(pair.seen.paths().is_empty(), "{:?}", pair.seen.paths());
    assert_eq!(
        pair.outbound_metrics
            .refused_total("outbound:test", "bad_request"),
        1
    );
    still_serves(&pair).await;
}

#[tokio::test]
async fn invalid_header_bytes_are_refused() {
    let pair = start_pair(HttpSettings::default()).await;
    for attack in [
        &b"GET /public/a HTTP/1.1\r\nHost: ledger\r\nX-Bad: a\x01b\r\n\r\n"[..],
        b"GET /public/a HTTP/1.1\r\nHost: ledger\r\nBad Name: x\r\n\r\n",
        b"GET /public/a HTTP/1.1\r\nHost: ledger\r\n X-Folded: x\r\n\r\n",
        b"GET /public/\x7f HTTP/1.1\r\nHost: ledger\r\n\r\n",
    ] {
        let reply = raw_exchange(pair.outbound, attack).await;
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{:?}: {reply}",
            String::from_utf8_lossy(attack)
        );
    }
    assert!(pair.seen.paths().is_empty());
    assert_eq!(
        pair.outbound_metrics
            .refused_total("outbound:test", "bad_request"),
        4
    );
    still_serves(&pair).await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_the_connection_closes() {
    let pair = start_pair(HttpSettings {
        max_header_bytes: 16 * 1024,
        ..HttpSettings::default()
    })
    .await;
    let mut attack = b"GET /public/a HTTP/1.1\r\nHost: ledger\r\n".to_vec();
    for i in 0..2000 {
        attack.extend_from_slice(format!("x-filler-{i}: {}\r\n", "a".repeat(40)).as_bytes());
    }
    attack.extend_from_slice(b"\r\n");
    let reply = raw_exchange(pair.outbound, &attack).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(
        pair.outbound_metrics
            .refused_total("outbound:test", "header_too_large"),
        1
    );

    // HTTP/2: a header list over the limit is refused without reaching the app.
    let mut client = h2_client(pair.outbound).await;
    let mut request = Request::get("http://ledger/public/big")
        .body(Full::new(Bytes::new()))
        .unwrap();
    request
        .headers_mut()
        .insert("x-big", "b".repeat(32 * 1024).parse().unwrap());
    match client.send_request(request).await {
        Ok(response) => assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    assert!(pair.seen.paths().is_empty());
    still_serves(&pair).await;
}

#[tokio::test]
async fn slowloris_is_cut_off_while_others_are_served() {
    let settings = HttpSettings {
        header_read_timeout: Duration::from_millis(300),
        ..HttpSettings::default()
    };
    let pair = start_pair(settings).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(pair.outbound).await.unwrap();
        stream
            .write_all(b"GET /public/a HTTP/1.1\r\nHost: ledger\r\nX-Trickle: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Meanwhile a normal client is served.
    still_serves(&pair).await;
    for mut stream in slow {
        let mut out = Vec::new();
        // The proxy closes each one (hyper answers 408 or just closes).
        let read = tokio::time::timeout(BOUND, stream.read_to_end(&mut out))
            .await
            .expect("slowloris connection closed");
        assert!(read.is_ok() || read.is_err());
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    assert!(pair.seen.paths().iter().all(|p| p == "/public/ok"));
}

// === HTTP/2 frames, written by hand so the attacks are exact ===

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `GET http://x/` with static-table HPACK entries only (no dynamic table state).
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn preface() -> Vec<u8> {
    let mut out = meshguard_proxy::detect::H2_PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// Reads until EOF or reset, returning what arrived; `None` if the connection stayed open.
async fn read_until_closed(stream: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = tokio::time::timeout(BOUND, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed.ok().map(|()| out)
}

/// Whether `bytes` hold a GOAWAY frame with `code`.
fn has_goaway(bytes: &[u8], code: u32) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        if bytes[at + 3] == 0x7 && at + 9 + 8 <= bytes.len() {
            let p = &bytes[at + 9..];
            if u32::from_be_bytes([p[4], p[5], p[6], p[7]]) == code {
                return true;
            }
        }
        at += 9 + len;
    }
    false
}

#[tokio::test]
async fn http2_rapid_reset_gets_goaway_enhance_your_calm() {
    let pair = start_pair(HttpSettings::default()).await;
    let stream = TcpStream::connect(pair.outbound).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let mut attack = preface();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        attack.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, GET_BLOCK));
        attack.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&attack).await;
        write
    });
    let received = read_until_closed(&mut read)
        .await
        .expect("the proxy closes a rapid-reset connection");
    assert!(
        has_goaway(&received, 0xb),
        "GOAWAY ENHANCE_YOUR_CALM expected"
    );
    drop(writer.await);
    assert!(
        pair.seen.paths().len() < 5000,
        "the flood was cut short: {}",
        pair.seen.paths().len()
    );
    assert!(
        pair.outbound_metrics
            .refused_total("outbound:test", "h2_abuse")
            >= 1
    );
    still_serves(&pair).await;
}

#[tokio::test]
async fn http2_continuation_flood_is_cut_off_with_memory_bounded() {
    let pair = start_pair(HttpSettings {
        max_header_bytes: 16 * 1024,
        ..HttpSettings::default()
    })
    .await;
    let stream = TcpStream::connect(pair.outbound).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let mut start = preface();
    start.extend(frame(HEADERS, END_STREAM, 1, GET_BLOCK));
    write.write_all(&start).await.unwrap();
    // Endless CONTINUATION frames, never END_HEADERS, each full of small literal headers.
    let mut block = Vec::new();
    while block.len() + 11 <= 16 * 1024 {
        block.extend_from_slice(&[
            0x00, 0x03, b'x', b'-', b'a', 0x05, b'a', b'a', b'a', b'a', b'a',
        ]);
    }
    let continuation = frame(CONTINUATION, 0, 1, &block);
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < 64 << 20 {
            if write.write_all(&continuation).await.is_err() {
                break;
            }
            sent += continuation.len();
        }
        sent
    });
    let received = read_until_closed(&mut read)
        .await
        .expect("the proxy closes a CONTINUATION flood");
    let sent = writer.await.unwrap();
    assert!(
        sent < 64 << 20,
        "the proxy kept reading a flood of {sent} bytes"
    );
    assert!(
        has_goaway(&received, 0xb),
        "GOAWAY ENHANCE_YOUR_CALM expected"
    );
    assert!(
        pair.outbound_metrics
            .refused_total("outbound:test", "h2_abuse")
            >= 1
    );
    assert!(pair.seen.paths().is_empty());
    still_serves(&pair).await;
}
