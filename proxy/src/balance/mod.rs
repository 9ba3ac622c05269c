//! The endpoints behind one listener's upstream, and the choice among them: power of two choices
//! over tower's peak-EWMA load (linkerd2's default) or round robin, a circuit breaker per
//! endpoint, a retry budget per listener (tower's `TpsBudget`, linkerd2's model), and DNS names
//! resolved again every `dns_refresh` (Envoy's STRICT_DNS: each address is an endpoint).
//!
//! Why not tower's `p2c::Balance`: it owns its services behind `&mut self`, so sharing one across
//! connections takes a `Buffer` task and a channel hop per request, and a retry cannot ask it for
//! "any endpoint but the one that just failed". The choice itself is ten lines; the parts worth
//! reusing (the load estimate, the budget) are tower's.

mod breaker;
mod dns;
mod endpoint;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::Rng;
use tower::retry::budget::{Budget, TpsBudget};

pub use breaker::{Breaker, State};
pub use endpoint::Endpoint;
use metrics::{RetryMetrics, UpstreamMetrics};

use crate::config::{Balancer, Target, UpstreamConfig};

/// Builds the client of a new endpoint from its configured name and resolved address.
pub type MakeClient<C> = Box<dyn Fn(&Target, SocketAddr) -> C + Send + Sync>;

/// One listener's upstream; cheap to clone.
pub struct Upstream<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Upstream<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> std::fmt::Debug for Upstream<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("listener", &self.inner.listener)
            .field("endpoints", &self.inner.config.endpoints)
            .finish_non_exhaustive()
    }
}

struct Inner<C> {
    listener: Arc<str>,
    config: UpstreamConfig,
    endpoints: ArcSwap<Vec<Arc<Endpoint<C>>>>,
    next: AtomicUsize,
    budget: TpsBudget,
    make: MakeClient<C>,
    metrics: UpstreamMetrics,
    retries: RetryMetrics,
}

impl<C: Send + Sync + 'static> Upstream<C> {
    /// The upstream of `listener`. IP endpoints are ready at once; DNS names are resolved before
    /// this returns (bounded) and again every `dns_refresh` for as long as the upstream lives.
    pub async fn new(
        listener: &str,
        config: UpstreamConfig,
        metrics: &UpstreamMetrics,
        make: MakeClient<C>,
    ) -> Self {
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            config.min_retries_per_second,
            config.retry_ratio,
        );
        let upstream = Self {
            inner: Arc::new(Inner {
                listener: Arc::from(listener),
                endpoints: ArcSwap::default(),
                next: AtomicUsize::new(0),
                budget,
                make,
                metrics: metrics.clone(),
                retries: metrics.retries(listener),
                config,
            }),
        };
        let resolved = dns::resolve_all(&upstream.inner.config.endpoints).await;
        upstream.replace(resolved);
        if upstream
            .inner
            .config
            .endpoints
            .iter()
            .any(|t| t.ip().is_none())
        {
            dns::spawn_refresh(
                Arc::downgrade(&upstream.inner),
                upstream.inner.config.endpoints.clone(),
                upstream.inner.config.dns_refresh.get(),
                |inner, resolved| {
                    Self {
                        inner: inner.clone(),
                    }
                    .replace(resolved)
                },
            );
        }
        upstream
    }

    /// Sets the endpoint list to `resolved`, keeping the state of endpoints still present (and
    /// the last addresses of a name whose lookup failed).
    fn replace(&self, resolved: dns::Resolved) {
        let inner = &self.inner;
        let current = inner.endpoints.load_full();
        let config = &inner.config;
        let mut pairs: Vec<(Target, SocketAddr)> = Vec::new();
        for (name, addrs) in resolved {
            match addrs {
                Some(addrs) => pairs.extend(addrs.into_iter().map(|a| (name.clone(), a))),
                None => pairs.extend(
                    current
                        .iter()
                        .filter(|e| e.name == name)
                        .map(|e| (name.clone(), e.addr)),
                ),
            }
        }
        let next: Vec<_> = pairs
            .into_iter()
            .map(|(name, addr)| {
                current
                    .iter()
                    .find(|e| e.addr == addr && e.name == name)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Endpoint::new(
                            name.clone(),
                            addr,
                            (inner.make)(&name, addr),
                            Breaker::new(
                                config.failure_threshold,
                                config.ejection_min.get(),
                                config.ejection_max.get(),
                            ),
                            inner.metrics.endpoint(&inner.listener, &addr.to_string()),
                        ))
                    })
            })
            .collect();
        let changed = next.len() != current.len()
            || next
                .iter()
                .zip(current.iter())
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            tracing::info!(listener = %inner.listener, endpoints = ?next.iter().map(|e| e.addr).collect::<Vec<_>>(), "upstream endpoints");
            inner.endpoints.store(Arc::new(next));
        }
    }
}

impl<C> Upstream<C> {
    /// The config it was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.inner.config
    }

    /// Endpoints known now.
    pub fn len(&self) -> usize {
        self.inner.endpoints.load().len()
    }

    /// Whether no endpoint is known (a DNS name that never resolved).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The listener it belongs to.
    pub fn listener(&self) -> &str {
        &self.inner.listener
    }

    /// Chooses an endpoint not in `tried`: among those whose breaker lets traffic through, or,
    /// when every one is ejected, among all (Envoy's panic mode: an ejection is a guess, and a
    /// guess should not turn a degraded upstream into a dead one). `None` when all were tried.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Endpoint<C>>> {
        let now = Instant::now();
        let all = self.inner.endpoints.load();
        if let [only] = all.as_slice() {
            if tried.contains(&only.addr) {
                return None;
            }
            only.admit(now);
            return Some(only.clone());
        }
        let untried = |e: &&Arc<Endpoint<C>>| !tried.contains(&e.addr);
        let mut candidates: Vec<&Arc<Endpoint<C>>> = all
            .iter()
            .filter(untried)
            .filter(|e| e.available(now))
            .collect();
        if candidates.is_empty() {
            candidates = all.iter().filter(untried).collect();
        }
        let chosen = match (self.inner.config.balancer, candidates.len()) {
            (_, 0) => return None,
            (_, 1) => candidates[0],
            (Balancer::RoundRobin, n) => {
                candidates[self.inner.next.fetch_add(1, Ordering::Relaxed) % n]
            }
            (Balancer::P2cEwma, n) => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                if a.load() <= b.load() { a } else { b }
            }
        };
        chosen.admit(now);
        Some(chosen.clone())
    }

    /// Counts one request towards the retry budget.
    pub fn deposit(&self) {
        self.inner.budget.deposit();
    }

    /// Takes one retry from the budget; false (and counted) when it is spent.
    pub fn withdraw(&self) -> bool {
        if self.inner.budget.withdraw() {
            self.inner.retries.retried.inc();
            true
        } else {
            self.inner.retries.budget_exhausted.inc();
            false
        }
    }

    /// Each endpoint's state, for `/config`.
    pub fn snapshot(&self) -> serde_json::Value {
        let now = Instant::now();
        let endpoints: Vec<_> = self
            .inner
            .endpoints
            .load()
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name.to_string(),
                    "address": e.addr.to_string(),
                    "state": endpoint::state_name(e.state(now)),
                    "ewma_ms": e.cost_ms(),
                    "requests": e.metrics.requests.get(),
                    "failures": e.metrics.failures.get(),
                    "ejections": e.metrics.ejections.get(),
                })
            })
            .collect();
        serde_json::json!({
            "listener": &*self.inner.listener,
            "balancer": self.inner.config.balancer,
            "endpoints": endpoints,
        })
    }
}

/// Every upstream of the process, set once its listeners are built; `/config` shows them.
pub type States = Arc<std::sync::OnceLock<Vec<Arc<dyn Snapshot>>>>;

/// Something whose endpoint states `/config` shows.
pub trait Snapshot: Send + Sync + std::fmt::Debug {
    /// The state as JSON.
    fn snapshot(&self) -> serde_json::Value;
}

impl<C: Send + Sync + 'static> Snapshot for Upstream<C> {
    fn snapshot(&self) -> serde_json::Value {
        Upstream::snapshot(self)
    }
}

#[cfg(test)]
mod tests;
