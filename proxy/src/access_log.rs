//! The access log: one JSON line per connection.
//!
//! Connection tasks hand a finished [`ConnectionRecord`] to [`AccessLog::record`]: the record goes
//! into a bounded queue drained by one writer task that encodes and writes the lines. When the
//! queue is full (the disk is slower than the traffic), `on_full` decides: `drop` (the default
//! here) drops the record, so the data path never waits on the disk; `block` makes the caller
//! wait for room, so no line is lost. Every drop is counted in
//! `meshguard_access_log_dropped_total` and logged (at most once a second, with the count).

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use meshguard_policy::decision_log::OnFull;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Which way a connection went through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// mTLS from the mesh to the local app.
    Inbound,
    /// From the local app to a peer over mTLS.
    Outbound,
    /// Redirected by iptables, routed by original destination.
    Transparent,
}

/// The four places a connection can fail, one per log field value and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The client side: bad handshake, no or bad certificate, reset, idle.
    Downstream,
    /// The server side: connect refused or timed out, bad or unexpected certificate, reset.
    Upstream,
    /// Refused by policy or routing (default deny).
    Policy,
    /// The proxy itself: no credentials yet, connection limit, shutdown.
    Internal,
}

/// The outcome the proxy applied to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Forwarded.
    Allow,
    /// Refused.
    Deny,
    /// Forwarded, and an audit policy matched.
    Audit,
}

/// One access-log line. Fields without a value are written as `null` so every line has the same
/// shape, which is what log pipelines and auditors expect.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    /// When the connection was accepted; written as RFC 3339, UTC. Kept as a timestamp (not
    /// text) so the data path neither formats nor allocates it: the writer task does.
    #[serde(serialize_with = "rfc3339")]
    pub start_time: jiff::Timestamp,
    /// From accept to close, in milliseconds.
    pub duration_ms: f64,
    /// Inbound, outbound or transparent.
    pub direction: Direction,
    /// The listener's name.
    pub listener: String,
    /// The client's address.
    pub source_addr: SocketAddr,
    /// The peer's SPIFFE ID: the client's on inbound, the server's on outbound.
    pub peer_id: Option<String>,
    /// This proxy's own SPIFFE ID at the time of the handshake.
    pub local_id: Option<String>,
    /// The destination the client dialed (the listener, or the original destination when redirected).
    pub original_dst: Option<String>,
    /// Where the proxy forwarded the bytes: the endpoint chosen (the last one tried).
    pub upstream: Option<String>,
    /// Endpoints tried for this connection or request (1 without retries); absent when none was.
    pub attempts: Option<u32>,
    /// Bytes from the client towards the upstream.
    pub bytes_in: u64,
    /// Bytes from the upstream back to the client.
    pub bytes_out: u64,
    /// Negotiated TLS version of the mTLS side.
    pub tls_version: Option<String>,
    /// Negotiated cipher suite of the mTLS side.
    pub cipher_suite: Option<String>,
    /// Negotiated key-exchange group of the mTLS side.
    pub kx_group: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// Server name the client sent (inbound) or the proxy sent (outbound).
    pub sni: Option<String>,
    /// Allow, deny or audit; absent when the connection failed before a decision.
    pub decision: Option<Outcome>,
    /// Whether a dry-run (non-enforced) policy matched and would have decided differently.
    pub dry_run: bool,
    /// The policy that decided, if any.
    pub policy: Option<String>,
    /// The rule within the policy, if any.
    pub rule: Option<String>,
    /// Why: the policy's reason, or the failure in words.
    pub reason: Option<String>,
    /// Where a failure happened.
    pub error_class: Option<ErrorClass>,
    /// The HTTP fields of a request line (`null` on connection lines).
    pub http: Option<Box<crate::http::record::HttpFields>>,
}

impl ConnectionRecord {
    /// A record for a connection accepted now, with every later field empty.
    pub fn new(direction: Direction, listener: &str, source_addr: SocketAddr) -> Self {
        Self::empty(
            jiff::Timestamp::now(),
            direction,
            listener.to_owned(),
            source_addr,
        )
    }

    /// An empty record left behind when this one is moved out of a struct that must keep one
    /// (an HTTP exchange handing its line over): no clock read, no allocation. Never logged.
    pub(crate) fn placeholder(&self) -> Self {
        Self::empty(
            jiff::Timestamp::UNIX_EPOCH,
            self.direction,
            String::new(),
            self.source_addr,
        )
    }

    fn empty(
        start_time: jiff::Timestamp,
        direction: Direction,
        listener: String,
        source_addr: SocketAddr,
    ) -> Self {
        Self {
            start_time,
            duration_ms: 0.0,
            direction,
            listener,
            source_addr,
            peer_id: None,
            local_id: None,
            original_dst: None,
            upstream: None,
            attempts: None,
            bytes_in: 0,
            bytes_out: 0,
            tls_version: None,
            cipher_suite: None,
            kx_group: None,
            alpn: None,
            sni: None,
            decision: None,
            dry_run: false,
            policy: None,
            rule: None,
            reason: None,
            error_class: None,
            http: None,
        }
    }

    /// Marks the connection failed with a class and a reason in words.
    pub fn fail(&mut self, class: ErrorClass, reason: impl Into<String>) {
        self.error_class = Some(class);
        self.reason = Some(reason.into());
    }
}

/// Writes a timestamp as its RFC 3339 text (`jiff`'s `Display`, e.g. `2026-11-25T21:00:01.020082581Z`)
/// straight into the line, without an intermediate `String`.
fn rfc3339<S: serde::Serializer>(time: &jiff::Timestamp, out: S) -> Result<S::Ok, S::Error> {
    out.collect_str(time)
}

/// The sending side of the access log; cheap to clone. Waits only under [`OnFull::Block`].
#[derive(Debug, Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<ConnectionRecord>,
    dropped: Counter,
    on_full: OnFull,
    drop_warnings: Arc<DropWarnings>,
}

/// Logs lost lines at most once a second, with how many were lost since the last message.
#[derive(Debug, Default)]
pub struct DropWarnings {
    last: Mutex<Option<(Instant, u64)>>,
}

impl DropWarnings {
    /// Notes one lost line of `log`: the first is logged at once, later ones at most once a
    /// second with how many were lost since the last message (the counter has the exact total).
    pub fn dropped(&self, log: &str) {
        let Ok(mut state) = self.last.lock() else {
            return;
        };
        let now = Instant::now();
        let warn = |lost: u64| {
            tracing::warn!(
                log,
                lost,
                "the {log} writer fell behind and lines were lost; raise `queue` or set `on_full = \"block\"`"
            );
        };
        match &mut *state {
            None => {
                warn(1);
                *state = Some((now, 0));
            }
            Some((since, count)) => {
                *count += 1;
                if now.duration_since(*since) >= std::time::Duration::from_secs(1) {
                    warn(*count);
                    *since = now;
                    *count = 0;
                }
            }
        }
    }
}

// === impl AccessLog ===

impl AccessLog {
    /// Opens the log (`-` for stdout, else a file appended to) and starts its writer task. The
    /// task ends once every `AccessLog` clone is dropped and the queue is written out.
    pub async fn open(
        path: &Path,
        queue: usize,
        dropped: Counter,
    ) -> io::Result<(Self, JoinHandle<()>)> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = if path.as_os_str() == "-" {
            Box::new(tokio::io::stdout())
        } else {
            Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot open access log {}: {e}", path.display()),
                        )
                    })?,
            )
        };
        Ok(Self::with_writer(out, queue, dropped))
    }

    /// Starts a writer task over any sink (tests use an in-memory pipe).
    pub fn with_writer<W>(out: W, queue: usize, dropped: Counter) -> (Self, JoinHandle<()>)
    where
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let task = tokio::spawn(write_lines(rx, out));
        let log = Self {
            queue: tx,
            dropped,
            on_full: OnFull::Drop,
            drop_warnings: Arc::default(),
        };
        (log, task)
    }

    /// Sets what a full queue does ([`OnFull::Drop`] unless changed).
    #[must_use]
    pub fn with_on_full(mut self, on_full: OnFull) -> Self {
        self.on_full = on_full;
        self
    }

    /// Queues a record. A full queue drops it (counted, logged) or, under [`OnFull::Block`],
    /// waits for room.
    pub fn record(&self, record: ConnectionRecord) {
        let queued = match self.queue.try_send(record) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(record)) if self.on_full == OnFull::Block => {
                self.wait_for_room(record)
            }
            Err(_) => false,
        };
        if !queued {
            self.dropped.inc();
            self.drop_warnings.dropped("access log");
        }
    }

    /// Waits for room without stopping the writer: a multi-threaded runtime hands this worker's
    /// other tasks to another thread while it waits (`block_in_place`); outside a runtime the
    /// thread simply waits; a current-thread runtime (which could not run the writer while this
    /// thread waits) parks the record in a task of its own instead.
    fn wait_for_room(&self, record: ConnectionRecord) -> bool {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Err(_) => self.queue.blocking_send(record).is_ok(),
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(self.queue.send(record)).is_ok())
            }
            Ok(handle) => {
                let (queue, dropped, warnings) = (
                    self.queue.clone(),
                    self.dropped.clone(),
                    self.drop_warnings.clone(),
                );
                handle.spawn(async move {
                    if queue.send(record).await.is_err() {
                        dropped.inc();
                        warnings.dropped("access log");
                    }
                });
                true
            }
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// Appends `record` to `line` as one JSON object and a newline: the exact bytes the writer task
/// puts in the log. Public so the encoding can be benchmarked (`proxy/benches/access_log.rs`).
#[doc(hidden)]
pub fn encode_line(record: &ConnectionRecord, line: &mut Vec<u8>) -> serde_json::Result<()> {
    serde_json::to_writer(&mut *line, record)?;
    line.push(b'\n');
    Ok(())
}

async fn write_lines<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<ConnectionRecord>, out: W) {
    // Lines are flushed at most `FLUSH_EVERY` after they were queued. Flushing whenever the queue
    // ran empty cost one file write (a blocking-pool round trip) per request at moderate rates.
    const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(1024);
    // When the oldest unflushed line must be on disk; a steady trickle of lines does not push
    // it back, so no line waits in memory longer than FLUSH_EVERY.
    let mut flush_by: Option<tokio::time::Instant> = None;
    loop {
        let next = match flush_by {
            Some(deadline) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    if let Err(error) = out.flush().await {
                        tracing::error!(%error, "writing the access log failed; lines are lost");
                    }
                    flush_by = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(record) = next else { break };
        line.clear();
        if encode_line(&record, &mut line).is_err() {
            tracing::error!("an access-log record could not be encoded; it is skipped");
            continue;
        }
        if let Err(error) = out.write_all(&line).await {
            tracing::error!(%error, "writing the access log failed; this line is lost");
        }
        flush_by.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_EVERY);
    }
    let _ = out.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    fn record(n: u64) -> ConnectionRecord {
        let mut r = ConnectionRecord::new(
            Direction::Inbound,
            "inbound:test",
            "127.0.0.1:4000".parse().unwrap(),
        );
        r.bytes_in = n;
        r.decision = Some(Outcome::Deny);
        r.policy = Some("deny-all".into());
        r.fail(ErrorClass::Policy, "no allow policy matched");
        r
    }

    #[tokio::test]
    async fn each_record_is_one_json_line_with_every_field() {
        let (sink, source) = tokio::io::duplex(1 << 16);
        let (log, task) = AccessLog::with_writer(sink, 16, Counter::default());
        log.record(record(1));
        log.record(record(2));
        drop(log);
        task.await.unwrap();
        let mut lines = tokio::io::BufReader::new(source).lines();
        let first: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        for field in [
            "start_time",
            "duration_ms",
            "direction",
            "listener",
            "source_addr",
            "peer_id",
            "local_id",
            "original_dst",
            "upstream",
            "attempts",
            "bytes_in",
            "bytes_out",
            "tls_version",
            "cipher_suite",
            "kx_group",
            "alpn",
            "sni",
            "decision",
            "dry_run",
            "policy",
            "rule",
            "reason",
            "error_class",
        ] {
            assert!(first.get(field).is_some(), "missing {field}");
        }
        assert_eq!(first["decision"], "deny");
        assert_eq!(first["error_class"], "policy");
        assert_eq!(first["direction"], "inbound");
        let second: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(second["bytes_in"], 2);
    }

    #[test]
    fn encode_line_appends_one_json_line() {
        let mut line = b"previous\n".to_vec();
        encode_line(&record(7), &mut line).unwrap();
        let text = std::str::from_utf8(&line).unwrap();
        let (previous, encoded) = text.split_once('\n').unwrap();
        assert_eq!(previous, "previous");
        assert!(encoded.ends_with('\n'));
        assert_eq!(encoded.matches('\n').count(), 1, "{encoded}");
        let value: serde_json::Value = serde_json::from_str(encoded).unwrap();
        assert_eq!(value["bytes_in"], 7);
        assert_eq!(value["reason"], "no allow policy matched");
        assert!(value["http"].is_null());
    }

    #[test]
    fn start_time_is_written_as_rfc3339_text() {
        let mut r = record(0);
        r.start_time = "2026-11-25T21:00:01.020082581Z".parse().unwrap();
        let value = serde_json::to_value(&r).unwrap();
        assert_eq!(value["start_time"], "2026-11-25T21:00:01.020082581Z");
        r.start_time = "2026-11-25T21:00:01Z".parse().unwrap();
        let value = serde_json::to_value(&r).unwrap();
        assert_eq!(value["start_time"], "2026-11-25T21:00:01Z");
    }

    #[test]
    fn a_placeholder_keeps_only_direction_and_source() {
        let placeholder = record(3).placeholder();
        assert_eq!(placeholder.direction, Direction::Inbound);
        assert_eq!(placeholder.source_addr, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(placeholder.listener, "");
        assert_eq!(placeholder.bytes_in, 0);
        assert!(placeholder.reason.is_none() && placeholder.policy.is_none());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A sink nobody reads, with no room: the writer stalls on its first line.
        let (sink, _unread) = tokio::io::duplex(1);
        let dropped = Counter::default();
        let (log, _task) = AccessLog::with_writer(sink, 4, dropped.clone());
        for n in 0..1000 {
            log.record(record(n)); // returns at once even though nothing is written
        }
        assert!(dropped.get() >= 1000 - 4 - 1, "dropped {}", dropped.get());
        assert_eq!(log.dropped(), dropped.get());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_on_full_block_a_slow_writer_loses_nothing() {
        let (sink, source) = tokio::io::duplex(64);
        let dropped = Counter::default();
        let (log, task) = AccessLog::with_writer(sink, 4, dropped.clone());
        let log = log.with_on_full(OnFull::Block);
        // A slow disk: the reader takes the lines a few bytes at a time.
        let reader = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(source).lines();
            let mut n = 0u64;
            while let Ok(Some(_line)) = lines.next_line().await {
                n += 1;
                if n.is_multiple_of(100) {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
            n
        });
        for n in 0..1000 {
            log.record(record(n));
        }
        drop(log);
        task.await.unwrap();
        assert_eq!(reader.await.unwrap(), 1000);
        assert_eq!(dropped.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_is_flushed_within_the_flush_interval() {
        let (tx, rx) = mpsc::channel(16);
        let (writer, reader) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(write_lines(rx, writer));
        let mut reader = tokio::io::BufReader::new(reader);
        // A line every 20 ms, never a quiet gap of 50 ms: the first line must not wait for one.
        for n in 0..5 {
            tx.send(record(n)).await.unwrap();
            tokio::time::sleep(tokio::time::Duration::from_millis(20)).await;
        }
        let mut first = String::new();
        tokio::time::timeout(
            tokio::time::Duration::from_millis(1),
            reader.read_line(&mut first),
        )
        .await
        .expect("the first line was still in memory 100 ms after it was queued")
        .unwrap();
        assert!(first.ends_with('\n') && first.starts_with('{'), "{first}");
        drop(tx);
        task.await.unwrap();
    }
}
