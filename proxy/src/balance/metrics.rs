//! Per-endpoint metrics: requests, failures, ejections, peak-EWMA latency and breaker state, and
//! per-listener retries. An endpoint takes its handles once, when it is created.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    listener: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    listener: String,
    /// `retried`, or `budget_exhausted` when the budget refused a retry.
    outcome: &'static str,
}

/// The families; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct UpstreamMetrics {
    requests: Family<EndpointLabels, Counter>,
    failures: Family<EndpointLabels, Counter>,
    ejections: Family<EndpointLabels, Counter>,
    ewma_ms: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    state: Family<EndpointLabels, Gauge>,
    retries: Family<RetryLabels, Counter>,
}

/// One endpoint's handles.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    /// Attempts sent to the endpoint (requests, or connections on L4).
    pub requests: Counter,
    /// Attempts that failed at the transport (no connection, reset, no answer in time).
    pub failures: Counter,
    /// Times the breaker ejected it.
    pub ejections: Counter,
    /// Peak-EWMA latency times pending requests, milliseconds.
    pub ewma_ms: Gauge<f64, AtomicU64>,
    /// 0 healthy, 1 probing, 2 ejected.
    pub state: Gauge,
}

/// One listener's retry counters.
#[derive(Debug, Clone)]
pub struct RetryMetrics {
    /// Retries sent.
    pub retried: Counter,
    /// Retries the budget refused.
    pub budget_exhausted: Counter,
}

impl UpstreamMetrics {
    /// Registers the families (prefixed `meshguard_upstream_`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("upstream");
        r.register(
            "requests",
            "Attempts sent to an endpoint, per listener and endpoint",
            self.requests.clone(),
        );
        r.register(
            "failures",
            "Attempts that failed at the transport, per listener and endpoint",
            self.failures.clone(),
        );
        r.register(
            "ejections",
            "Circuit-breaker ejections, per listener and endpoint",
            self.ejections.clone(),
        );
        r.register(
            "ewma_milliseconds",
            "Peak-EWMA latency times (pending + 1), per listener and endpoint",
            self.ewma_ms.clone(),
        );
        r.register(
            "endpoint_state",
            "Breaker state per endpoint: 0 healthy, 1 probing, 2 ejected",
            self.state.clone(),
        );
        r.register(
            "retries",
            "Retries per listener: retried, or budget_exhausted when the budget refused one",
            self.retries.clone(),
        );
    }

    /// The handles of one endpoint of `listener`.
    pub fn endpoint(&self, listener: &str, endpoint: &str) -> EndpointMetrics {
        let labels = EndpointLabels {
            listener: listener.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        EndpointMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            failures: self.failures.get_or_create(&labels).clone(),
            ejections: self.ejections.get_or_create(&labels).clone(),
            ewma_ms: self.ewma_ms.get_or_create(&labels).clone(),
            state: self.state.get_or_create(&labels).clone(),
        }
    }

    /// The retry counters of `listener`.
    pub fn retries(&self, listener: &str) -> RetryMetrics {
        let label = |outcome| RetryLabels {
            listener: listener.to_owned(),
            outcome,
        };
        // One statement per label: `get_or_create` returns a read guard, and a second call on
        // the same family while it lives would wait for itself to create the new label.
        let retried = self.retries.get_or_create(&label("retried")).clone();
        let budget_exhausted = self
            .retries
            .get_or_create(&label("budget_exhausted"))
            .clone();
        RetryMetrics {
            retried,
            budget_exhausted,
        }
    }
}
