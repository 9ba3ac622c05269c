//! The forwarding fast path: copy bytes both ways between two streams until both sides are done.
//!
//! Each direction owns one buffer for the life of the connection (no allocation per chunk). It
//! starts small so that idle connections stay cheap, and doubles (up to [`MAX_BUFFER`]) only when a
//! read fills it completely, which is what a bulk flow does. A direction reads again only after its
//! buffer was written out, so a slow reader slows its writer and memory stays bounded. When one side
//! ends its stream (EOF) the other side's write half is shut down (half-close) and the other
//! direction keeps flowing. A connection with no bytes either way for the idle timeout is closed.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The buffer a direction starts with.
pub const INITIAL_BUFFER: usize = 2 * 1024;
/// The largest a direction's buffer grows for a bulk flow.
pub const MAX_BUFFER: usize = 64 * 1024;

/// How a copy ended, with the bytes moved each way up to that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOutcome {
    /// Bytes from `a` to `b`.
    pub a_to_b: u64,
    /// Bytes from `b` to `a`.
    pub b_to_a: u64,
    /// Why it ended.
    pub end: CopyEnd,
}

/// Why a copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyEnd {
    /// Both sides finished their streams.
    Completed,
    /// No bytes moved either way for the idle timeout.
    IdleTimeout,
    /// Reading from or writing to `a` failed.
    ErrorOnA(io::ErrorKind),
    /// Reading from or writing to `b` failed.
    ErrorOnB(io::ErrorKind),
}

/// Copies `a -> b` and `b -> a` until both directions are finished, one fails, or the connection
/// is idle for `idle`.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B, idle: Duration) -> CopyOutcome
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::new();
    let mut b_to_a = Direction::new();
    let mut idle_timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(idle));
    let end = poll_fn(|cx| {
        let before = (a_to_b.moved, b_to_a.moved);
        let forward = a_to_b.poll_copy(cx, &mut *a, &mut *b);
        let backward = b_to_a.poll_copy(cx, &mut *b, &mut *a);
        match (forward, backward) {
            (Poll::Ready(Err(Side::Reader(e))), _) | (_, Poll::Ready(Err(Side::Writer(e)))) => {
                return Poll::Ready(CopyEnd::ErrorOnA(e.kind()));
            }
            (Poll::Ready(Err(Side::Writer(e))), _) | (_, Poll::Ready(Err(Side::Reader(e)))) => {
                return Poll::Ready(CopyEnd::ErrorOnB(e.kind()));
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(CopyEnd::Completed),
            _ => {}
        }
        if (a_to_b.moved, b_to_a.moved) != before {
            idle_timer.as_mut().reset(Instant::now() + idle);
        }
        match idle_timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(CopyEnd::IdleTimeout),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    CopyOutcome {
        a_to_b: a_to_b.moved,
        b_to_a: b_to_a.moved,
        end,
    }
}

/// Which side of a direction failed.
enum Side {
    Reader(io::Error),
    Writer(io::Error),
}

/// One direction's state: its buffer, the unwritten part of it, and whether the reader ended.
struct Direction {
    buf: Vec<u8>,
    /// Bytes `[start, end)` of `buf` are read and not yet written.
    start: usize,
    end: usize,
    read_done: bool,
    shut_down: bool,
    moved: u64,
}

// === impl Direction ===

impl Direction {
    fn new() -> Self {
        Self {
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            read_done: false,
            shut_down: false,
            moved: 0,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<(), Side>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.start == self.end && !self.read_done {
                // The buffer is drained: grow it if the last read filled it (a bulk flow).
                let mut read_buf = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Reader(e))),
                    Poll::Pending => {
                        // Nothing to read: push out whatever the writer still buffers.
                        ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(Side::Writer)?;
                        return Poll::Pending;
                    }
                }
                let n = read_buf.filled().len();
                if n == 0 {
                    self.read_done = true;
                } else {
                    self.start = 0;
                    self.end = n;
                    if n == self.buf.len() && self.buf.len() < MAX_BUFFER {
                        // Grow after the bytes are out; the read data stays at the front.
                        self.buf.resize((self.buf.len() * 2).min(MAX_BUFFER), 0);
                    }
                }
            }
            while self.start < self.end {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.start..self.end]))
                        .map_err(Side::Writer)?;
                if n == 0 {
                    return Poll::Ready(Err(Side::Writer(io::ErrorKind::WriteZero.into())));
                }
                self.start += n;
                self.moved += n as u64;
            }
            if self.read_done {
                if !self.shut_down {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx)).map_err(Side::Writer)?;
                    self.shut_down = true;
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_propagates() {
        let (mut client, mut proxy_a) = duplex(64);
        let (mut proxy_b, mut server) = duplex(64);
        let copier = tokio::spawn(async move {
            copy_bidirectional(&mut proxy_a, &mut proxy_b, Duration::from_secs(60)).await
        });
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert_eq!(
            received, payload,
            "server sees every byte, then EOF (half-close)"
        );
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        let outcome = copier.await.unwrap();
        assert_eq!(outcome.a_to_b, 200_000);
        assert_eq!(outcome.b_to_a, 4);
        assert_eq!(outcome.end, CopyEnd::Completed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_traffic_resets_the_timer() {
        let (mut client, mut proxy_a) = duplex(64);
        let (mut proxy_b, mut server) = duplex(64);
        let copier = tokio::spawn(async move {
            copy_bidirectional(&mut proxy_a, &mut proxy_b, Duration::from_secs(10)).await
        });
        tokio::time::sleep(Duration::from_secs(8)).await;
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(
            !copier.is_finished(),
            "traffic at 8 s restarted the idle timer"
        );
        let outcome = copier.await.unwrap();
        assert_eq!(outcome.end, CopyEnd::IdleTimeout);
        assert_eq!(outcome.a_to_b, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_holds_back_the_writer() {
        // The server never reads: the copier may hold at most one buffer plus the pipes' capacity.
        let (mut client, mut proxy_a) = duplex(1024);
        let (mut proxy_b, _server) = duplex(1024);
        tokio::spawn(async move {
            copy_bidirectional(&mut proxy_a, &mut proxy_b, Duration::from_secs(60)).await
        });
        let chunk = [7u8; 1024];
        let mut accepted = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_millis(200), client.write(&chunk)).await {
                Ok(Ok(n)) => accepted += n,
                _ => break,
            }
            assert!(
                accepted <= 1024 + MAX_BUFFER + 1024,
                "unbounded buffering: {accepted}"
            );
        }
        assert!(accepted >= 1024, "some bytes flowed before backpressure");
    }

    #[tokio::test]
    async fn an_error_names_the_failing_side() {
        let (mut client, mut proxy_a) = duplex(64);
        let (mut proxy_b, server) = duplex(64);
        drop(server);
        let copier = tokio::spawn(async move {
            copy_bidirectional(&mut proxy_a, &mut proxy_b, Duration::from_secs(60)).await
        });
        client.write_all(b"x").await.unwrap();
        let outcome = copier.await.unwrap();
        assert!(matches!(outcome.end, CopyEnd::ErrorOnB(_)), "{outcome:?}");
    }
}
