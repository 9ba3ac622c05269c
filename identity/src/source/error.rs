//! Why an identity source could not produce credentials. Each variant names the source or file and
//! says what to check, because these errors end up in the proxy's log and nowhere else.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::IdentityError;

/// A failed attempt of an identity source. The current credentials, if any, keep serving.
///
/// Causes are boxed: `IdentityError` is large, and this error travels through every retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("cannot use the {role} file {}: {source}", path.display())]
    File {
        role: &'static str,
        path: PathBuf,
        #[source]
        source: Box<IdentityError>,
    },
    #[error("identity source {source_name} delivered credentials that cannot be served: {source}")]
    Invalid {
        source_name: String,
        #[source]
        source: Box<IdentityError>,
    },
    #[error(
        "the SPIFFE Workload API at {endpoint} failed: {source}; check that the agent runs and that this workload is registered"
    )]
    WorkloadApi {
        endpoint: String,
        #[source]
        source: Box<spiffe::WorkloadApiError>,
    },
    #[error("the SPIFFE Workload API endpoint {endpoint:?} is not usable: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("cannot watch {} for changes: {source}", path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error(
        "identity source {source_name} did not answer within {after:?}; it is retried with backoff"
    )]
    Timeout {
        source_name: String,
        after: Duration,
    },
    #[error("identity source {source_name} has no credentials yet: {reason}")]
    NotReady { source_name: String, reason: String },
    #[error("identity source {source_name} failed: {source}")]
    Other {
        source_name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
