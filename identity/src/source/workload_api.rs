//! Credentials from a SPIFFE Workload API endpoint (a SPIRE agent, or anything speaking its gRPC
//! protocol) through the `spiffe` crate's client.
//!
//! A background task holds the `FetchX509SVID` stream: each update (the default SVID, the bundle of
//! its trust domain, the federated bundles, each kept under its own trust domain) becomes a
//! [`Credentials`] and wakes the driver, which validates and rotates. When the endpoint goes away
//! the task reconnects with backoff; the driver keeps serving the last credentials meanwhile and
//! stops only when they expire.
//!
//! Only `unix:` endpoints are accepted: the Workload API hands out private keys, which must not
//! cross a network in plaintext (the spiffe crate would also speak plain TCP).

use futures::StreamExt as _;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::transport::Endpoint;
use spiffe::{WorkloadApiClient, X509Context};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bundle::{BundleSet, TrustBundle};
use crate::credentials::Credentials;
use crate::error::IdentityError;
use crate::spiffe_id::TrustDomain;
use crate::svid::X509Svid;

use super::driver::error_chain;
use super::error::SourceError;
use super::renewal::{Backoff, RenewalPolicy};
use super::{IdentitySource, SourceFuture};

/// What the streaming task last learned from the endpoint.
#[derive(Debug, Clone, Default)]
struct Latest {
    /// The newest credentials the endpoint sent (kept across disconnections).
    credentials: Option<Credentials>,
    /// Why the endpoint is unusable right now; `None` while the stream is healthy.
    error: Option<String>,
}

/// The Workload API identity source. Create it inside a tokio runtime; dropping it stops the
/// streaming task.
#[derive(Debug)]
pub struct WorkloadApiSource {
    endpoint: String,
    latest: watch::Receiver<Latest>,
    task: JoinHandle<()>,
}

impl WorkloadApiSource {
    /// Streams from `endpoint` (`unix:///path/to/agent.sock` or `unix:/path`), reconnecting with
    /// the default backoff (1 s doubling to 5 min, jittered).
    pub fn new(endpoint: &str) -> Result<Self, SourceError> {
        Self::with_backoff(endpoint, RenewalPolicy::default())
    }

    /// As [`Self::new`] with the reconnect backoff taken from `policy`.
    pub fn with_backoff(endpoint: &str, policy: RenewalPolicy) -> Result<Self, SourceError> {
        let parsed = Endpoint::parse(endpoint).map_err(|e| SourceError::BadEndpoint {
            endpoint: endpoint.to_owned(),
            reason: error_chain(&e),
        })?;
        if !matches!(parsed, Endpoint::Unix(_)) {
            return Err(SourceError::BadEndpoint {
                endpoint: endpoint.to_owned(),
                reason: "only unix: sockets are accepted, because the Workload API sends private \
                         keys; point this at the agent's socket, e.g. unix:///run/spire/agent.sock"
                    .to_owned(),
            });
        }
        let (tx, latest) = watch::channel(Latest::default());
        let backoff = Backoff::new(policy, StdRng::from_os_rng());
        let task = tokio::spawn(stream_forever(parsed, endpoint.to_owned(), tx, backoff));
        Ok(Self {
            endpoint: endpoint.to_owned(),
            latest,
            task,
        })
    }

    fn snapshot(&mut self) -> Result<Credentials, SourceError> {
        let source_name = self.name();
        let latest = self.latest.borrow_and_update();
        match (&latest.error, &latest.credentials) {
            (None, Some(credentials)) => Ok(credentials.clone()),
            (Some(reason), _) => Err(SourceError::NotReady {
                source_name,
                reason: reason.clone(),
            }),
            (None, None) => Err(SourceError::NotReady {
                source_name,
                reason: "no update received yet".to_owned(),
            }),
        }
    }
}

impl Drop for WorkloadApiSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IdentitySource for WorkloadApiSource {
    fn name(&self) -> String {
        format!("workload-api {}", self.endpoint)
    }

    fn fetch(&mut self) -> SourceFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(async move {
            // Before the first update, wait for the stream's first word (an update or an error)
            // instead of failing at once; the driver bounds the wait.
            let nothing_yet = {
                let latest = self.latest.borrow();
                latest.credentials.is_none() && latest.error.is_none()
            };
            if nothing_yet {
                // An error here means the task ended; the snapshot then says "not ready".
                let _ = self.latest.changed().await;
            }
            self.snapshot()
        })
    }

    fn changed(&mut self) -> SourceFuture<'_, ()> {
        Box::pin(async move {
            if self.latest.changed().await.is_err() {
                // The streaming task is gone (only on drop or panic): no news will ever come.
                std::future::pending::<()>().await;
            }
        })
    }
}

/// Connects, streams, and reconnects with backoff, forever.
async fn stream_forever(
    endpoint: Endpoint,
    name: String,
    latest: watch::Sender<Latest>,
    mut backoff: Backoff,
) {
    loop {
        let error = match stream_once(&endpoint, &name, &latest, &mut backoff).await {
            Ok(()) => "the endpoint closed the stream".to_owned(),
            Err(e) => error_chain(&e),
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            endpoint = %name,
            error = %error,
            retry_in = ?delay,
            "SPIFFE Workload API unavailable; keeping the current credentials and reconnecting"
        );
        latest.send_modify(|l| l.error = Some(error));
        tokio::time::sleep(delay).await;
    }
}

/// One connection: returns when the stream ends or fails.
async fn stream_once(
    endpoint: &Endpoint,
    name: &str,
    latest: &watch::Sender<Latest>,
    backoff: &mut Backoff,
) -> Result<(), SourceError> {
    let api_error = |source: spiffe::WorkloadApiError| SourceError::WorkloadApi {
        endpoint: name.to_owned(),
        source: Box::new(source),
    };
    let client = WorkloadApiClient::connect(endpoint.clone())
        .await
        .map_err(api_error)?;
    let mut updates = client.stream_x509_contexts().await.map_err(api_error)?;
    while let Some(update) = updates.next().await {
        let context = update.map_err(api_error)?;
        match credentials_from_context(&context) {
            Ok(credentials) => {
                backoff.reset();
                tracing::debug!(
                    endpoint = %name,
                    spiffe_id = %credentials.svid.spiffe_id(),
                    bundles = credentials.bundles.len(),
                    "X.509 context received"
                );
                latest.send_replace(Latest {
                    credentials: Some(credentials),
                    error: None,
                });
            }
            Err(e) => {
                // A malformed update does not end the stream: the next one may be fine, and the
                // driver keeps the current credentials meanwhile.
                let error = SourceError::Invalid {
                    source_name: name.to_owned(),
                    source: Box::new(e),
                };
                tracing::warn!(endpoint = %name, error = %error_chain(&error), "ignoring an unusable X.509 context");
            }
        }
    }
    Ok(())
}

/// Maps a Workload API update to our credentials: the default (first) SVID, and every bundle under
/// its own trust domain. Empty federated bundles are skipped (the protocol allows them); the
/// SVID's own bundle must not be empty.
fn credentials_from_context(context: &X509Context) -> Result<Credentials, IdentityError> {
    let svid = context.default_svid().ok_or(IdentityError::NoCertificate {
        what: "the Workload API update",
    })?;
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let svid = X509Svid::from_der(chain, key)?;
    let own = svid.spiffe_id().trust_domain();

    let mut bundles = BundleSet::new();
    for (domain, bundle) in context.bundle_set().iter() {
        let domain = TrustDomain::parse(domain.as_str())?;
        let roots: Vec<CertificateDer<'static>> = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        if roots.is_empty() && domain != own {
            continue;
        }
        bundles.insert(TrustBundle::new(domain, roots)?);
    }
    Ok(Credentials::new(svid, bundles))
}
