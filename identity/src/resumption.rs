//! Session resumption that cannot outlive a credential rotation.
//!
//! A resumed TLS 1.3 session skips the certificate exchange, so neither side's verifier runs:
//! rustls would accept a server ticket for its whole 12 h key lifetime, long after the peer's SVID
//! expired or its CA left the bundle. Two wrappers bound that window:
//! - [`RotationBoundTicketer`] (server): tickets carry, inside their encryption, the credentials
//!   generation and issue time; a ticket from before our last rotation, or older than
//!   [`TICKET_LIFETIME`], is not resumed (the client falls back to a full, verified handshake).
//! - [`RotationBoundSessionStore`] (client): cached sessions are dropped when our own credentials
//!   rotate, so servers see the new certificate on the next connection.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::server::ProducesTickets;

use crate::credentials::RotatingCredentials;

/// The longest a session ticket is honoured: short next to an SVID's lifetime (1 h by default),
/// long enough that sidecar pairs reconnecting in bursts resume most handshakes.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Client sessions cached per config (per server name, a few tickets each).
const CLIENT_CACHE_SIZE: usize = 256;

/// Header inside each ticket: credentials generation (8 bytes) and issue time (8 bytes, Unix s).
const HEADER_LEN: usize = 16;

/// Server ticketer bound to the credentials generation and to [`TICKET_LIFETIME`].
pub struct RotationBoundTicketer {
    inner: Arc<dyn ProducesTickets>,
    credentials: RotatingCredentials,
}

/// Client session cache emptied whenever our own credentials rotate.
pub struct RotationBoundSessionStore {
    credentials: RotatingCredentials,
    cache: ArcSwap<(u64, Arc<ClientSessionMemoryCache>)>,
}

// === impl RotationBoundTicketer ===

impl RotationBoundTicketer {
    pub fn new(credentials: RotatingCredentials) -> Result<Self, rustls::Error> {
        Ok(Self {
            inner: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            credentials,
        })
    }
}

impl ProducesTickets for RotationBoundTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(TICKET_LIFETIME.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut framed = Vec::with_capacity(HEADER_LEN + plain.len());
        framed.extend_from_slice(&self.credentials.generation().to_be_bytes());
        framed.extend_from_slice(&unix_now().to_be_bytes());
        framed.extend_from_slice(plain);
        self.inner.encrypt(&framed)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let framed = self.inner.decrypt(cipher)?;
        let (header, plain) = framed.split_at_checked(HEADER_LEN)?;
        let (generation, issued) = header.split_at(8);
        let generation = u64::from_be_bytes(generation.try_into().ok()?);
        let issued = u64::from_be_bytes(issued.try_into().ok()?);
        let fresh = unix_now().saturating_sub(issued) <= TICKET_LIFETIME.as_secs();
        (generation == self.credentials.generation() && fresh).then(|| plain.to_vec())
    }
}

impl fmt::Debug for RotationBoundTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotationBoundTicketer")
            .field("generation", &self.credentials.generation())
            .finish_non_exhaustive()
    }
}

// === impl RotationBoundSessionStore ===

impl RotationBoundSessionStore {
    pub fn new(credentials: RotatingCredentials) -> Self {
        let generation = credentials.generation();
        Self {
            credentials,
            cache: ArcSwap::from_pointee((
                generation,
                Arc::new(ClientSessionMemoryCache::new(CLIENT_CACHE_SIZE)),
            )),
        }
    }

    /// The cache for the current generation, replacing a stale one. Two handshakes racing over a
    /// rotation may both replace it; they lose only cached sessions, never correctness.
    fn current(&self) -> Arc<ClientSessionMemoryCache> {
        let generation = self.credentials.generation();
        let cached = self.cache.load();
        if cached.0 == generation {
            return cached.1.clone();
        }
        let fresh = Arc::new(ClientSessionMemoryCache::new(CLIENT_CACHE_SIZE));
        self.cache.store(Arc::new((generation, fresh.clone())));
        fresh
    }
}

impl ClientSessionStore for RotationBoundSessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.current().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.current().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.current().set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.current().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.current().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.current().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.current().take_tls13_ticket(server_name)
    }
}

impl fmt::Debug for RotationBoundSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotationBoundSessionStore")
            .field("generation", &self.cache.load().0)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
