//! Limits and timeouts of the HTTP proxy, and how they map onto hyper's builders.
//!
//! The defaults are chosen against the known HTTP/2 and HTTP/1 attacks: a bounded header block
//! (CONTINUATION floods end at `max_header_bytes`), a bound on streams reset by the client
//! before the server saw them (rapid reset, CVE-2023-44487), a header read timeout (slowloris),
//! and a bound on concurrent streams per connection.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};

use super::respond::Detail;
use crate::config::HumanDuration;
use crate::detect::DetectConfig;

/// The HTTP settings of a listener.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// From the request's arrival to the upstream's response headers; beyond it, 504.
    pub request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A client must send a complete HTTP/1 header block within this time (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request header block, HTTP/1 and HTTP/2 alike (431 / stream reset beyond it).
    pub max_header_bytes: u32,
    /// Most header fields in an HTTP/1 request.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Streams a client may reset before the server saw them, before the connection is closed
    /// with `ENHANCE_YOUR_CALM` (HTTP/2 rapid reset).
    pub max_pending_accept_reset_streams: usize,
    /// Idle HTTP/1 connections kept per upstream.
    pub pool_max_idle: usize,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// Whether denial reasons are shown to callers.
    pub detail: Detail,
    /// Protocol detection (listeners with `protocol = "detect"`).
    pub detect: DetectConfig,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_streams: 256,
            max_pending_accept_reset_streams: 20,
            pool_max_idle: 64,
            pool_idle_timeout: Duration::from_secs(90),
            detail: Detail::Hide,
            detect: DetectConfig::default(),
        }
    }
}

/// Whether denial reasons are shown, as written in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetailConfig {
    /// Show the reason (for development meshes: it tells an attacker which rule to dodge).
    Show,
    /// Show only the request id; the reason is in the access log under that id.
    #[default]
    Hide,
}

impl From<DetailConfig> for Detail {
    fn from(value: DetailConfig) -> Self {
        match value {
            DetailConfig::Show => Detail::Show,
            DetailConfig::Hide => Detail::Hide,
        }
    }
}

/// The `[http]` table of the proxy config: limits and timeouts of every HTTP listener. Every key
/// is optional; unknown keys are errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// From a request's arrival to the upstream's response headers (504 beyond).
    pub request_timeout: HumanDuration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: HumanDuration,
    /// Time allowed for a complete HTTP/1 header block (slowloris).
    pub header_read_timeout: HumanDuration,
    /// Largest request header block in bytes (HTTP/1 and HTTP/2).
    pub max_header_bytes: u32,
    /// Most header fields in an HTTP/1 request.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Client-reset streams tolerated before `ENHANCE_YOUR_CALM` (HTTP/2 rapid reset).
    pub max_pending_accept_reset_streams: usize,
    /// Idle HTTP/1 connections kept per upstream.
    pub pool_max_idle: usize,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: HumanDuration,
    /// `hide` (default) or `show` the denial reason in 403 bodies and `grpc-message`.
    pub deny_details: DetailConfig,
    /// How long detection waits for a client's first bytes (`protocol = "detect"`).
    pub detect_timeout: HumanDuration,
    /// Destination ports that skip detection.
    pub opaque_ports: Vec<u16>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let s = HttpSettings::default();
        let d = |d: Duration| HumanDuration::from_secs(d.as_secs());
        Self {
            request_timeout: d(s.request_timeout),
            idle_timeout: d(s.idle_timeout),
            header_read_timeout: d(s.header_read_timeout),
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            max_concurrent_streams: s.max_concurrent_streams,
            max_pending_accept_reset_streams: s.max_pending_accept_reset_streams,
            pool_max_idle: s.pool_max_idle,
            pool_idle_timeout: d(s.pool_idle_timeout),
            deny_details: DetailConfig::Hide,
            detect_timeout: d(s.detect.timeout),
            opaque_ports: s.detect.opaque_ports,
        }
    }
}

impl HttpConfig {
    /// The settings the listeners use.
    pub fn settings(&self) -> HttpSettings {
        HttpSettings {
            request_timeout: self.request_timeout.get(),
            idle_timeout: self.idle_timeout.get(),
            header_read_timeout: self.header_read_timeout.get(),
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_concurrent_streams: self.max_concurrent_streams,
            max_pending_accept_reset_streams: self.max_pending_accept_reset_streams,
            pool_max_idle: self.pool_max_idle,
            pool_idle_timeout: self.pool_idle_timeout.get(),
            detail: self.deny_details.into(),
            detect: DetectConfig {
                timeout: self.detect_timeout.get(),
                opaque_ports: self.opaque_ports.clone(),
            },
        }
    }
}

impl HttpSettings {
    /// A server builder for HTTP/1.1 and HTTP/2 with these limits.
    pub fn server_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            // hyper's read buffer bounds the header block (its floor is 8 KiB).
            .max_buf_size((self.max_header_bytes as usize).max(8192))
            .max_headers(self.max_headers)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(self.max_header_bytes)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(1024)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .keep_alive_timeout(Duration::from_secs(20));
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_bounded() {
        let s = HttpSettings::default();
        assert!(s.max_header_bytes <= 64 * 1024);
        assert!(s.max_pending_accept_reset_streams > 0);
        assert!(s.header_read_timeout < s.idle_timeout);
        let _ = s.server_builder();
    }

    #[test]
    fn the_config_table_round_trips_and_rejects_unknown_keys() {
        let config: HttpConfig = toml::from_str("request_timeout = \"2s\"\nmax_header_bytes = 8192\ndeny_details = \"hide\"\nopaque_ports = [25]").unwrap();
        let settings = config.settings();
        assert_eq!(settings.request_timeout, Duration::from_secs(2));
        assert_eq!(settings.max_header_bytes, 8192);
        assert_eq!(settings.detail, Detail::Hide);
        assert_eq!(settings.detect.opaque_ports, [25]);
        assert_eq!(settings.idle_timeout, HttpSettings::default().idle_timeout);
        assert!(toml::from_str::<HttpConfig>("max_header_size = 1").is_err());
    }

    #[test]
    fn reasons_are_hidden_from_callers_unless_asked() {
        assert_eq!(HttpConfig::default().settings().detail, Detail::Hide);
        let config: HttpConfig = toml::from_str("deny_details = \"show\"").unwrap();
        assert_eq!(config.settings().detail, Detail::Show);
    }
}
