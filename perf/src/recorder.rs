//! Per-worker measurements: latency histograms in microseconds and errors counted by kind. Each
//! worker owns one recorder (no locking on the hot path); the run merges them at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency a histogram tracks exactly: one hour. Anything slower is clamped to it.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// Why an operation failed, as counted in reports (`errors` maps [`ErrorKind::key`] to a count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The TCP connection could not be opened.
    Connect,
    /// The TLS handshake failed (certificate, identity, protocol).
    Tls,
    /// The operation did not complete within the per-request timeout.
    Timeout,
    /// The peer closed the connection or a read or write failed mid-exchange.
    Io,
    /// The peer's reply was not valid for the protocol (HTTP framing, short echo).
    Protocol,
    /// HTTP 4xx response.
    Http4xx,
    /// HTTP 5xx response.
    Http5xx,
    /// Any other non-2xx HTTP response.
    HttpOther,
}

impl ErrorKind {
    /// The stable name used as the key in reports.
    pub fn key(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::HttpOther => "http_other",
        }
    }

    /// Whether the connection may be unusable after this error (an HTTP error status leaves a
    /// kept-alive connection fine; a timeout or broken read does not).
    pub fn breaks_connection(self) -> bool {
        !matches!(
            self,
            ErrorKind::Http4xx | ErrorKind::Http5xx | ErrorKind::HttpOther
        )
    }

    /// Classifies an HTTP status; `None` for success (2xx).
    pub fn from_status(status: http::StatusCode) -> Option<Self> {
        if status.is_success() {
            None
        } else if status.is_client_error() {
            Some(ErrorKind::Http4xx)
        } else if status.is_server_error() {
            Some(ErrorKind::Http5xx)
        } else {
            Some(ErrorKind::HttpOther)
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // Invariant: bounds 1..=MAX_TRACKED_US with 3 significant figures are valid constants.
        let hist =
            Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("valid histogram bounds");
        Latencies(hist)
    }
}

impl Latencies {
    /// Records one latency (clamped to [1 µs, 1 h]).
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, MAX_TRACKED_US));
    }

    /// Adds another histogram's samples to this one.
    pub fn merge(&mut self, other: &Latencies) {
        // Both histograms share the same bounds, so adding cannot run out of range; saturate anyway.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// How many samples were recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many samples are at least `threshold`.
    pub fn count_at_least(&self, threshold: Duration) -> u64 {
        let us = u64::try_from(threshold.as_micros()).unwrap_or(u64::MAX);
        self.0.count_between(us.max(1), MAX_TRACKED_US)
    }

    /// The value at `quantile` (0.0..=1.0) in microseconds; 0 when empty.
    pub fn quantile_us(&self, quantile: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(quantile)
        }
    }

    /// The highest recorded value in microseconds; 0 when empty.
    pub fn max_us(&self) -> u64 {
        if self.0.is_empty() { 0 } else { self.0.max() }
    }

    /// The mean in microseconds; 0 when empty.
    pub fn mean_us(&self) -> f64 {
        if self.0.is_empty() {
            0.0
        } else {
            self.0.mean()
        }
    }
}

/// Everything one worker measured.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// Completion minus *intended* send time (open loop) or minus actual send time (closed loop).
    pub latency: Latencies,
    /// Completion minus actual send time: what a generator that suffers coordinated omission would
    /// report. Kept to show the difference, never as the headline figure.
    pub service: Latencies,
    /// Actual send minus intended send: how late the generator itself was, either because the
    /// target held every connection (queueing, part of the latency) or because the generator
    /// could not keep the schedule (its own floor; read this before trusting sub-ms figures).
    pub send_lag: Latencies,
    /// Failed operations by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Recorder {
    /// Counts one failure.
    pub fn error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_default() += 1;
    }

    /// Total failures of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another recorder's samples and errors to this one.
    pub fn merge(&mut self, other: &Recorder) {
        self.latency.merge(&other.latency);
        self.service.merge(&other.service);
        self.send_lag.merge(&other.send_lag);
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for ms in 1..=100 {
            a.latency.record(Duration::from_millis(ms));
        }
        b.latency.record(Duration::from_secs(2));
        b.error(ErrorKind::Timeout);
        b.error(ErrorKind::Timeout);
        a.error(ErrorKind::Connect);
        a.merge(&b);
        assert_eq!(a.latency.len(), 101);
        assert_eq!(a.latency.count_at_least(Duration::from_millis(51)), 51);
        assert!(a.latency.max_us() >= 1_999_000);
        let p50 = a.latency.quantile_us(0.5);
        assert!((50_000..=51_100).contains(&p50), "{p50}");
        assert_eq!(a.errors[&ErrorKind::Timeout], 2);
        assert_eq!(a.errors[&ErrorKind::Connect], 1);
        assert_eq!(a.error_count(), 3);
    }

    #[test]
    fn empty_histogram_reads_zero() {
        let l = Latencies::default();
        assert_eq!(l.quantile_us(0.99), 0);
        assert_eq!(l.max_us(), 0);
        assert!(l.is_empty());
    }

    #[test]
    fn statuses_classify() {
        assert_eq!(ErrorKind::from_status(http::StatusCode::OK), None);
        assert_eq!(
            ErrorKind::from_status(http::StatusCode::FORBIDDEN),
            Some(ErrorKind::Http4xx)
        );
        assert_eq!(
            ErrorKind::from_status(http::StatusCode::BAD_GATEWAY),
            Some(ErrorKind::Http5xx)
        );
        assert_eq!(
            ErrorKind::from_status(http::StatusCode::MOVED_PERMANENTLY),
            Some(ErrorKind::HttpOther)
        );
    }
}
