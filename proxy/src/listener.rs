//! What every listener shares: the accept loop with its connection limit, the per-connection
//! bookkeeping (metrics, access-log record, duration), and the drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meshguard_identity::RotatingCredentials;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessLog, ConnectionRecord, Direction, ErrorClass};
use crate::config::Timeouts;
use crate::copy::{CopyEnd, CopyOutcome};
use crate::metrics::ListenerMetrics;

/// Process-wide state every connection reads.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The workload's credentials (rotated in place by the identity source).
    pub credentials: RotatingCredentials,
    /// Where connection records go.
    pub access_log: AccessLog,
    /// Connect, handshake and idle timeouts.
    pub timeouts: Timeouts,
    /// Tracks connection tasks so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Cancelled when the drain starts (SIGTERM): HTTP connections finish the request in flight and
    /// close (HTTP/1.1) or send GOAWAY (HTTP/2), so clients move on before the grace period ends.
    pub drain: CancellationToken,
    /// Cancelled when the drain grace period is over: connections still open are closed.
    pub hard_stop: CancellationToken,
    /// Temporary blocks of callers after repeated failures, when `[lockout]` is configured.
    pub lockout: Option<crate::lockout::LockoutGuard>,
}

impl Shared {
    /// This workload's SPIFFE ID now.
    pub fn local_id(&self) -> String {
        self.credentials.current().svid.spiffe_id().to_string()
    }
}

/// One accepted connection's bookkeeping: its record, its start, and its listener's metrics.
#[derive(Debug)]
pub struct Connection {
    /// The access-log line being filled in.
    pub record: ConnectionRecord,
    /// The listener's metrics.
    pub metrics: ListenerMetrics,
    started: Instant,
}

impl Connection {
    /// Copies the outcome of the byte copy into the record and the metrics.
    pub fn finish_copy(&mut self, outcome: CopyOutcome) {
        self.record.bytes_in = outcome.a_to_b;
        self.record.bytes_out = outcome.b_to_a;
        self.metrics.bytes_in.inc_by(outcome.a_to_b);
        self.metrics.bytes_out.inc_by(outcome.b_to_a);
        match outcome.end {
            CopyEnd::Completed => {}
            CopyEnd::IdleTimeout => self
                .record
                .fail(ErrorClass::Downstream, "closed after the idle timeout"),
            CopyEnd::ErrorOnA(kind) => self.record.fail(
                ErrorClass::Downstream,
                format!("client side failed: {kind}"),
            ),
            CopyEnd::ErrorOnB(kind) => self.record.fail(
                ErrorClass::Upstream,
                format!("upstream side failed: {kind}"),
            ),
        }
    }
}

/// A bound listener and what its connections are counted and logged under.
#[derive(Debug)]
pub struct Listening {
    /// The bound socket.
    pub listener: TcpListener,
    /// The listener's name in logs and metrics.
    pub name: String,
    /// Which way its connections go.
    pub direction: Direction,
    /// Open connections beyond which new ones are refused.
    pub max_connections: usize,
    /// Its metrics.
    pub metrics: ListenerMetrics,
}

/// Accepts connections until `shutdown` turns true, handing each to `handle` on its own task.
/// Beyond `max_connections` open connections a new one is closed at once, counted and logged.
pub async fn accept_loop<H, F>(
    listening: Listening,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, Connection) -> F + Send + Sync + 'static,
    F: Future<Output = Connection> + Send + 'static,
{
    let Listening {
        listener,
        name,
        direction,
        max_connections,
        metrics,
    } = listening;
    let limit = Arc::new(Semaphore::new(max_connections));
    let handle = Arc::new(handle);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: keep serving the open connections.
                tracing::warn!(listener = %name, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut record = ConnectionRecord::new(direction, &name, peer);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics.refused_over_limit.inc();
            record.fail(
                ErrorClass::Internal,
                format!("connection limit of {max_connections} reached; connection closed"),
            );
            shared.access_log.record(record);
            continue;
        };
        metrics.opened.inc();
        metrics.active.inc();
        let connection = Connection {
            record,
            metrics: metrics.clone(),
            started: Instant::now(),
        };
        let handle = handle.clone();
        let shared_for_task = shared.clone();
        let task_metrics = metrics.clone();
        let task_name = name.clone();
        shared.connections.spawn(async move {
            let work = handle(stream, peer, connection);
            tokio::pin!(work);
            let finished = tokio::select! {
                finished = &mut work => Some(finished),
                () = shared_for_task.hard_stop.cancelled() => None,
            };
            drop(permit);
            let Some(mut connection) = finished else {
                // The drain grace period ran out; the connection's state is gone with its future.
                task_metrics.active.dec();
                task_metrics.closed.inc();
                let mut record = ConnectionRecord::new(direction, &task_name, peer);
                record.fail(
                    ErrorClass::Internal,
                    "closed at shutdown after the drain grace period",
                );
                shared_for_task.access_log.record(record);
                return;
            };
            connection.metrics.active.dec();
            connection.metrics.closed.inc();
            connection.record.duration_ms = connection.started.elapsed().as_secs_f64() * 1000.0;
            shared_for_task.access_log.record(connection.record);
        });
    }
}
