//! meshguard's load generator and harness: it measures handshakes, forwarding throughput and
//! latency at a fixed rate against meshguard, direct connections and peer proxies.
//!
//! Not built yet: see the perf issue.
