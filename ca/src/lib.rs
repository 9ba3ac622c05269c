//! meshguard's certificate authority: it keeps the root signing key in an HSM (PKCS#11) or, for
//! development only, in a file, and issues X.509-SVIDs to workloads that prove who they are with a
//! bootstrap token or their current SVID, writing every decision to a tamper-evident audit trail.
//!
//! # Layout
//! - [`key`]: the [`SigningKey`](key::SigningKey) trait, PKCS#11 and software keys, key URIs.
//! - [`issue`]: the root certificate, SVID leaves, CSR parsing.
//! - [`authority`]: the CA as a whole: init, open, issue, bootstrap, renew, status.
//! - [`state`], [`tokens`]: the state directory and its config; one-time bootstrap tokens.
//! - [`serve`]: the issuance API over HTTPS.
//! - [`audit`]: the hash-chained audit trail and its verification.
//! - [`revocation`]: the deny list (`ca revoke`, published to sidecars); [`lineage`]: renewal
//!   chains and their maximum age.
//! - [`error`]: [`CaError`], [`HsmFault`] and [`Refusal`].
//! - [`secret`]: a wrapper that never prints PINs or tokens.

#![forbid(unsafe_code)]

pub mod audit;
pub mod authority;
pub mod error;
pub mod issue;
pub mod key;
pub mod lineage;
pub mod revocation;
pub mod secret;
pub mod serve;
pub mod state;
pub mod tokens;

pub use authority::{Authority, ClientCert, InitOptions, Status};
pub use error::{CaError, HsmFault, Refusal};
pub use secret::Secret;
