//! The CA as a whole: state directory, key, issuer, tokens and audit trail, and the three ways a
//! certificate is asked for (operator, bootstrap token, renewal). Every decision is audited.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshguard_identity::{SpiffeId, TrustBundle, TrustDomain};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::audit::{AuditLog, Entry, Event, Outcome, timestamp};
use crate::error::{CaError, Refusal};
use crate::issue::{CaIssuer, Issued, TtlPolicy, parse_csr, pem_cert};
use crate::key::{KeyAlgorithm, KeyKind, KeyUri, OpenOptions, open_key};
use crate::lineage::Lineage;
use crate::revocation::{Published, RevocationFile};
use crate::secret::Secret;
use crate::state::{CaConfig, DEFAULT_MAX_RENEWAL_CHAIN, StateDir, write_new};
use crate::tokens::TokenStore;
pub use renewal::ClientCert;

mod renewal;

/// Where an issued certificate comes from, for its audit record and the lineage index.
struct Provenance {
    /// A renewal: the presented certificate's serial.
    renewed_from: Option<String>,
    /// When the renewal chain began (RFC 3339).
    chain_start: String,
}

impl Provenance {
    /// A new chain (bootstrap, operator issuance).
    fn fresh(now: SystemTime) -> Self {
        Self {
            renewed_from: None,
            chain_start: timestamp(now),
        }
    }
}

/// What `meshguard ca init` is asked to set up.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub trust_domain: TrustDomain,
    pub key: KeyUri,
    pub algorithm: KeyAlgorithm,
    pub use_existing_key: bool,
    /// Lifetime of the root certificate.
    pub root_ttl: Duration,
    /// Optional URI SAN of the root (e.g. `spiffe://td`).
    pub root_spiffe_id: Option<SpiffeId>,
    pub ttl: TtlPolicy,
    pub pin_from_env: Option<Secret>,
}

/// A running CA over its state directory.
#[derive(Debug)]
pub struct Authority {
    state: StateDir,
    issuer: CaIssuer,
    bundle: TrustBundle,
    tokens: TokenStore,
    audit: AuditLog,
    revocations: RevocationFile,
    lineage: Lineage,
    /// Longest a chain of renewals may run from its bootstrap.
    max_chain: Duration,
}

/// What `meshguard ca status` shows.
#[derive(Debug, Clone)]
pub struct Status {
    pub trust_domain: String,
    pub key_kind: KeyKind,
    pub key_location: String,
    pub algorithm: KeyAlgorithm,
    pub key_unavailable: Option<String>,
    pub root_not_after: String,
    pub ttl: TtlPolicy,
    pub issued: usize,
    pub refused: usize,
}

impl Authority {
    /// Creates the state directory, the key (inside the HSM) and the self-signed root.
    pub fn init(dir: &Path, options: InitOptions, now: SystemTime) -> Result<Self, CaError> {
        let state = StateDir::new(dir);
        state.create()?;
        let key = open_key(
            &options.key,
            &OpenOptions {
                create: true,
                use_existing: options.use_existing_key,
                algorithm: options.algorithm,
                pin_from_env: options.pin_from_env.clone(),
            },
        )?;
        let root = CaIssuer::create_root(
            key.clone(),
            &options.trust_domain,
            options.root_spiffe_id.as_ref(),
            options.root_ttl,
            now,
        )?;
        write_new(&state.root_cert(), pem_cert(&root).as_bytes(), 0o644)?;
        state.write_config(&CaConfig {
            trust_domain: options.trust_domain.to_string(),
            key: options.key.to_string(),
            default_ttl: format!("{}s", options.ttl.default_ttl.as_secs()),
            max_ttl: format!("{}s", options.ttl.max_ttl.as_secs()),
            max_renewal_chain: None,
        })?;
        tracing::info!(state = %dir.display(), key = %key.location(), kind = %key.kind(), "initialised the CA");
        Self::assemble(
            state,
            key,
            root,
            options.ttl,
            &options.trust_domain,
            DEFAULT_MAX_RENEWAL_CHAIN,
        )
    }

    /// Opens an initialised CA (the key must be reachable: for an HSM, its PIN too).
    pub fn open(dir: &Path, pin_from_env: Option<Secret>) -> Result<Self, CaError> {
        let state = StateDir::new(dir);
        let config = state.read_config()?;
        let config_path = state.config();
        let bad = |reason: String| CaError::State {
            path: config_path.clone(),
            reason,
        };
        let trust_domain = TrustDomain::parse(&config.trust_domain)
            .map_err(|e| bad(format!("trust_domain: {e}")))?;
        let key_uri: KeyUri = config.key.parse()?;
        let ttl = config.ttl_policy(&config_path)?;
        let max_chain = config.max_renewal_chain(&config_path)?;
        let key = open_key(
            &key_uri,
            &OpenOptions {
                pin_from_env,
                ..OpenOptions::default()
            },
        )?;
        let root_path = state.root_cert();
        let root_pem = std::fs::read(&root_path)
            .map_err(|e| CaError::io("reading the root certificate", &root_path, e))?;
        let root = CertificateDer::from_pem_slice(&root_pem).map_err(|e| CaError::State {
            path: root_path,
            reason: format!("not a PEM certificate: {e}"),
        })?;
        Self::assemble(state, key, root, ttl, &trust_domain, max_chain)
    }

    fn assemble(
        state: StateDir,
        key: Arc<dyn crate::key::SigningKey>,
        root: CertificateDer<'static>,
        ttl: TtlPolicy,
        trust_domain: &TrustDomain,
        max_chain: Duration,
    ) -> Result<Self, CaError> {
        if key.kind() == KeyKind::SoftwareDevelopmentOnly {
            tracing::warn!(key = %key.location(), "this CA signs with a SOFTWARE KEY: DEVELOPMENT ONLY");
        }
        let bundle = TrustBundle::new(trust_domain.clone(), vec![root.clone()])
            .map_err(CaError::identity)?;
        let issuer = CaIssuer::new(trust_domain.clone(), key, root, ttl)?;
        let audit = AuditLog::open(&state.audit())?;
        let tokens = TokenStore::new(state.tokens());
        let lineage = Lineage::from_records(&audit.records()?, &timestamp(SystemTime::now()));
        let revocations = RevocationFile::new(state.revoked());
        Ok(Self {
            state,
            issuer,
            bundle,
            tokens,
            audit,
            revocations,
            lineage,
            max_chain,
        })
    }

    pub fn issuer(&self) -> &CaIssuer {
        &self.issuer
    }
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }
    pub fn state(&self) -> &StateDir {
        &self.state
    }
    pub fn audit_path(&self) -> PathBuf {
        self.state.audit()
    }

    /// The serials sidecars must refuse (`GET /v1/revoked`).
    pub fn published_revocations(&self) -> Result<Published, CaError> {
        Ok(self.revocations.current()?.published())
    }

    /// The trust bundle (the root) in PEM.
    pub fn bundle_pem(&self) -> String {
        self.bundle.to_pem()
    }

    /// The trust bundle in the SPIFFE format (JWK Set).
    pub fn bundle_spiffe_json(&self) -> Result<String, CaError> {
        self.bundle
            .clone()
            .with_sequence(1)
            .to_spiffe_json()
            .map_err(CaError::identity)
    }

    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Issues an SVID over a key generated here (operator issuance, the CA's own server cert).
    pub fn issue_local(
        &self,
        spiffe_id: &SpiffeId,
        dns: &[String],
        ttl: Option<Duration>,
        requester: &str,
        now: SystemTime,
    ) -> Result<(Issued, rcgen::KeyPair), CaError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        let issued = self.record(
            Event::Issue,
            requester.to_owned(),
            Some(spiffe_id),
            now,
            Provenance::fresh(now),
            || self.issuer.issue(&key, spiffe_id, dns, ttl, now),
        )?;
        Ok((issued, key))
    }

    /// Operator issuance: a key generated here, written with the chain and bundle into `out`.
    pub fn issue_to_dir(
        &self,
        spiffe_id: &SpiffeId,
        dns: &[String],
        ttl: Option<Duration>,
        out: &Path,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let (issued, key) =
            self.issue_local(spiffe_id, dns, ttl, "operator (meshguard ca issue)", now)?;
        std::fs::create_dir_all(out)
            .map_err(|e| CaError::io("creating the output directory", out, e))?;
        for name in ["svid.pem", "svid.key", "bundle.pem"] {
            let path = out.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| CaError::io("replacing", &path, e))?;
            }
        }
        write_new(&out.join("svid.pem"), issued.pem().as_bytes(), 0o644)?;
        write_new(&out.join("svid.key"), key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&out.join("bundle.pem"), self.bundle_pem().as_bytes(), 0o644)?;
        Ok(issued)
    }

    /// Records a renewal refused during the TLS handshake (the client certificate failed the SVID
    /// rules, e.g. expired or from another trust domain), so the trail holds it too.
    pub fn record_handshake_refusal(
        &self,
        peer: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<(), CaError> {
        let refusal = Refusal::InvalidClientCertificate(reason.to_owned());
        self.audit.append(
            Entry {
                event: Event::Renew,
                outcome: Outcome::Refused,
                requester: format!("mtls handshake from {peer}"),
                spiffe_id: None,
                serial: None,
                not_after: None,
                reason: Some(format!("{}: {refusal}", refusal.code())),
                renewed_from: None,
                chain_start: None,
            },
            now,
        )?;
        tracing::warn!(
            peer,
            reason,
            "refused a client certificate at the TLS handshake"
        );
        Ok(())
    }

    /// Bootstrap: a CSR with a one-time token bound to the SPIFFE ID the CSR asks for.
    pub fn sign_with_token(
        &self,
        token: &Secret,
        csr: &[u8],
        peer: &str,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let requester = format!("token:{} from {peer}", TokenStore::tag_of(token));
        let parsed = parse_csr(csr);
        let asked = parsed.as_ref().ok().map(|c| c.spiffe_id.clone());
        let provenance = Provenance::fresh(now);
        self.record(
            Event::Bootstrap,
            requester,
            asked.as_ref(),
            now,
            provenance,
            || {
                let csr = parsed?;
                let redeemed = self.tokens.redeem(token, &csr.spiffe_id, now)?;
                let issued = self.issuer.issue_for_csr(&csr, None, now);
                if issued.is_err() {
                    self.tokens.restore(&redeemed);
                }
                issued
            },
        )
    }

    /// Runs an issuance and writes its outcome to the audit trail. HSM faults become refusals
    /// ("HSM unavailable") so that the requester and the trail see the same sentence.
    fn record(
        &self,
        event: Event,
        requester: String,
        spiffe_id: Option<&SpiffeId>,
        now: SystemTime,
        provenance: Provenance,
        issue: impl FnOnce() -> Result<Issued, CaError>,
    ) -> Result<Issued, CaError> {
        let result = issue().map_err(|e| match e {
            CaError::HsmUnavailable(fault) => {
                CaError::Refused(Refusal::HsmUnavailable(fault.to_string()))
            }
            other => other,
        });
        let entry = match &result {
            Ok(issued) => Entry {
                event,
                outcome: Outcome::Issued,
                requester,
                spiffe_id: Some(issued.spiffe_id.to_string()),
                serial: Some(issued.serial.clone()),
                not_after: Some(timestamp(issued.not_after)),
                reason: None,
                renewed_from: provenance.renewed_from.clone(),
                chain_start: Some(provenance.chain_start.clone()),
            },
            Err(error) => Entry {
                event,
                outcome: Outcome::Refused,
                requester,
                spiffe_id: spiffe_id.map(ToString::to_string),
                serial: None,
                not_after: None,
                reason: Some(match error {
                    CaError::Refused(refusal) => format!("{}: {refusal}", refusal.code()),
                    other => format!("internal: {other}"),
                }),
                renewed_from: provenance.renewed_from.clone(),
                chain_start: None,
            },
        };
        self.audit.append(entry, now)?;
        match &result {
            Ok(issued) => {
                self.lineage.insert(
                    issued.serial.clone(),
                    provenance.chain_start,
                    timestamp(issued.not_after),
                    &timestamp(now),
                );
                tracing::info!(
                    spiffe_id = %issued.spiffe_id, serial = %issued.serial, ?event,
                    key = %self.key_label(), "issued an SVID"
                );
            }
            Err(e) => {
                tracing::warn!(?event, error = %e, key = %self.key_label(), "refused an SVID request")
            }
        }
        result
    }

    /// How log lines name the key: development keys say so every time.
    fn key_label(&self) -> &'static str {
        match self.issuer.key().kind() {
            KeyKind::Hsm => "hsm",
            KeyKind::SoftwareDevelopmentOnly => "SOFTWARE-KEY-DEVELOPMENT-ONLY",
        }
    }

    /// The CA's state for `meshguard ca status`.
    pub fn status(&self) -> Result<Status, CaError> {
        let records = self.audit.records()?;
        let issued = records
            .iter()
            .filter(|r| r.entry.outcome == Outcome::Issued)
            .count();
        let (_, root) = x509_parser::parse_x509_certificate(self.issuer.root())
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        let key = self.issuer.key();
        Ok(Status {
            trust_domain: self.issuer.trust_domain().to_string(),
            key_kind: key.kind(),
            key_location: key.location(),
            algorithm: key.algorithm(),
            key_unavailable: key.unavailable(),
            root_not_after: root.validity().not_after.to_string(),
            ttl: self.issuer.ttl(),
            issued,
            refused: records
                .iter()
                .filter(|r| r.entry.outcome == Outcome::Refused)
                .count(),
        })
    }
}
