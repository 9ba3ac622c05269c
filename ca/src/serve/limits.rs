//! The issuance API's bounds. Anyone who can reach the CA's port can open connections and start
//! handshakes before proving anything, so every resource they can hold is bounded: open
//! connections, time to finish the TLS handshake, time to send a request, a connection's life,
//! and the rate and concurrency of signing (each signature is an HSM operation and an fsync'd
//! audit record).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::CaError;

/// What one `ca serve` allows; [`Limits::default`] suits a CA for a few thousand workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections (handshaking or not); beyond, new ones are closed at once.
    pub max_connections: usize,
    /// From accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// From a connection's (or the previous request's) end to a complete request header, and
    /// for the body after it (slowloris).
    pub request_timeout: Duration,
    /// A connection's whole life: a renewal needs one request, not a resident connection.
    pub connection_lifetime: Duration,
    /// Signatures per second, sustained; beyond, 429 with `Retry-After`.
    pub signing_rate: NonZeroU32,
    /// Signatures allowed in a burst above the rate (a fleet restarting at once).
    pub signing_burst: NonZeroU32,
    /// Signatures (HSM operation plus audit sync) in flight at once; others wait their turn.
    pub max_concurrent_signing: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(60),
            signing_rate: NonZeroU32::new(500).unwrap_or(NonZeroU32::MIN),
            signing_burst: NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN),
            max_concurrent_signing: 16,
        }
    }
}

impl Limits {
    /// Refuses limits that would make the CA unusable.
    pub fn validate(&self) -> Result<(), CaError> {
        let bad = |what: &str| Err(CaError::Serve(what.to_owned()));
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1");
        }
        if self.max_concurrent_signing == 0 {
            return bad("the signing concurrency must be at least 1");
        }
        for (name, value) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--request-timeout", self.request_timeout),
            ("the connection lifetime", self.connection_lifetime),
        ] {
            if value.is_zero() {
                return Err(CaError::Serve(format!(
                    "{name} must be longer than zero, e.g. 10s"
                )));
            }
        }
        Ok(())
    }
}

/// The shared state the limits are enforced with.
#[derive(Debug)]
pub(super) struct Gate {
    pub(super) limits: Limits,
    connections: Arc<Semaphore>,
    signing: Arc<Semaphore>,
    rate: DefaultDirectRateLimiter,
    /// Connections closed at accept for being over the limit.
    pub(super) over_limit: AtomicU64,
    /// Requests refused by the signing rate limit.
    pub(super) rate_limited: AtomicU64,
    /// Last time a refusal was logged (refusals are logged at most once a second, with counts).
    last_warned: std::sync::Mutex<Option<Instant>>,
}

impl Gate {
    pub(super) fn new(limits: Limits) -> Self {
        let quota = Quota::per_second(limits.signing_rate).allow_burst(limits.signing_burst);
        Self {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            signing: Arc::new(Semaphore::new(limits.max_concurrent_signing)),
            rate: RateLimiter::direct(quota),
            over_limit: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            last_warned: std::sync::Mutex::new(None),
            limits,
        }
    }

    /// A connection slot, or `None` (counted, logged) when every slot is taken.
    pub(super) fn connection(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.connections.clone().try_acquire_owned().ok();
        if permit.is_none() {
            let n = self.over_limit.fetch_add(1, Ordering::Relaxed) + 1;
            self.warn(|| {
                tracing::warn!(
                    limit = self.limits.max_connections,
                    refused_so_far = n,
                    "closed a connection: the CA is at its connection limit"
                );
            });
        }
        permit
    }

    /// A signing slot: `Err(retry_after)` when over the rate (counted, logged), else a permit
    /// once fewer than `max_concurrent_signing` signatures are in flight.
    pub(super) async fn signing(&self) -> Result<OwnedSemaphorePermit, Duration> {
        if self.rate.check().is_err() {
            let n = self.rate_limited.fetch_add(1, Ordering::Relaxed) + 1;
            self.warn(|| {
                tracing::warn!(
                    rate = self.limits.signing_rate.get(),
                    refused_so_far = n,
                    "refused a signing request: the CA is at its signing rate"
                );
            });
            return Err(Duration::from_secs(1));
        }
        // The semaphore is never closed, so acquiring only waits.
        self.signing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Duration::from_secs(1))
    }

    fn warn(&self, log: impl FnOnce()) {
        let Ok(mut last) = self.last_warned.lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            log();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_are_refused_with_the_flag_to_fix() {
        assert!(Limits::default().validate().is_ok());
        let error = Limits {
            max_connections: 0,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("--max-connections"), "{error}");
        let error = Limits {
            handshake_timeout: Duration::ZERO,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("--handshake-timeout"), "{error}");
    }

    #[tokio::test]
    async fn the_signing_rate_refuses_beyond_the_burst() {
        let gate = Gate::new(Limits {
            signing_rate: NonZeroU32::MIN,
            signing_burst: NonZeroU32::new(2).unwrap(),
            ..Limits::default()
        });
        assert!(gate.signing().await.is_ok());
        assert!(gate.signing().await.is_ok());
        assert_eq!(gate.signing().await.unwrap_err(), Duration::from_secs(1));
        assert_eq!(gate.rate_limited.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn connections_beyond_the_limit_are_refused_and_counted() {
        let gate = Gate::new(Limits {
            max_connections: 1,
            ..Limits::default()
        });
        let held = gate.connection();
        assert!(held.is_some());
        assert!(gate.connection().is_none());
        drop(held);
        assert!(gate.connection().is_some());
        assert_eq!(gate.over_limit.load(Ordering::Relaxed), 1);
    }
}
