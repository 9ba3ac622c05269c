//! SPIFFE identities for meshguard: parsing SPIFFE IDs, validating X.509-SVIDs against the trust
//! bundle of the peer's own trust domain, building the one TLS profile every meshguard endpoint uses
//! (TLS 1.3, post-quantum key exchange first, mutual SPIFFE authentication), and keeping a workload's
//! credentials fresh from an identity source while open connections carry on untouched.
//!
//! # Layout
//! - [`spiffe_id`]: `SpiffeId` and `TrustDomain`, parsed by every rule of the spec.
//! - [`svid`], [`bundle`]: X.509-SVIDs and trust bundles (PEM and SPIFFE JWK Set), and
//!   [`validate_svid`], the validation core, with the time as an input; no I/O.
//! - [`error`]: `SvidError` (one variant per SVID rule) and `IdentityError`.
//! - [`credentials`]: the current SVID, key and bundles behind an atomic swap, read by rustls resolvers.
//! - [`verifier`], [`expected`], [`tls`], [`provider`], [`resumption`]: rustls verifiers that apply
//!   the SVID rules, the expected peer identities, the one TLS profile constructor, and session
//!   resumption bounded by credential rotation.
//! - [`source`]: where credentials come from (`files`, `workload_api`, the meshguard `ca`) and
//!   when they are renewed (`renewal`, pure; `driver`, the one task that runs a source). The
//!   only part of this crate that touches files and sockets.
//!
//! The validation core (`validate_svid`, bundles, expected identities) takes the time as an input.
//! Only the TLS glue reads the system clock, as rustls itself does: `RotatingCredentials::rotate`
//! (with `rotate_at` beside it) and the ticket age check in `resumption`.
//! - `test_ca` (feature `test-util`): an rcgen CA issuing good and deliberately bad SVIDs for tests.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod credentials;
pub mod error;
pub mod expected;
pub mod provider;
pub mod resumption;
pub mod source;
pub mod spiffe_id;
pub mod svid;
#[cfg(feature = "test-util")]
pub mod test_ca;
pub mod tls;
pub mod verifier;

pub use bundle::{BundleSet, TrustBundle};
pub use credentials::{Credentials, CredentialsResolver, RotatingCredentials};
pub use error::{IdentityError, SvidError};
pub use expected::ExpectedIdentities;
pub use source::{IdentitySource, RunningIdentity, SourceError, StartOptions};
pub use spiffe_id::{IdError, SpiffeId, TrustDomain};
pub use svid::{X509Svid, spiffe_id_of, unix_time, validate_svid, validate_svid_parts};
pub use tls::{ClientAuth, TlsInfo, TlsProfile, tls_info};
pub use verifier::{peer_spiffe_id, svid_refusal};
