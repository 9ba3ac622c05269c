//! meshguard's data plane: listeners that terminate and originate mTLS with SPIFFE identities,
//! authorize each connection and request against policy, forward the bytes and log every decision.
//!
//! Not built yet: see the L4 and L7 proxy issues.
