//! One endpoint of an upstream: its address, the client that reaches it (a connection pool, or a
//! dialer for L4), its load as tower's peak-EWMA measures it, and its circuit breaker.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower::Service;
use tower::load::peak_ewma::Cost;
use tower::load::{CompleteOnResponse, Load, PeakEwma};

use super::breaker::{Breaker, State, Transition};
use super::metrics::EndpointMetrics;
use crate::config::Target;

/// The latency an endpoint is assumed to have before it answered anything (linkerd2's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast the peak-EWMA forgets (linkerd2's default decay).
const DECAY: Duration = Duration::from_secs(10);

/// A service that returns the future it is given: it lets tower's [`PeakEwma`] time any
/// request future (it counts the request as pending until the future completes).
#[derive(Debug, Clone, Copy)]
pub(super) struct Passthrough;

impl<F, T, E> Service<F> for Passthrough
where
    F: Future<Output = Result<T, E>>,
{
    type Response = T;
    type Error = E;
    type Future = F;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, future: F) -> F {
        future
    }
}

/// One endpoint.
#[derive(Debug)]
pub struct Endpoint<C> {
    /// The endpoint as configured (its host names the server for SNI).
    pub name: Target,
    /// The address dialed.
    pub addr: SocketAddr,
    /// `addr` as text, formatted once: log lines and metric labels name the endpoint by it.
    pub label: Arc<str>,
    /// How requests or connections reach it.
    pub client: C,
    load: Mutex<PeakEwma<Passthrough, CompleteOnResponse>>,
    breaker: Mutex<Breaker>,
    pub(crate) metrics: EndpointMetrics,
}

impl<C> Endpoint<C> {
    /// An endpoint with a fresh load estimate and a closed breaker.
    pub fn new(
        name: Target,
        addr: SocketAddr,
        client: C,
        breaker: Breaker,
        metrics: EndpointMetrics,
    ) -> Self {
        let decay_ns = DECAY.as_nanos() as f64;
        Self {
            name,
            addr,
            label: Arc::from(addr.to_string()),
            client,
            load: Mutex::new(PeakEwma::new(
                Passthrough,
                DEFAULT_RTT,
                decay_ns,
                CompleteOnResponse::default(),
            )),
            breaker: Mutex::new(breaker),
            metrics,
        }
    }

    /// Peak-EWMA latency times (pending requests + 1): lower is better.
    pub fn load(&self) -> Cost {
        self.lock_load().load()
    }

    /// [`Self::load`] in milliseconds, for the gauge and `/config`.
    pub fn cost_ms(&self) -> f64 {
        cost_value(self.load()) / 1e6
    }

    /// Times `request` as one pending request of this endpoint.
    pub fn track<F, T, E>(&self, request: F) -> impl Future<Output = Result<T, E>> + use<F, T, E, C>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.lock_load().call(request)
    }

    /// Whether the breaker lets traffic through now (without taking a half-open probe).
    pub fn available(&self, now: Instant) -> bool {
        self.lock_breaker().available(now)
    }

    /// Takes the right to send one request (the probe, when half-open).
    pub fn admit(&self, now: Instant) -> bool {
        self.lock_breaker().admit(now)
    }

    /// The breaker's state now.
    pub fn state(&self, now: Instant) -> State {
        self.lock_breaker().state(now)
    }

    /// Records a success.
    pub fn succeeded(&self) {
        let served = self.metrics.requests.inc();
        let transition = self.lock_breaker().success();
        if transition == Transition::Restored {
            tracing::info!(endpoint = %self.addr, "upstream endpoint answered its probe: back in rotation");
            self.publish();
        } else if served.is_multiple_of(64) {
            // The gauge is a view, not a control input: refreshing it on every request would
            // put a format on the hot path for nothing.
            self.publish();
        }
    }

    /// Records a failure, ejecting the endpoint when it crossed the threshold.
    pub fn failed(&self, now: Instant, why: &str) {
        self.metrics.requests.inc();
        self.metrics.failures.inc();
        // Bound first: the guard must be gone before `publish` takes the lock again.
        let transition = self.lock_breaker().failure(now);
        if let Transition::Ejected(ejected_for) = transition {
            self.metrics.ejections.inc();
            tracing::warn!(endpoint = %self.addr, ?ejected_for, reason = %why, "upstream endpoint ejected after consecutive failures");
        }
        self.publish();
    }

    /// Writes the load and state gauges.
    fn publish(&self) {
        self.metrics.ewma_ms.set(self.cost_ms());
        self.metrics
            .state
            .set(state_code(self.state(Instant::now())));
    }

    fn lock_load(&self) -> std::sync::MutexGuard<'_, PeakEwma<Passthrough, CompleteOnResponse>> {
        // A panic while holding this lock cannot leave the estimate inconsistent: take it anyway.
        self.load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The state as the `meshguard_upstream_endpoint_state` gauge writes it.
pub(super) fn state_code(state: State) -> i64 {
    match state {
        State::Closed { .. } => 0,
        State::HalfOpen { .. } => 1,
        State::Open { .. } => 2,
    }
}

/// The state in words, for `/config`.
pub(super) fn state_name(state: State) -> &'static str {
    match state {
        State::Closed { .. } => "healthy",
        State::HalfOpen { .. } => "probing",
        State::Open { .. } => "ejected",
    }
}

/// tower's `Cost` keeps its number private but orders and prints it; the number is wanted for
/// the EWMA gauge and `/config`, so read it from the printed form (`Cost(1234.5)`).
fn cost_value(cost: Cost) -> f64 {
    let text = format!("{cost:?}");
    text.trim_start_matches("Cost(")
        .trim_end_matches(')')
        .parse()
        .unwrap_or(f64::MAX)
}
