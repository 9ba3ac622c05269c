//! A signing key inside a PKCS#11 token, generated there and never leaving it.
//!
//! Faults are states: every failed call drops the sessions, and the next signature re-initialises
//! the module, finds the token by label, logs in again and resumes, so an HSM that goes away and
//! comes back needs no restart. While it is away, [`SigningKey::sign`] answers "HSM unavailable"
//! with the cause.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::Error as P11Error;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::der::ecdsa_raw_to_der;
use super::token::{
    classify, find_key, find_slot, generate, initialise, login, read_public_key, unavailable,
};
use super::{KeyAlgorithm, KeyKind, OpenOptions, Pkcs11Uri, SigningKey, read_pin};
use crate::error::{CaError, HsmFault};
use crate::secret::Secret;

/// Sessions kept open for concurrent signing (a session serves one operation at a time).
const POOL_SIZE: usize = 8;
/// After a failed reconnect, callers fail fast for this long instead of hammering the module.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// The attributes of the private key, read back from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAttributes {
    pub sensitive: bool,
    pub always_sensitive: bool,
    pub extractable: bool,
    pub never_extractable: bool,
    pub local: bool,
    pub sign: bool,
    pub decrypt: bool,
    pub token: bool,
}

/// A live connection to the token: module context, slot and key handle.
struct Connection {
    ctx: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    generation: u64,
}

/// A PKCS#11 private key, addressed by token and object label.
pub struct Pkcs11Key {
    uri: Pkcs11Uri,
    pin_from_env: Option<Secret>,
    algorithm: KeyAlgorithm,
    public_key: Vec<u8>,
    connection: RwLock<Option<Arc<Connection>>>,
    /// Serialises reconnects and remembers the last failure.
    reconnect: Mutex<ReconnectState>,
    sessions: Vec<Mutex<Option<(u64, Session)>>>,
    next_session: AtomicUsize,
}

#[derive(Default)]
struct ReconnectState {
    generation: u64,
    last_failure: Option<(Instant, HsmFault)>,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("token", &self.uri.token)
            .field("object", &self.uri.object)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Key {
    /// Opens the key named by the URI; with `options.create`, generates it inside the token first.
    pub fn open(uri: &Pkcs11Uri, options: &OpenOptions) -> Result<Self, CaError> {
        let pin = read_pin(uri.pin_source.as_ref(), options.pin_from_env.as_ref())?;
        let ctx = initialise(uri)?;
        let slot = find_slot(&ctx, &uri.token).map_err(CaError::HsmUnavailable)?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| unavailable(&uri.token, &e))?;
        login(&session, &uri.token, &pin).map_err(CaError::HsmUnavailable)?;
        let existing = find_key(&session, &uri.object, ObjectClass::PRIVATE_KEY)
            .map_err(|e| unavailable(&uri.token, &e))?;
        let key = match (existing, options.create) {
            (Some(_), true) if !options.use_existing => {
                return Err(CaError::KeyExists {
                    what: format!("token `{}` object `{}`", uri.token, uri.object),
                });
            }
            (Some(key), _) => key,
            (None, true) => generate(&session, &uri.object, options.algorithm)
                .map_err(|e| unavailable(&uri.token, &e))?,
            (None, false) => {
                return Err(CaError::HsmUnavailable(HsmFault::KeyMissing {
                    token: uri.token.clone(),
                    object: uri.object.clone(),
                }));
            }
        };
        let (algorithm, public_key) = read_public_key(&session, &uri.object)?;
        let mut sessions = Vec::with_capacity(POOL_SIZE);
        sessions.push(Mutex::new(Some((1, session))));
        sessions.resize_with(POOL_SIZE, || Mutex::new(None));
        tracing::info!(token = %uri.token, object = %uri.object, algorithm = algorithm.name(), "opened the CA key in the HSM");
        Ok(Self {
            uri: uri.clone(),
            pin_from_env: options.pin_from_env.clone(),
            algorithm,
            public_key,
            connection: RwLock::new(Some(Arc::new(Connection {
                ctx,
                slot,
                key,
                generation: 1,
            }))),
            reconnect: Mutex::new(ReconnectState {
                generation: 1,
                last_failure: None,
            }),
            sessions,
            next_session: AtomicUsize::new(0),
        })
    }

    /// Reads the private key's security attributes back from the token.
    pub fn private_key_attributes(&self) -> Result<KeyAttributes, CaError> {
        self.with_session(|session, conn| {
            let attrs = session.get_attributes(
                conn.key,
                &[
                    AttributeType::Sensitive,
                    AttributeType::AlwaysSensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::Local,
                    AttributeType::Sign,
                    AttributeType::Decrypt,
                    AttributeType::Token,
                ],
            )?;
            let mut out = KeyAttributes {
                sensitive: false,
                always_sensitive: false,
                extractable: true,
                never_extractable: false,
                local: false,
                sign: false,
                decrypt: true,
                token: false,
            };
            for attr in attrs {
                match attr {
                    Attribute::Sensitive(v) => out.sensitive = v,
                    Attribute::AlwaysSensitive(v) => out.always_sensitive = v,
                    Attribute::Extractable(v) => out.extractable = v,
                    Attribute::NeverExtractable(v) => out.never_extractable = v,
                    Attribute::Local(v) => out.local = v,
                    Attribute::Sign(v) => out.sign = v,
                    Attribute::Decrypt(v) => out.decrypt = v,
                    Attribute::Token(v) => out.token = v,
                    _ => {}
                }
            }
            Ok(out)
        })
    }

    /// Runs `op` on a pooled session, reconnecting once when the session or module was lost.
    fn with_session<T>(
        &self,
        op: impl Fn(&Session, &Connection) -> Result<T, P11Error>,
    ) -> Result<T, CaError> {
        let mut last = None;
        for _attempt in 0..2 {
            let conn = self.connection()?;
            let index = self.next_session.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
            let Ok(mut slot) = self.sessions[index].lock() else {
                return Err(CaError::Certificate("a session lock was poisoned".into()));
            };
            if slot
                .as_ref()
                .is_none_or(|(generation, _)| *generation != conn.generation)
            {
                // A stale session belongs to a finalised context: drop it before opening anew.
                *slot = None;
                match conn.ctx.open_ro_session(conn.slot) {
                    Ok(session) => *slot = Some((conn.generation, session)),
                    Err(e) => {
                        drop(slot);
                        last = Some(self.fault(&e));
                        self.disconnect(conn.generation);
                        continue;
                    }
                }
            }
            let Some((_, session)) = slot.as_ref() else {
                continue;
            };
            match op(session, &conn) {
                Ok(value) => return Ok(value),
                Err(e) => {
                    *slot = None;
                    drop(slot);
                    let fault = self.fault(&e);
                    tracing::warn!(token = %self.uri.token, error = %fault, "HSM operation failed; reconnecting");
                    last = Some(fault);
                    self.disconnect(conn.generation);
                }
            }
        }
        let fault = last.unwrap_or(HsmFault::Other {
            detail: "no session".into(),
        });
        self.remember_failure(fault.clone());
        Err(CaError::HsmUnavailable(fault))
    }

    /// The current connection, reconnecting when there is none.
    fn connection(&self) -> Result<Arc<Connection>, CaError> {
        if let Ok(guard) = self.connection.read()
            && let Some(conn) = guard.as_ref()
        {
            return Ok(conn.clone());
        }
        let Ok(mut state) = self.reconnect.lock() else {
            return Err(CaError::Certificate(
                "the reconnect lock was poisoned".into(),
            ));
        };
        // Another caller may have reconnected while we waited.
        if let Ok(guard) = self.connection.read()
            && let Some(conn) = guard.as_ref()
        {
            return Ok(conn.clone());
        }
        if let Some((at, fault)) = &state.last_failure
            && at.elapsed() < RECONNECT_PAUSE
        {
            return Err(CaError::HsmUnavailable(fault.clone()));
        }
        match self.connect(state.generation + 1) {
            Ok(conn) => {
                state.generation += 1;
                if state.last_failure.take().is_some() {
                    tracing::info!(token = %self.uri.token, "the HSM is back; issuance resumes");
                }
                let conn = Arc::new(conn);
                if let Ok(mut guard) = self.connection.write() {
                    *guard = Some(conn.clone());
                }
                Ok(conn)
            }
            Err(fault) => {
                tracing::error!(token = %self.uri.token, error = %fault, "HSM unavailable");
                state.last_failure = Some((Instant::now(), fault.clone()));
                Err(CaError::HsmUnavailable(fault))
            }
        }
    }

    /// A fresh module context, token, login and key handle.
    fn connect(&self, generation: u64) -> Result<Connection, HsmFault> {
        let pin =
            read_pin(self.uri.pin_source.as_ref(), self.pin_from_env.as_ref()).map_err(|e| {
                HsmFault::Other {
                    detail: e.to_string(),
                }
            })?;
        let ctx = initialise(&self.uri).map_err(|e| match e {
            CaError::HsmUnavailable(fault) => fault,
            other => HsmFault::Other {
                detail: other.to_string(),
            },
        })?;
        let slot = find_slot(&ctx, &self.uri.token)?;
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| classify(&self.uri.token, &e))?;
        login(&session, &self.uri.token, &pin)?;
        let key = find_key(&session, &self.uri.object, ObjectClass::PRIVATE_KEY)
            .map_err(|e| classify(&self.uri.token, &e))?
            .ok_or_else(|| HsmFault::KeyMissing {
                token: self.uri.token.clone(),
                object: self.uri.object.clone(),
            })?;
        let (_, public_key) =
            read_public_key(&session, &self.uri.object).map_err(|e| HsmFault::Other {
                detail: e.to_string(),
            })?;
        if public_key != self.public_key {
            return Err(HsmFault::KeyMissing {
                token: self.uri.token.clone(),
                object: self.uri.object.clone(),
            });
        }
        if let Some(slot_mutex) = self.sessions.first()
            && let Ok(mut s) = slot_mutex.lock()
        {
            *s = Some((generation, session));
        }
        Ok(Connection {
            ctx,
            slot,
            key,
            generation,
        })
    }

    /// Forgets the connection of `generation` (and its sessions), finalising the module so the
    /// next connect rescans the tokens.
    fn disconnect(&self, generation: u64) {
        let old = match self.connection.write() {
            Ok(mut guard) if guard.as_ref().is_some_and(|c| c.generation == generation) => {
                guard.take()
            }
            _ => None,
        };
        let Some(old) = old else { return };
        for slot in &self.sessions {
            if let Ok(mut s) = slot.lock()
                && s.as_ref().is_some_and(|(g, _)| *g == generation)
            {
                *s = None;
            }
        }
        // Finalise only when no other caller still holds the context (they retry anyway).
        if let Ok(conn) = Arc::try_unwrap(old) {
            let _ignored = conn.ctx.finalize();
        }
    }

    fn fault(&self, error: &P11Error) -> HsmFault {
        classify(&self.uri.token, error)
    }

    fn remember_failure(&self, fault: HsmFault) {
        if let Ok(mut state) = self.reconnect.lock() {
            state.last_failure = Some((Instant::now(), fault));
        }
    }
}

impl SigningKey for Pkcs11Key {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key_raw(&self) -> &[u8] {
        &self.public_key
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        let (mechanism, input, raw) = match self.algorithm {
            KeyAlgorithm::EcdsaP256 => (
                Mechanism::Ecdsa,
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message)
                    .as_ref()
                    .to_vec(),
                true,
            ),
            KeyAlgorithm::EcdsaP384 => (
                Mechanism::Ecdsa,
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, message)
                    .as_ref()
                    .to_vec(),
                true,
            ),
            KeyAlgorithm::Ed25519 => (
                Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                message.to_vec(),
                false,
            ),
        };
        let signature =
            self.with_session(|session, conn| session.sign(&mechanism, conn.key, &input))?;
        if !raw {
            return Ok(signature);
        }
        ecdsa_raw_to_der(&signature).ok_or_else(|| {
            CaError::HsmUnavailable(HsmFault::Other {
                detail: format!(
                    "the token returned a {}-byte ECDSA signature",
                    signature.len()
                ),
            })
        })
    }

    fn kind(&self) -> KeyKind {
        KeyKind::Hsm
    }

    fn location(&self) -> String {
        super::KeyUri::Pkcs11(self.uri.clone()).to_string()
    }

    fn unavailable(&self) -> Option<String> {
        let state = self.reconnect.lock().ok()?;
        let connected = self.connection.read().ok().is_some_and(|c| c.is_some());
        match &state.last_failure {
            Some((_, fault)) if !connected => Some(fault.to_string()),
            _ => None,
        }
    }
}
