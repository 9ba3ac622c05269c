//! Rotating credentials: the workload's current SVID and trust bundles behind an atomic swap.
//!
//! rustls reads them at each handshake through [`CredentialsResolver`] (our certificate) and the
//! verifiers in [`crate::verifier`] (the bundles), so a rotation affects new handshakes only: an open
//! connection has already finished its handshake and keeps its keys. Readers never block writers.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::UnixTime;
use tokio::sync::watch;

use crate::bundle::BundleSet;
use crate::error::IdentityError;
use crate::svid::{X509Svid, unix_time};

/// A workload's SVID together with the bundles it trusts peers by.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub svid: X509Svid,
    pub bundles: BundleSet,
}

/// A cheap, cloneable handle to the current [`Credentials`]; every clone sees every rotation.
#[derive(Clone)]
pub struct RotatingCredentials {
    current: Arc<ArcSwap<Credentials>>,
    /// Bumped after each swap; session tickets and caches are bound to it (see `resumption`).
    generation: Arc<AtomicU64>,
    updates: Arc<watch::Sender<Arc<Credentials>>>,
}

/// rustls certificate resolver for both roles, reading the current SVID at each handshake.
#[derive(Clone, Debug)]
pub struct CredentialsResolver {
    credentials: RotatingCredentials,
}

// === impl Credentials ===

impl Credentials {
    pub fn new(svid: X509Svid, bundles: BundleSet) -> Self {
        Self { svid, bundles }
    }

    /// Checks that our own SVID is valid at `now` under our bundles: a workload that cannot
    /// validate its own certificate would be refused by every peer, so it is refused here first.
    pub fn check(&self, now: UnixTime) -> Result<(), IdentityError> {
        self.svid.validate(&self.bundles, now)?;
        Ok(())
    }
}

// === impl RotatingCredentials ===

impl RotatingCredentials {
    /// Starts from `credentials`, which must be valid now (see [`Credentials::check`]).
    pub fn new(credentials: Credentials) -> Result<Self, IdentityError> {
        Self::new_at(credentials, unix_time(SystemTime::now()))
    }

    /// As [`Self::new`], validating at the given time.
    pub fn new_at(credentials: Credentials, now: UnixTime) -> Result<Self, IdentityError> {
        credentials.check(now)?;
        let credentials = Arc::new(credentials);
        let (updates, _) = watch::channel(credentials.clone());
        Ok(Self {
            current: Arc::new(ArcSwap::new(credentials)),
            generation: Arc::new(AtomicU64::new(0)),
            updates: Arc::new(updates),
        })
    }

    /// The credentials in force now. Cheap: one atomic load and an `Arc` clone.
    pub fn current(&self) -> Arc<Credentials> {
        self.current.load_full()
    }

    /// Replaces the credentials for all new handshakes, if the new SVID validates against the new
    /// bundles now; otherwise keeps the current ones and says why.
    pub fn rotate(&self, credentials: Credentials) -> Result<(), IdentityError> {
        self.rotate_at(credentials, unix_time(SystemTime::now()))
    }

    /// As [`Self::rotate`], validating at the given time.
    pub fn rotate_at(&self, credentials: Credentials, now: UnixTime) -> Result<(), IdentityError> {
        credentials.check(now)?;
        let credentials = Arc::new(credentials);
        self.current.store(credentials.clone());
        // After the store: a ticket minted in between carries the old generation and is merely
        // not resumed, whereas the reverse order could bind old credentials to the new generation.
        self.generation.fetch_add(1, Ordering::AcqRel);
        // `send_replace` never fails, even with no subscriber left.
        self.updates.send_replace(credentials);
        tracing::info!(
            spiffe_id = %self.current().svid.spiffe_id(),
            not_after = ?self.expires_at(),
            "credentials rotated; new handshakes use the new SVID"
        );
        Ok(())
    }

    /// Observes rotations (and through them the expiry time), e.g. for metrics or renewal timers.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Credentials>> {
        self.updates.subscribe()
    }

    /// How many rotations happened; resumption state is bound to it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// When the current SVID expires.
    pub fn expires_at(&self) -> SystemTime {
        self.current.load().svid.expires_at()
    }

    /// A rustls resolver (server and client side) that serves the current SVID.
    pub fn resolver(&self) -> Arc<CredentialsResolver> {
        Arc::new(CredentialsResolver {
            credentials: self.clone(),
        })
    }
}

impl fmt::Debug for RotatingCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatingCredentials")
            .field("current", &self.current.load())
            .finish()
    }
}

// === impl CredentialsResolver ===

impl CredentialsResolver {
    fn certified_key(&self) -> Arc<CertifiedKey> {
        self.credentials.current.load().svid.certified_key()
    }
}

impl ResolvesServerCert for CredentialsResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl ResolvesClientCert for CredentialsResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let key = self.certified_key();
        // Present the SVID only if the server accepts a scheme our key can sign with; otherwise
        // rustls would fail locally with a less helpful error.
        key.key.choose_scheme(sigschemes).map(|_| key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}
