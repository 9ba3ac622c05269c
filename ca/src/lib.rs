//! meshguard's certificate authority: it keeps the root signing key in an HSM (PKCS#11) or, for
//! development only, in a file, and issues X.509-SVIDs to workloads that prove who they are with a
//! bootstrap token or their current SVID, writing every decision to a tamper-evident audit trail.
//!
//! Not built yet: see the CA issue.
