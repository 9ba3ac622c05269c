//! Per-request metrics: requests by listener, status class and decision, and a latency histogram
//! per listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    status_class: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    listener: String,
    reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~26 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 19,
    ))
}

/// The HTTP metric families; cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<ListenerLabel, Histogram, fn() -> Histogram>,
    refused: Family<RefusalLabels, Counter>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            refused: Family::default(),
        }
    }
}

impl HttpMetrics {
    /// Registers the families (names are prefixed by the registry's `meshguard_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests, per listener, status class and decision",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request duration to the end of the response, per listener",
            self.latency.clone(),
        );
        registry.register(
            "http_refused",
            "HTTP requests or connections refused before policy, per listener and reason",
            self.refused.clone(),
        );
    }

    /// Counts one finished request.
    pub fn request(&self, listener: &str, status: u16, decision: &'static str, seconds: f64) {
        let status_class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "none",
        };
        self.requests
            .get_or_create(&RequestLabels {
                listener: listener.to_owned(),
                status_class,
                decision,
            })
            .inc();
        self.latency
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts a refusal before policy (`bad_path`, `bad_header`, `protocol_error`, ...).
    pub fn refused(&self, listener: &str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusalLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    /// Requests counted so far for a listener, status class and decision (for tests).
    pub fn requests_total(
        &self,
        listener: &str,
        status_class: &'static str,
        decision: &'static str,
    ) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                listener: listener.to_owned(),
                status_class,
                decision,
            })
            .get()
    }

    /// Refusals counted so far (for tests).
    pub fn refused_total(&self, listener: &str, reason: &'static str) -> u64 {
        self.refused
            .get_or_create(&RefusalLabels {
                listener: listener.to_owned(),
                reason,
            })
            .get()
    }
}
