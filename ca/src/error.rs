//! The crate's one error type. Every variant a user can cause reads as a sentence saying what to do.

use std::path::PathBuf;

/// Why the HSM cannot sign right now. These are states, not crashes: the key keeps trying to
/// reconnect, and issuance resumes by itself when the cause goes away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HsmFault {
    /// The PKCS#11 module (shared library) could not be loaded.
    #[error(
        "the PKCS#11 module {path} could not be loaded ({detail}); check module-path in the key URI"
    )]
    ModuleMissing { path: PathBuf, detail: String },
    /// No slot holds a token with the label.
    #[error(
        "no token labelled `{label}` is present; check the token label or initialise the token"
    )]
    TokenMissing { label: String },
    /// The user PIN was refused.
    #[error("the PIN for token `{label}` was refused; check pin-source or MESHGUARD_HSM_PIN")]
    WrongPin { label: String },
    /// Too many wrong PINs: the token refuses further logins.
    #[error(
        "the PIN of token `{label}` is locked after too many failures; the security officer must unlock it"
    )]
    PinLocked { label: String },
    /// The token holds no private key with the object label.
    #[error(
        "token `{token}` holds no private key labelled `{object}`; run `meshguard ca init` to generate it"
    )]
    KeyMissing { token: String, object: String },
    /// The session (or login) was lost, e.g. the token was removed or the HSM restarted.
    #[error("the HSM session was lost ({detail}); reconnecting")]
    SessionLost { detail: String },
    /// CKR_DEVICE_ERROR and friends: the device itself reports a fault.
    #[error("the HSM reports a device error ({detail})")]
    DeviceError { detail: String },
    /// Any other PKCS#11 failure, named by function and return value.
    #[error("PKCS#11 call failed: {detail}")]
    Other { detail: String },
}

/// Errors of the CA crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A key URI that cannot be used.
    #[error(
        "the key URI `{uri}` is not valid: {reason}; expected \
         `pkcs11:token=LABEL;object=LABEL?module-path=PATH&pin-source=file:PATH` or `file:PATH`"
    )]
    KeyUri { uri: String, reason: String },
    /// No PIN was configured for a PKCS#11 key.
    #[error("no HSM PIN given: add pin-source=file:PATH to the key URI or set MESHGUARD_HSM_PIN")]
    PinMissing,
    /// The HSM cannot sign right now.
    #[error("HSM unavailable: {0}")]
    // The fault is in the message, not a `#[source]`: chained printing would say it twice.
    HsmUnavailable(HsmFault),
    /// A key already exists where `init` was asked to create one.
    #[error("a key already exists at {what}; pass --use-existing-key to build the CA on it")]
    KeyExists { what: String },
    /// The key file or token object holds a key of an unsupported type.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// A software key file could not be read, written or parsed.
    #[error("software key {path}: {reason}")]
    SoftwareKey { path: PathBuf, reason: String },
    /// Reading or writing a file of the CA failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state directory is missing or its contents are invalid.
    #[error("CA state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    /// Building a certificate failed (a bug or an unusable key, never user input alone).
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    /// A request the CA refuses; the reason is sent to the requester and written to the audit trail.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// An identity-crate error (SPIFFE ID, bundle, TLS profile).
    #[error(transparent)]
    Identity(Box<dyn std::error::Error + Send + Sync>),
    /// The audit trail could not be written; issuance stops rather than issue unrecorded.
    #[error("the audit trail {path} could not be written: {reason}")]
    Audit { path: PathBuf, reason: String },
    /// The issuance API server failed.
    #[error("issuance API: {0}")]
    Serve(String),
}

/// Why a request for a certificate was refused. The message is what the requester and the audit
/// trail see; the code is a stable, machine-readable name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("the bootstrap token is not known to this CA; ask the operator for a new token")]
    TokenUnknown,
    #[error(
        "the bootstrap token was already used; tokens are single-use, ask the operator for a new one"
    )]
    TokenUsed,
    #[error("the bootstrap token expired at {expired_at}; ask the operator for a new one")]
    TokenExpired { expired_at: String },
    #[error("the CSR asks for {requested} but this credential allows only {allowed}")]
    IdMismatch { requested: String, allowed: String },
    #[error("the CSR is malformed: {0}; send a PKCS#10 CSR in PEM signed by its own key")]
    MalformedCsr(String),
    #[error("the CSR must carry exactly one URI SAN with a SPIFFE ID: {0}")]
    BadSpiffeId(String),
    #[error("the SPIFFE ID {id} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error("renewal needs a client certificate: connect with mTLS using the current SVID")]
    NoClientCertificate,
    #[error("the client certificate is not a valid SVID of this CA: {0}")]
    InvalidClientCertificate(String),
    #[error("the requested lifetime {requested_secs}s exceeds this CA's maximum of {max_secs}s")]
    TtlTooLong { requested_secs: u64, max_secs: u64 },
    #[error("the DNS name `{0}` is not valid")]
    BadDnsName(String),
    #[error("HSM unavailable: {0}")]
    HsmUnavailable(String),
    #[error("{0}; the workload must bootstrap again with a new token from the operator")]
    Revoked(String),
    #[error(
        "this SVID's renewal chain began at {started}, more than the CA's maximum of {max} ago; \
         the workload must bootstrap again with a new token from the operator"
    )]
    ChainTooOld { started: String, max: String },
}

impl Refusal {
    /// A stable name for the refusal, for JSON error bodies and the audit trail.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::TokenUnknown => "token_unknown",
            Refusal::TokenUsed => "token_used",
            Refusal::TokenExpired { .. } => "token_expired",
            Refusal::IdMismatch { .. } => "id_mismatch",
            Refusal::MalformedCsr(_) => "malformed_csr",
            Refusal::BadSpiffeId(_) => "bad_spiffe_id",
            Refusal::ForeignTrustDomain { .. } => "foreign_trust_domain",
            Refusal::NoClientCertificate => "no_client_certificate",
            Refusal::InvalidClientCertificate(_) => "invalid_client_certificate",
            Refusal::TtlTooLong { .. } => "ttl_too_long",
            Refusal::BadDnsName(_) => "bad_dns_name",
            Refusal::HsmUnavailable(_) => "hsm_unavailable",
            Refusal::Revoked(_) => "revoked",
            Refusal::ChainTooOld { .. } => "renewal_chain_too_old",
        }
    }
}

impl CaError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        CaError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn identity(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        CaError::Identity(Box::new(error))
    }
}
