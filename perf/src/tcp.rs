//! `meshguard perf tcp`: raw TCP (or TLS) against an echo server. Ping-pong sends a small message
//! and waits for it to come back (latency, open loop like HTTP); bulk streams as fast as each
//! connection allows for the duration and counts the bytes echoed back (throughput per stream).
//!
//! Messages are zero bytes, which the built-in upstream never mistakes for an HTTP request line.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::connect::{Connector, Io};
use crate::engine::Exchange;
use crate::recorder::ErrorKind;

/// One worker's connection for ping-pong: write `size` bytes, read `size` bytes back.
pub struct PingPong {
    connector: Connector,
    stream: Option<Box<dyn Io>>,
    message: Vec<u8>,
    echoed: Vec<u8>,
}

impl std::fmt::Debug for PingPong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PingPong")
            .field("connector", &self.connector)
            .field("connected", &self.stream.is_some())
            .field("size", &self.message.len())
            .finish()
    }
}

impl PingPong {
    pub fn new(connector: Connector, size: usize) -> Self {
        PingPong {
            connector,
            stream: None,
            message: vec![0; size.max(1)],
            echoed: vec![0; size.max(1)],
        }
    }

    /// Connects now, so connection setup is not timed into the first round trips.
    pub async fn warm_up(&mut self) -> Result<(), ErrorKind> {
        if self.stream.is_none() {
            self.stream = Some(self.connector.connect().await?.stream);
        }
        Ok(())
    }
}

impl Exchange for PingPong {
    async fn exchange(&mut self) -> Result<(), ErrorKind> {
        self.warm_up().await?;
        let Some(stream) = self.stream.as_mut() else {
            return Err(ErrorKind::Connect);
        };
        stream
            .write_all(&self.message)
            .await
            .map_err(|_| ErrorKind::Io)?;
        stream
            .read_exact(&mut self.echoed)
            .await
            .map_err(|_| ErrorKind::Io)?;
        if self.echoed != self.message {
            return Err(ErrorKind::Protocol);
        }
        Ok(())
    }

    fn reset(&mut self, _cause: ErrorKind) {
        // A half-finished round trip leaves unread bytes behind: start a fresh connection.
        self.stream = None;
    }
}

/// What one bulk stream moved.
#[derive(Debug, Clone, Copy)]
pub struct StreamResult {
    /// Bytes written and echoed back.
    pub bytes: u64,
    /// From connect to the last echoed byte.
    pub took: Duration,
}

impl StreamResult {
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// Streams `chunk`-sized writes until `duration` has passed while reading the echo, then closes
/// the write side and reads until the echo server closes too.
pub async fn bulk_stream(
    connector: &Connector,
    duration: Duration,
    chunk: usize,
) -> Result<StreamResult, ErrorKind> {
    let started = Instant::now();
    let deadline = started + duration;
    let stream = connector.connect().await?.stream;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async move {
        let data = vec![0u8; chunk.max(1)];
        let mut sent = 0u64;
        while Instant::now() < deadline {
            writer.write_all(&data).await?;
            sent += data.len() as u64;
        }
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(sent)
    };
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break Ok::<_, std::io::Error>(received);
            }
            received += n as u64;
        }
    };
    let (sent, received) = tokio::try_join!(write, read).map_err(|_| ErrorKind::Io)?;
    if sent != received {
        return Err(ErrorKind::Protocol);
    }
    Ok(StreamResult {
        bytes: received,
        took: started.elapsed(),
    })
}
