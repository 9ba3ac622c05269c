//! meshguard's authorization: it compiles policy files into an immutable matcher and decides each
//! connection and request, with the policy and reasons that decided it. It does no network I/O and
//! takes the time as an input, so every decision can be replayed.
//!
//! Not built yet: see the policy issue.
