//! The forwarding fast path: copy bytes both ways between two streams until both sides are done.
//!
//! An idle connection holds no copy buffer at all. A direction reads into its worker thread's
//! scratch buffer and writes straight from it; only when the writer cannot take every byte (a slow
//! reader on the far side) does the rest move into a buffer the direction owns, and that buffer is
//! released once it is written out and the reader has nothing more (the connection went quiet).
//! A flow that keeps the writer busy keeps its buffer, so a bulk transfer allocates once, not per
//! chunk. The read size starts small and doubles (up to [`MAX_BUFFER`]) only when a read fills it
//! completely, which is what a bulk flow does. A direction reads again only after its bytes were
//! written out, so a slow reader slows its writer and memory stays bounded. When one side
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

thread_local! {
    /// Where reads land first: one per worker thread, so idle connections own no buffer.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One direction's state: its owned buffer (empty while nothing waits to be written), the
/// unwritten part of it, the current read size, and whether the reader ended.
struct Direction {
    buf: Vec<u8>,
    /// How many bytes the next read asks for; grows for bulk flows.
    read_size: usize,
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
            buf: Vec::new(),
            read_size: INITIAL_BUFFER,
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
                let read = if self.buf.is_empty() {
                    self.poll_read_scratch(cx, reader, writer)
                } else {
                    self.poll_read_owned(cx, reader)
                };
                match read {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(side)) => return Poll::Ready(Err(side)),
                    Poll::Pending => {
                        // Nothing to read: the bytes are out, so the owned buffer can go.
                        self.buf = Vec::new();
                        // Push out whatever the writer still buffers.
                        ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(Side::Writer)?;
                        return Poll::Pending;
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

    /// Reads into the thread's scratch buffer and writes as much as the writer takes at once;
    /// whatever it does not take is kept in a buffer of this direction's own.
    fn poll_read_scratch<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<(), Side>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < MAX_BUFFER {
                scratch.resize(MAX_BUFFER, 0);
            }
            let mut read_buf = ReadBuf::new(&mut scratch[..self.read_size]);
            ready!(Pin::new(&mut *reader).poll_read(cx, &mut read_buf)).map_err(Side::Reader)?;
            let n = read_buf.filled().len();
            if n == 0 {
                self.read_done = true;
                return Poll::Ready(Ok(()));
            }
            self.grow_if_full(n);
            let mut written = 0;
            while written < n {
                match Pin::new(&mut *writer).poll_write(cx, &scratch[written..n]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Side::Writer(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(k)) => written += k,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Writer(e))),
                    Poll::Pending => break,
                }
            }
            self.moved += written as u64;
            if written < n {
                // The writer is busy: keep the rest, in a buffer big enough for the next reads.
                self.buf = vec![0; self.read_size.max(n - written)];
                self.buf[..n - written].copy_from_slice(&scratch[written..n]);
                self.start = 0;
                self.end = n - written;
            }
            Poll::Ready(Ok(()))
        })
    }

    /// Reads into the owned buffer (a busy flow keeps it between reads).
    fn poll_read_owned<R>(&mut self, cx: &mut Context<'_>, reader: &mut R) -> Poll<Result<(), Side>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        if self.buf.len() < self.read_size {
            self.buf.resize(self.read_size, 0);
        }
        let mut read_buf = ReadBuf::new(&mut self.buf[..self.read_size]);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut read_buf)).map_err(Side::Reader)?;
        let n = read_buf.filled().len();
        if n == 0 {
            self.read_done = true;
        } else {
            self.start = 0;
            self.end = n;
            self.grow_if_full(n);
        }
        Poll::Ready(Ok(()))
    }

    /// A read that filled the read size is a bulk flow: ask for more next time.
    fn grow_if_full(&mut self, n: usize) {
        if n == self.read_size && self.read_size < MAX_BUFFER {
            self.read_size = (self.read_size * 2).min(MAX_BUFFER);
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

    /// Polls a direction once; true when it waits (pending).
    async fn poll_once(
        direction: &mut Direction,
        a: &mut tokio::io::DuplexStream,
        b: &mut tokio::io::DuplexStream,
    ) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(direction.poll_copy(cx, a, b).is_pending())).await
    }

    #[tokio::test]
    async fn a_direction_owns_a_buffer_only_while_its_writer_is_behind() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(16);
        let mut direction = Direction::new();
        client.write_all(b"ping").await.unwrap();
        assert!(
            poll_once(&mut direction, &mut a, &mut b).await,
            "waits for more after ping"
        );
        let mut four = [0; 4];
        server.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        assert_eq!(direction.buf.capacity(), 0, "idle: no buffer of its own");

        // The far side does not read: what the pipe cannot take waits in an owned buffer.
        client.write_all(&[7; 100]).await.unwrap();
        assert!(poll_once(&mut direction, &mut a, &mut b).await);
        assert!(direction.buf.len() >= 100 - 16, "{}", direction.buf.len());
        let drain = tokio::spawn(async move {
            let mut rest = vec![0; 100];
            server.read_exact(&mut rest).await.unwrap();
            server
        });
        while !drain.is_finished() {
            assert!(poll_once(&mut direction, &mut a, &mut b).await);
            tokio::task::yield_now().await;
        }
        assert!(poll_once(&mut direction, &mut a, &mut b).await);
        assert_eq!(
            direction.buf.capacity(),
            0,
            "written out and quiet: released"
        );
        assert_eq!(direction.moved, 104);
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
