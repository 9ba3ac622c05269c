//! Protocol detection on a plaintext stream: the HTTP/2 connection preface, an HTTP/1.x request
//! line, or else opaque TCP.
//!
//! [`classify`] is pure: it looks at the bytes read so far and says HTTP/1, HTTP/2, opaque, or
//! "need more bytes". [`detect`] drives it over a stream with a deadline. Three things end
//! detection early as opaque, so it never stalls a protocol it does not know:
//! - a byte that cannot belong to a request line (binary protocols are classified on their first
//!   byte);
//! - the *server* side becoming readable first (the caller passes that readiness: a
//!   server-speaks-first protocol such as SMTP or MySQL is forwarded the moment the server speaks);
//! - the timeout (the client said nothing; logged by the caller).
//!
//! The bytes read are handed back so the caller can replay them in front of the stream
//! ([`Prefixed`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest HTTP/1 request line detection reads before calling the stream opaque. Longer
/// request lines exist but are not worth buffering before we know what the stream is.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Longest method token accepted (the longest registered method is 17 bytes).
const MAX_METHOD: usize = 24;

/// What a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    Http2,
    /// Anything else.
    Opaque,
}

impl Protocol {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http/1",
            Self::Http2 => "http/2",
            Self::Opaque => "opaque",
        }
    }
}

/// The verdict on the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// Decided.
    Done(Protocol),
    /// Consistent with HTTP so far; read more.
    NeedMore,
}

/// Classifies the first bytes of a stream.
pub fn classify(buf: &[u8]) -> Classified {
    if buf.is_empty() {
        return Classified::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Classified::Done(Protocol::Http2)
        } else {
            Classified::NeedMore
        };
    }
    classify_http1(buf)
}

/// `method SP request-target SP HTTP/1.x CRLF`, byte by byte so that the first impossible byte
/// decides "opaque" without waiting for more.
fn classify_http1(buf: &[u8]) -> Classified {
    let opaque = Classified::Done(Protocol::Opaque);
    // Method: a token.
    let method_len = buf.iter().take_while(|b| is_tchar(**b)).count();
    if method_len > MAX_METHOD {
        return opaque;
    }
    let rest = &buf[method_len..];
    let Some((&first, rest)) = rest.split_first() else {
        return Classified::NeedMore;
    };
    if first != b' ' || method_len == 0 {
        return opaque;
    }
    // Request target: visible ASCII, no spaces.
    let target_len = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    let rest_after_target = &rest[target_len..];
    let Some((&sp, version)) = rest_after_target.split_first() else {
        return if buf.len() >= MAX_REQUEST_LINE {
            opaque
        } else {
            Classified::NeedMore
        };
    };
    if sp != b' ' || target_len == 0 || method_len + 1 + target_len >= MAX_REQUEST_LINE {
        return opaque;
    }
    // Version and line end: `HTTP/1.` DIGIT then CRLF (a bare LF is tolerated, as hyper does).
    const VERSION: &[u8] = b"HTTP/1.";
    let n = version.len().min(VERSION.len());
    if version[..n] != VERSION[..n] {
        return opaque;
    }
    if version.len() <= VERSION.len() {
        return Classified::NeedMore;
    }
    if !version[VERSION.len()].is_ascii_digit() {
        return opaque;
    }
    match version.get(VERSION.len() + 1) {
        None => Classified::NeedMore,
        Some(b'\n') => Classified::Done(Protocol::Http1),
        Some(b'\r') => match version.get(VERSION.len() + 2) {
            None => Classified::NeedMore,
            Some(b'\n') => Classified::Done(Protocol::Http1),
            Some(_) => opaque,
        },
        Some(_) => opaque,
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Detection settings of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectConfig {
    /// How long to wait for the client's first bytes before calling the stream opaque.
    pub timeout: Duration,
    /// Destination ports whose traffic is opaque without detection (server-speaks-first
    /// protocols and databases).
    pub opaque_ports: Vec<u16>,
}

/// linkerd2-proxy's default opaque ports: SMTP, MySQL, Galera, PostgreSQL, Redis,
/// Elasticsearch transport, memcached.
pub const DEFAULT_OPAQUE_PORTS: &[u16] = &[25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            opaque_ports: DEFAULT_OPAQUE_PORTS.to_vec(),
        }
    }
}

impl DetectConfig {
    /// Whether connections to `port` skip detection.
    pub fn skips(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
    }
}

/// Why detection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The bytes decided.
    Classified,
    /// The client sent nothing decisive within the timeout.
    Timeout,
    /// The server side became readable first: a server-speaks-first protocol.
    ServerSpoke,
    /// The client closed its side (or failed) before the bytes decided.
    ClientClosed,
}

/// The result of [`detect`]: the protocol, why detection ended, and the bytes read (to replay).
#[derive(Debug)]
pub struct Detection {
    /// The protocol to serve.
    pub protocol: Protocol,
    /// Why detection ended.
    pub ended: Ended,
    /// The bytes consumed from the stream, to put back in front of it.
    pub prefix: Bytes,
}

/// Reads from `io` until the bytes decide, `timeout` passes, or `server_spoke` resolves.
/// Callers that cannot watch the server pass [`std::future::pending`].
pub async fn detect<S, F>(io: &mut S, timeout: Duration, server_spoke: F) -> Detection
where
    S: AsyncRead + Unpin,
    F: Future<Output = ()>,
{
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    tokio::pin!(server_spoke);
    let ended = loop {
        if let Classified::Done(protocol) = classify(&buf) {
            return Detection {
                protocol,
                ended: Ended::Classified,
                prefix: buf.freeze(),
            };
        }
        let read = tokio::select! {
            biased;
            read = io.read_buf(&mut buf) => read,
            () = &mut deadline => break Ended::Timeout,
            () = &mut server_spoke => break Ended::ServerSpoke,
        };
        match read {
            Ok(0) | Err(_) => break Ended::ClientClosed,
            Ok(_) => {}
        }
    };
    Detection {
        protocol: Protocol::Opaque,
        ended,
        prefix: buf.freeze(),
    }
}

/// Detects the protocol of `io` unless `port` is an opaque port, and returns the stream with the
/// bytes read put back in front. Detection that ends on the timeout is logged: it is the one
/// case where a client waited on the proxy.
pub async fn sniff<S, F>(
    mut io: S,
    config: &DetectConfig,
    port: u16,
    server_spoke: F,
) -> (Detection, Prefixed<S>)
where
    S: AsyncRead + Unpin,
    F: Future<Output = ()>,
{
    if config.skips(port) {
        let detection = Detection {
            protocol: Protocol::Opaque,
            ended: Ended::Classified,
            prefix: Bytes::new(),
        };
        return (detection, Prefixed::new(Bytes::new(), io));
    }
    let detection = detect(&mut io, config.timeout, server_spoke).await;
    if detection.ended == Ended::Timeout {
        tracing::info!(port, timeout = ?config.timeout, "no protocol detected before the timeout; forwarding as opaque TCP");
    }
    let prefixed = Prefixed::new(detection.prefix.clone(), io);
    (detection, prefixed)
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix` before reading from `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn done(p: Protocol) -> Classified {
        Classified::Done(p)
    }

    #[test]
    fn http2_preface_needs_all_24_bytes() {
        for n in 1..H2_PREFACE.len() {
            assert_eq!(
                classify(&H2_PREFACE[..n]),
                Classified::NeedMore,
                "{n} bytes"
            );
        }
        assert_eq!(classify(H2_PREFACE), done(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(classify(&more), done(Protocol::Http2));
    }

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /a?b=c HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"GET http://x/ HTTP/1.1\n",
            b"M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(
                classify(line),
                done(Protocol::Http1),
                "{}",
                String::from_utf8_lossy(line)
            );
            // Every strict prefix is undecided or, never, a wrong verdict.
            for n in 1..line.len() {
                let got = classify(&line[..n]);
                assert!(
                    matches!(
                        got,
                        Classified::NeedMore | Classified::Done(Protocol::Http1)
                    ),
                    "{n}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn opaque_on_the_first_impossible_byte() {
        assert_eq!(classify(b"\x16\x03\x01"), done(Protocol::Opaque)); // TLS ClientHello
        assert_eq!(classify(b"\x00"), done(Protocol::Opaque));
        assert_eq!(classify(b"*1\r\n$4\r\nPING"), done(Protocol::Opaque)); // Redis
        assert_eq!(classify(b"GET  / HTTP/1.1"), done(Protocol::Opaque)); // empty target
        assert_eq!(classify(b" GET"), done(Protocol::Opaque));
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), done(Protocol::Opaque));
        assert_eq!(classify(b"GET / HTTX"), done(Protocol::Opaque));
        assert_eq!(classify(b"GET / HTTP/1.1\rX"), done(Protocol::Opaque));
        assert_eq!(classify(b"GET /\x01"), done(Protocol::Opaque));
        assert_eq!(classify(b"PRI * HTTP/2.1\r\n"), done(Protocol::Opaque));
        assert_eq!(classify(b"PRX"), Classified::NeedMore); // could still be a method
        assert_eq!(classify(&[b'A'; 40]), done(Protocol::Opaque)); // method too long
        assert_eq!(classify(b"hello world\n"), done(Protocol::Opaque));
    }

    #[test]
    fn a_request_line_too_long_to_buffer_is_opaque() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE, b'a');
        assert_eq!(classify(&line), done(Protocol::Opaque));
        assert_eq!(
            classify(&line[..MAX_REQUEST_LINE - 1]),
            Classified::NeedMore
        );
    }

    proptest::proptest! {
        /// A verdict, once given, is never contradicted by more bytes (detection may stop early).
        #[test]
        fn verdicts_are_final(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), line in "[A-Z]{1,8} /[a-z/]{0,20} HTTP/1\\.[01]\r\n") {
            for bytes in [data.clone(), [line.as_bytes(), &data].concat(), [H2_PREFACE, &data].concat()] {
                let full = classify(&bytes);
                if let Some(early) = (0..bytes.len()).map(|n| classify(&bytes[..n])).find(|c| *c != Classified::NeedMore) {
                    proptest::prop_assert_eq!(early, full);
                }
            }
        }
    }

    #[test]
    fn opaque_ports_skip_detection() {
        let config = DetectConfig::default();
        assert!(config.skips(5432) && config.skips(25));
        assert!(!config.skips(8080));
    }

    #[tokio::test]
    async fn detect_reads_across_segments_and_replays_them() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            client.write_all(b"GET /x HT").await.unwrap();
            tokio::task::yield_now().await;
            client
                .write_all(b"TP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            client
        });
        let d = detect(&mut server, Duration::from_secs(5), std::future::pending()).await;
        assert_eq!((d.protocol, d.ended), (Protocol::Http1, Ended::Classified));
        let _client = writer.await.unwrap();
        let mut replay = Prefixed::new(d.prefix, server);
        let mut line = [0u8; 14];
        replay.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"GET /x HTTP/1.");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_clients_fall_back_to_opaque_at_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let d = detect(
            &mut server,
            Duration::from_millis(300),
            std::future::pending(),
        )
        .await;
        assert_eq!((d.protocol, d.ended), (Protocol::Opaque, Ended::Timeout));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert!(d.prefix.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_speaks_first_ends_detection_at_once() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let d = detect(&mut server, Duration::from_secs(10), async {}).await;
        assert_eq!(
            (d.protocol, d.ended),
            (Protocol::Opaque, Ended::ServerSpoke)
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_client_that_closes_early_is_opaque_with_its_bytes_kept() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HT").await.unwrap();
        drop(client);
        let d = detect(&mut server, Duration::from_secs(5), std::future::pending()).await;
        assert_eq!(
            (d.protocol, d.ended),
            (Protocol::Opaque, Ended::ClientClosed)
        );
        assert_eq!(&d.prefix[..], b"GET / HT");
    }
}
