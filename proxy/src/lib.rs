//! meshguard's data plane: listeners that terminate and originate mTLS with SPIFFE identities,
//! authorize each connection against policy, forward the bytes and log every connection.
//!
//! # Layout
//! - [`config`]: the TOML config file parsed into validated types.
//! - [`copy`]: the bidirectional copy loop (half-close, reused buffers, idle timeout).
//! - [`access_log`]: one JSON line per connection, written off the data path.
//! - [`metrics`]: the Prometheus registry.
//! - [`admin`]: probes (`/live`, `/ready`, `/metrics`) on TCP; the control surface (`/certs`,
//!   `/config`, lockout, break-glass) on a Unix socket, uid-checked and audited.
//! - [`original_dst`]: the original destination of a redirected connection.
//! - [`iptables`]: the REDIRECT rules for transparent capture.
//! - [`server`]: wiring a [`config::Config`] into listeners, admin and access log; drain on stop.
//! - [`listener`]: the accept loop, connection limit and per-connection bookkeeping.
//! - [`inbound`], [`outbound`], [`transparent`]: the three kinds of listener; [`upstream`]
//!   connects onwards; [`authz`] asks the policy; [`tls_error`] says why a handshake failed.
//! - [`lockout`]: temporary blocks of callers after repeated denials or failed handshakes;
//!   [`break_glass`]: emergency grants added through the admin API.
//! - [`legacy_tls`]: a gateway's TLS towards legacy hosts (`forward_tls`) and for legacy clients
//!   (`listen_tls`).
//! - [`detect`]: protocol detection (HTTP/1, HTTP/2, opaque); [`http`]: the L7 proxy
//!   (per-request authorization, XFCC, request access log, limits).

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod authz;
pub mod balance;
pub mod break_glass;
pub mod config;
pub mod copy;
pub mod detect;
pub mod http;
pub mod inbound;
pub mod iptables;
pub mod legacy_tls;
pub mod listener;
pub mod lockout;
pub mod metrics;
pub mod original_dst;
pub mod outbound;
pub mod server;
pub mod tls_error;
pub mod transparent;
pub mod upstream;

pub use config::Config;
pub use server::{CredentialsInput, ProxyError, RunningProxy, run, start};
