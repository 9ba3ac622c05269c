//! Identity sources: where a workload's credentials come from and when they are renewed.
//!
//! Every source implements [`IdentitySource`]: it can `fetch` credentials on demand and says when it
//! has news (`changed`: a file was rewritten, the SPIFFE agent pushed a rotation). The one driver in
//! [`driver`] runs any source the same way, so the rules live in one place:
//!
//! - [`IdentitySource::start`] returns only once valid credentials exist: a workload serves no
//!   traffic until it has a certificate.
//! - Every new SVID is validated against the bundle of its own trust domain (with the key checked
//!   against the leaf) before it is swapped in; anything broken keeps the old credentials and is
//!   logged with the reason.
//! - Renewal at half of the lifetime ±10 % jitter, retries with capped exponential backoff, the
//!   current certificate serving until it expires ([`renewal`]).
//! - The expiry and the state are published on a watch channel ([`IdentityStatus`]) for metrics.
//!
//! Sources: [`files`] (PEM files, watched), [`workload_api`] (a SPIFFE Workload API endpoint such as
//! a SPIRE agent) and [`ca`] (the meshguard CA).
//!
//! ```no_run
//! # async fn wire() -> Result<(), meshguard_identity::source::SourceError> {
//! use meshguard_identity::source::{FilesConfig, FilesSource, IdentitySource, StartOptions};
//!
//! let source: Box<dyn IdentitySource> =
//!     Box::new(FilesSource::new(FilesConfig::in_dir("/etc/meshguard/identity"))?);
//! // Returns once a valid SVID is in hand; keeps it fresh until `identity` is dropped.
//! let identity = source.start(StartOptions::default()).await;
//! let resolver = identity.credentials().resolver(); // for the TLS profile
//! let mut status = identity.status(); // expiry and state, for metrics and readiness
//! status.changed().await.ok();
//! let _serving = identity.is_serving() && status.borrow().not_after > std::time::SystemTime::now();
//! # drop(resolver);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;

use crate::credentials::Credentials;

pub mod ca;
pub mod clock;
pub mod driver;
pub mod error;
pub mod files;
pub mod renewal;
pub mod workload_api;

pub use ca::{CaSource, CaSourceConfig};
pub use clock::SourceClock;
pub use driver::{IdentityState, IdentityStatus, RunningIdentity, StartOptions};
pub use error::SourceError;
pub use files::{FilesConfig, FilesSource};
pub use renewal::{Backoff, RenewalPolicy, RenewalSchedule, Step, Validity};
pub use workload_api::WorkloadApiSource;

/// A boxed, sendable future: the return type of the object-safe methods of [`IdentitySource`].
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where credentials come from. Implementations only know how to get credentials; when to ask,
/// what to validate and how to publish is the driver's job ([`IdentitySource::start`]).
///
/// The trait is object safe, so the proxy can pick a source from its config and hold a
/// `Box<dyn IdentitySource>`; `start` works on the box too.
pub trait IdentitySource: Send + 'static {
    /// Names the source in logs and errors, e.g. `files /etc/meshguard/svid.pem`.
    fn name(&self) -> String;

    /// Gets the credentials the source holds now (reading files, asking the CA, or taking the
    /// agent's latest update). Called at start, at renewal time, on retries and after `changed`.
    fn fetch(&mut self) -> SourceFuture<'_, Result<Credentials, SourceError>>;

    /// Resolves when the source has news worth a `fetch` before the next scheduled renewal.
    /// Sources that only renew on schedule (a CA) keep the default, which never resolves.
    fn changed(&mut self) -> SourceFuture<'_, ()> {
        Box::pin(std::future::pending())
    }

    /// Waits for the first valid credentials, then keeps them fresh in a background task.
    ///
    /// This waits (retrying with backoff and logging each failure) for as long as it takes, as a
    /// workload without a certificate has nothing to serve; wrap it in `tokio::time::timeout` to
    /// give up earlier.
    fn start(self, options: StartOptions) -> SourceFuture<'static, RunningIdentity>
    where
        Self: Sized,
    {
        Box::pin(driver::start(self, options))
    }
}

impl<S: IdentitySource + ?Sized> IdentitySource for Box<S> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn fetch(&mut self) -> SourceFuture<'_, Result<Credentials, SourceError>> {
        (**self).fetch()
    }

    fn changed(&mut self) -> SourceFuture<'_, ()> {
        (**self).changed()
    }
}
