//! meshguard's load generator and harness: it measures handshakes, forwarding throughput and
//! latency at a fixed rate against meshguard, direct connections and peer proxies, open loop and
//! from each request's intended send time, so a stalled target shows in the percentiles.
//!
//! # Layout
//! - [`rate`], [`pacer`], [`engine`]: the open-loop schedule, the thread that keeps it, and the
//!   runner that drives one [`engine::Exchange`] per connection (or closed loop for `--rate max`).
//! - [`recorder`], [`report`]: HdrHistograms in microseconds, errors by kind, and the report
//!   printed as a table and written as JSON.
//! - [`connect`], [`tls`]: TCP plus optional TLS/mTLS with identity's profile.
//! - [`http`], [`handshake`], [`tcp`]: the `perf http`, `perf handshake` and `perf tcp` modes.
//! - [`upstream`]: the built-in fast upstream (HTTP/1.1, HTTP/2 and TCP echo on one port).
//! - [`measure`]: each mode's run, from arguments to [`report::Report`].
//! - [`soak`]: `perf soak`, the bounded mixed run through a sidecar pair that checks the proxy
//!   gives back every descriptor and its memory afterwards.
//! - [`cli`]: the `meshguard perf` arguments and the runtime that runs them.
//! - `benches/`: criterion benches of the fast path: full and resumed mTLS handshakes in memory,
//!   and the copy loop over an in-memory duplex and loopback TCP.

#![forbid(unsafe_code)]

/// `println!` / `print!` that hand the write error back instead of panicking: a reader that
/// stops early (`meshguard perf compare | head`) closes the pipe, and the command must end quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

pub mod cli;
pub mod compare;
pub mod connect;
pub mod engine;
pub mod handshake;
pub mod http;
pub mod measure;
pub mod pacer;
pub mod rate;
pub mod recorder;
pub mod report;
pub mod soak;
pub mod tcp;
pub mod tls;
pub mod upstream;

pub use cli::{Command, run};
