//! The L7 proxy: HTTP/1.1 and HTTP/2 on meshguard's listeners, with per-request authorization.
//!
//! # Layout
//! - [`inbound`]: mTLS in, each request authorized and forwarded to the app with XFCC.
//! - [`outbound`]: plaintext from the app, carried over one multiplexed HTTP/2 mTLS connection.
//! - [`listener`]: `protocol = "http"` and `"detect"` on the L4 listeners (HTTP or the L4 path).
//! - [`serve`]: one connection under hyper with the listener's limits and idle timeout;
//!   [`settings`]: those limits.
//! - [`exchange`]: one request's bookkeeping (log line, byte counts, metrics); [`record`]: its
//!   `http` log fields; [`metrics`]: the request metrics; [`body`]: the body type and counter.
//! - [`pool`]: upstream connections (one HTTP/2 connection per peer, a bounded HTTP/1 pool).
//! - [`authority`]: the one host a request is authorized on (and forwarded with), or a refusal.
//! - [`normalize`]: the path a request is authorized on (and forwarded with), or a refusal.
//! - [`xfcc`]: `x-forwarded-client-cert`, the caller's identity for the app.
//! - [`request_id`]: `x-request-id` and the W3C trace id.
//! - [`orig_proto`]: HTTP/1 carried over HTTP/2 between sidecars, restored on arrival.
//! - [`upgrade`]: HTTP/1.1 Upgrade and CONNECT, tunnelled once the upstream agrees.
//! - [`respond`]: the responses the proxy writes itself (403, gRPC `PERMISSION_DENIED`, 400, 502).

pub mod authority;
pub mod body;
pub mod dispatch;
pub mod exchange;
pub mod inbound;
pub mod listener;
pub mod metrics;
pub mod normalize;
pub mod orig_proto;
pub mod outbound;
pub mod pool;
pub mod record;
pub mod request_id;
pub mod respond;
pub mod serve;
pub mod settings;
pub mod upgrade;
pub mod xfcc;
