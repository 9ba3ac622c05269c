//! The proxy's Prometheus metrics (prometheus-client), served as text on the admin `/metrics`.
//!
//! Each listener takes its own [`ListenerMetrics`] once at start, so the per-connection path only
//! touches atomics; only the label sets whose values come from the traffic (failure reasons,
//! policies) are looked up per event.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::access_log::Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
    direction: DirectionLabel,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are written as the variant names
enum DirectionLabel {
    inbound,
    outbound,
    transparent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    listener: String,
    /// `in`: client to upstream; `out`: upstream to client.
    flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeFailureLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    listener: String,
    policy: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerOnly {
    listener: String,
}

fn handshake_histogram() -> Histogram {
    // 100 µs .. ~3.3 s: a loopback handshake is ~1 ms, a congested one a few hundred.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<ListenerLabels, Counter>,
    closed: Family<ListenerLabels, Counter>,
    active: Family<ListenerLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    handshake_seconds: Family<ListenerOnly, Histogram, fn() -> Histogram>,
    handshake_failures: Family<HandshakeFailureLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    refused_over_limit: Family<ListenerOnly, Counter>,
    /// Not-after of the current certificate, Unix seconds.
    pub cert_expiry: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter<u64, AtomicU64>,
    /// Decision-log lines dropped (`on_full = "drop"`, or the writer gone).
    pub decision_log_dropped: Counter<u64, AtomicU64>,
    /// Per-request HTTP metrics.
    pub http: crate::http::metrics::HttpMetrics,
    /// Lockout blocks (active, started, refusals).
    pub lockout: crate::lockout::LockoutMetrics,
    /// Per-endpoint upstream metrics and retries.
    pub upstream: crate::balance::metrics::UpstreamMetrics,
}

/// The handles one listener updates per connection.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    name: String,
    /// Connections accepted.
    pub opened: Counter,
    /// Connections finished.
    pub closed: Counter,
    /// Connections open now.
    pub active: Gauge,
    /// Bytes from clients towards upstreams.
    pub bytes_in: Counter,
    /// Bytes from upstreams back to clients.
    pub bytes_out: Counter,
    /// Duration of the listener's mTLS handshakes (server or client side), seconds.
    pub handshake_seconds: Histogram,
    /// Connections refused because the listener's connection limit was reached.
    pub refused_over_limit: Counter,
    failures: Family<HandshakeFailureLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
}

// === impl Metrics ===

impl Metrics {
    /// A registry with every meshguard metric, prefixed `meshguard_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshguard");
        let m = Self {
            opened: Family::default(),
            closed: Family::default(),
            active: Family::default(),
            bytes: Family::default(),
            handshake_seconds: Family::new_with_constructor(
                handshake_histogram as fn() -> Histogram,
            ),
            handshake_failures: Family::default(),
            decisions: Family::default(),
            refused_over_limit: Family::default(),
            cert_expiry: Gauge::default(),
            access_log_dropped: Counter::default(),
            decision_log_dropped: Counter::default(),
            http: crate::http::metrics::HttpMetrics::default(),
            lockout: crate::lockout::LockoutMetrics::default(),
            upstream: crate::balance::metrics::UpstreamMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_opened",
            "Connections accepted, per listener",
            m.opened.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections finished, per listener",
            m.closed.clone(),
        );
        registry.register(
            "connections_active",
            "Connections open now, per listener",
            m.active.clone(),
        );
        registry.register(
            "bytes",
            "Bytes forwarded, per listener and flow (in: client to upstream)",
            m.bytes.clone(),
        );
        registry.register(
            "tls_handshake_duration_seconds",
            "mTLS handshake duration, per listener",
            m.handshake_seconds.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "mTLS handshakes that failed, per listener and reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "authz_decisions",
            "Connection authorization decisions, per listener, policy and outcome",
            m.decisions.clone(),
        );
        registry.register(
            "connections_refused_over_limit",
            "Connections refused at the listener's connection limit",
            m.refused_over_limit.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Not-after of the current SVID, Unix time",
            m.cert_expiry.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "decision_log_dropped",
            "Decision-log lines dropped (on_full = \"drop\", or the writer failed)",
            m.decision_log_dropped.clone(),
        );
        m.http.register(&mut registry);
        m.lockout.register(&mut registry);
        m.upstream.register(&mut registry);
        Self { registry, ..m }
    }

    /// The handles for one listener.
    pub fn listener(&self, name: &str, direction: Direction) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: name.to_owned(),
            direction: match direction {
                Direction::Inbound => DirectionLabel::inbound,
                Direction::Outbound => DirectionLabel::outbound,
                Direction::Transparent => DirectionLabel::transparent,
            },
        };
        let bytes = |flow| BytesLabels {
            listener: name.to_owned(),
            flow,
        };
        let only = ListenerOnly {
            listener: name.to_owned(),
        };
        // One statement per lookup: a family's read guard lives to the end of its statement, and a
        // second lookup in the same statement that needs the write lock would deadlock.
        let opened = self.opened.get_or_create(&labels).clone();
        let closed = self.closed.get_or_create(&labels).clone();
        let active = self.active.get_or_create(&labels).clone();
        let bytes_in = self.bytes.get_or_create(&bytes("in")).clone();
        let bytes_out = self.bytes.get_or_create(&bytes("out")).clone();
        let handshake_seconds = self.handshake_seconds.get_or_create(&only).clone();
        let refused_over_limit = self.refused_over_limit.get_or_create(&only).clone();
        ListenerMetrics {
            name: name.to_owned(),
            opened,
            closed,
            active,
            bytes_in,
            bytes_out,
            handshake_seconds,
            refused_over_limit,
            failures: self.handshake_failures.clone(),
            decisions: self.decisions.clone(),
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// === impl ListenerMetrics ===

impl ListenerMetrics {
    /// Counts a failed handshake; `reason` is a short fixed label such as `no_client_certificate`.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.failures
            .get_or_create(&HandshakeFailureLabels {
                listener: self.name.clone(),
                reason,
            })
            .inc();
    }

    /// Counts an authorization decision.
    pub fn decided(&self, policy: &str, outcome: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                listener: self.name.clone(),
                policy: policy.to_owned(),
                outcome,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_with_listener_labels() {
        let metrics = Metrics::new();
        let inbound = metrics.listener("inbound:a", Direction::Inbound);
        inbound.opened.inc();
        inbound.active.inc();
        inbound.bytes_in.inc_by(10);
        inbound.handshake_seconds.observe(0.002);
        inbound.handshake_failed("no_client_certificate");
        inbound.decided("payments-write", "allow");
        metrics.cert_expiry.set(1_800_000_000);
        metrics.access_log_dropped.inc();
        metrics.decision_log_dropped.inc();
        let text = metrics.encode();
        for expected in [
            "meshguard_connections_opened_total{listener=\"inbound:a\",direction=\"inbound\"} 1",
            "meshguard_connections_active{listener=\"inbound:a\",direction=\"inbound\"} 1",
            "meshguard_bytes_total{listener=\"inbound:a\",flow=\"in\"} 10",
            "meshguard_tls_handshake_duration_seconds_count{listener=\"inbound:a\"} 1",
            "meshguard_tls_handshake_failures_total{listener=\"inbound:a\",reason=\"no_client_certificate\"} 1",
            "meshguard_authz_decisions_total{listener=\"inbound:a\",policy=\"payments-write\",outcome=\"allow\"} 1",
            "meshguard_certificate_expiry_timestamp_seconds 1800000000",
            "meshguard_access_log_dropped_total 1",
            "meshguard_decision_log_dropped_total 1",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }
}
