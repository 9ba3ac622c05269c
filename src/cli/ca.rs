//! `meshguard ca`: argument parsing and wiring onto `meshguard_ca`; the CA itself lives there.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use meshguard_ca::audit;
use meshguard_ca::key::{KeyAlgorithm, KeyUri};
use meshguard_ca::revocation::{self, Target};
use meshguard_ca::serve::Limits;
use meshguard_ca::state::parse_duration;
use meshguard_ca::tokens::DEFAULT_TOKEN_TTL;
use meshguard_ca::{Authority, InitOptions, Secret};
use meshguard_identity::{SpiffeId, TrustDomain};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create the CA: state directory, root key (generated inside the HSM) and self-signed root.
    Init(InitArgs),
    /// Issue an SVID offline (key generated here): writes svid.pem, svid.key and bundle.pem.
    Issue(IssueArgs),
    /// Bootstrap tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Serve the issuance API over TLS (bootstrap with a token, renew over mTLS, bundle).
    Serve(ServeArgs),
    /// Revoke a certificate (--serial) or every certificate of an identity (--spiffe-id): the CA
    /// refuses to renew it, and publishes it so sidecars refuse it too. Needs no HSM.
    Revoke(RevokeArgs),
    /// Print the trust bundle.
    Bundle(BundleArgs),
    /// List what was issued and refused, from the audit trail.
    List(StateArg),
    /// Show the CA's key, root and counts.
    Status(StateArg),
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "spiffe_id"])))]
struct RevokeArgs {
    /// The CA's state directory (made by `meshguard ca init`: config, root certificate, audit log).
    #[arg(long)]
    state: PathBuf,
    /// The certificate's serial, hex as `openssl x509 -serial` and `meshguard ca list` print it.
    #[arg(long)]
    serial: Option<String>,
    /// Every certificate of this SPIFFE ID issued until now.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Why (an incident number): recorded in the audit trail and the revocation list.
    #[arg(long)]
    reason: String,
}

#[derive(Debug, clap::Args)]
struct StateArg {
    /// The CA's state directory.
    #[arg(long)]
    state: PathBuf,
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// The CA's state directory (made by `meshguard ca init`: config, root certificate, audit log).
    #[arg(long)]
    state: PathBuf,
    /// Trust domain, e.g. bank.example.
    #[arg(long)]
    trust_domain: String,
    /// `pkcs11:token=L;object=L?module-path=P&pin-source=file:F` (PIN also from MESHGUARD_HSM_PIN)
    /// or `file:PATH` (a software key: development only).
    #[arg(long)]
    key: String,
    /// Key algorithm: ecdsa-p256, ecdsa-p384 or ed25519.
    #[arg(long, default_value = "ecdsa-p256")]
    algorithm: String,
    /// Build the CA on a key that already exists at that URI instead of generating one.
    #[arg(long)]
    use_existing_key: bool,
    /// Lifetime of the root certificate.
    #[arg(long, default_value = "3650d")]
    root_ttl: String,
    /// Optional URI SAN of the root, e.g. spiffe://bank.example.
    #[arg(long)]
    root_spiffe_id: Option<String>,
    /// SVID lifetime when a request names none.
    #[arg(long, default_value = "1h")]
    default_ttl: String,
    /// Longest SVID lifetime the CA grants.
    #[arg(long, default_value = "24h")]
    max_ttl: String,
}

#[derive(Debug, clap::Args)]
struct IssueArgs {
    /// The CA's state directory (made by `meshguard ca init`: config, root certificate, audit log).
    #[arg(long)]
    state: PathBuf,
    /// The workload's SPIFFE ID, e.g. spiffe://bank.example/ns/payments/sa/payments.
    #[arg(long)]
    spiffe_id: String,
    /// Directory for svid.pem, svid.key and bundle.pem.
    #[arg(long)]
    out: PathBuf,
    /// SVID lifetime, e.g. 1h (default: the CA's --default-ttl; at most its --max-ttl).
    #[arg(long)]
    ttl: Option<String>,
    /// Additional DNS SANs.
    #[arg(long)]
    dns: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Print a one-time bootstrap token bound to a SPIFFE ID.
    Create {
        /// The CA's state directory (made by `meshguard ca init`: config, root certificate, audit log).
        #[arg(long)]
        state: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://bank.example/ns/payments/sa/payments.
        #[arg(long)]
        spiffe_id: String,
        /// How long the token can be redeemed, e.g. 15m (default 1h).
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The CA's state directory (made by `meshguard ca init`: config, root certificate, audit log).
    #[arg(long)]
    state: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:8443 (port 0 picks one; the bound address is printed).
    #[arg(long)]
    listen: String,
    /// DNS names for the CA's own server certificate (IP addresses of --listen are added).
    #[arg(long)]
    dns: Vec<String>,
    /// Open connections at most; beyond, new ones are closed at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Time a client has to finish the TLS handshake, e.g. 10s.
    #[arg(long, default_value = "10s")]
    handshake_timeout: String,
    /// Time a client has to send a request's header, and then its body.
    #[arg(long, default_value = "10s")]
    request_timeout: String,
    /// Signatures per second, sustained; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = Limits::default().signing_rate)]
    signing_rate: std::num::NonZeroU32,
    /// Signatures allowed in a burst above --signing-rate (a fleet restarting at once).
    #[arg(long, default_value_t = Limits::default().signing_burst)]
    signing_burst: std::num::NonZeroU32,
}

impl ServeArgs {
    fn limits(&self) -> anyhow::Result<Limits> {
        Ok(Limits {
            max_connections: self.max_connections,
            handshake_timeout: duration("--handshake-timeout", &self.handshake_timeout)?,
            request_timeout: duration("--request-timeout", &self.request_timeout)?,
            signing_rate: self.signing_rate,
            signing_burst: self.signing_burst,
            ..Limits::default()
        })
    }
}

#[derive(Debug, clap::Args)]
struct BundleArgs {
    /// The CA's state directory (made by `meshguard ca init`: config, root certificate, audit log).
    #[arg(long)]
    state: PathBuf,
    /// pem or spiffe (JWK Set).
    #[arg(long, default_value = "pem")]
    format: String,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Exit 0 when the trail is intact; otherwise name the first bad line and exit 1.
    Verify(StateArg),
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    match args.command {
        Command::Init(a) => {
            let algorithm = KeyAlgorithm::from_name(&a.algorithm).with_context(|| {
                format!(
                    "unknown --algorithm `{}`; use ecdsa-p256, ecdsa-p384 or ed25519",
                    a.algorithm
                )
            })?;
            let options = InitOptions {
                trust_domain: TrustDomain::parse(&a.trust_domain).context("--trust-domain")?,
                key: a.key.parse::<KeyUri>()?,
                algorithm,
                use_existing_key: a.use_existing_key,
                root_ttl: duration("--root-ttl", &a.root_ttl)?,
                root_spiffe_id: a
                    .root_spiffe_id
                    .as_deref()
                    .map(SpiffeId::parse)
                    .transpose()
                    .context("--root-spiffe-id")?,
                ttl: meshguard_ca::issue::TtlPolicy {
                    default_ttl: duration("--default-ttl", &a.default_ttl)?,
                    max_ttl: duration("--max-ttl", &a.max_ttl)?,
                },
                pin_from_env: pin_from_env(),
            };
            let ca = Authority::init(&a.state, options, now)?;
            let status = ca.status()?;
            outln!(
                "initialised CA for trust domain {} in {}",
                status.trust_domain,
                a.state.display()
            )?;
            outln!("key: {} [{}]", status.key_location, status.key_kind)?;
            outln!("root certificate: {}", ca.state().root_cert().display())?;
        }
        Command::Issue(a) => {
            let ca = Authority::open(&a.state, pin_from_env())?;
            let id = SpiffeId::parse(&a.spiffe_id).context("--spiffe-id")?;
            let ttl = a.ttl.as_deref().map(|t| duration("--ttl", t)).transpose()?;
            let issued = ca.issue_to_dir(&id, &a.dns, ttl, &a.out, now)?;
            outln!(
                "issued {} serial {} valid until {} into {}",
                issued.spiffe_id,
                issued.serial,
                audit::timestamp(issued.not_after),
                a.out.display()
            )?;
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    state,
                    spiffe_id,
                    ttl,
                },
        } => {
            // Tokens need no key: read the config only, so this works while the HSM is busy.
            let state = meshguard_ca::state::StateDir::new(&state);
            let config = state.read_config()?;
            let id = SpiffeId::parse(&spiffe_id).context("--spiffe-id")?;
            let td = TrustDomain::parse(&config.trust_domain)?;
            anyhow::ensure!(
                id.is_member_of(&td),
                "{id} is outside this CA's trust domain {td}"
            );
            let ttl = ttl
                .as_deref()
                .map(|t| duration("--ttl", t))
                .transpose()?
                .unwrap_or(DEFAULT_TOKEN_TTL);
            let token =
                meshguard_ca::tokens::TokenStore::new(state.tokens()).create(&id, ttl, now)?;
            outln!("{}", token.expose())?;
        }
        Command::Serve(a) => {
            let limits = a.limits()?;
            let ca = Authority::open(&a.state, pin_from_env())?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let server = meshguard_ca::serve::Server::bind(ca, &a.listen, &a.dns)
                    .await?
                    .with_limits(limits)?;
                // The server runs whether or not anyone still reads stdout.
                let _ = outln!("listening on {}", server.local_addr());
                server.run(shutdown_signal()).await
            })?;
        }
        Command::Bundle(a) => {
            let ca = open_without_key(&a.state)?;
            match a.format.as_str() {
                "pem" => out!("{}", ca.0)?,
                "spiffe" => outln!("{}", ca.1)?,
                other => anyhow::bail!("unknown --format `{other}`; use pem or spiffe"),
            }
        }
        Command::Revoke(a) => {
            let state = meshguard_ca::state::StateDir::new(&a.state);
            state.read_config()?;
            let log = audit::AuditLog::open(&state.audit())?;
            let target = match (&a.serial, &a.spiffe_id) {
                (Some(serial), _) => Target::Serial(serial.clone()),
                (None, Some(id)) => Target::SpiffeId(
                    meshguard_identity::SpiffeId::parse(id)
                        .map_err(|e| anyhow::anyhow!("--spiffe-id: {e}"))?,
                ),
                (None, None) => anyhow::bail!("give --serial or --spiffe-id"),
            };
            let serials = revocation::revoke(&state, &log, &target, &a.reason, SystemTime::now())?;
            outln!(
                "revoked {} certificate(s){}",
                serials.len(),
                if serials.is_empty() {
                    String::new()
                } else {
                    format!(": {}", serials.join(", "))
                }
            )?;
            if let Target::SpiffeId(id) = &target {
                outln!(
                    "renewals of {id} issued before now are refused; a new bootstrap token gives it a fresh chain"
                )?;
            }
        }
        Command::List(a) => {
            let state = meshguard_ca::state::StateDir::new(&a.state);
            state.read_config()?;
            let log = audit::AuditLog::open(&state.audit())?;
            outln!(
                "{:<6} {:<20} {:<9} {:<9} {:<34} {:<22} SPIFFE ID / reason",
                "SEQ",
                "TIME",
                "EVENT",
                "OUTCOME",
                "SERIAL",
                "NOT AFTER"
            )?;
            for r in log.records()? {
                let e = &r.entry;
                let what = match &e.reason {
                    Some(reason) => format!("{} ({reason})", e.spiffe_id.as_deref().unwrap_or("-")),
                    None => e.spiffe_id.clone().unwrap_or_default(),
                };
                outln!(
                    "{:<6} {:<20} {:<9} {:<9} {:<34} {:<22} {what}",
                    r.seq,
                    r.time,
                    format!("{:?}", e.event).to_lowercase(),
                    format!("{:?}", e.outcome).to_lowercase(),
                    e.serial.as_deref().unwrap_or("-"),
                    e.not_after.as_deref().unwrap_or("-"),
                )?;
            }
        }
        Command::Status(a) => {
            let ca = match Authority::open(&a.state, pin_from_env()) {
                Ok(ca) => ca,
                // A down HSM is a state to report, not a crash: show what the config says.
                Err(meshguard_ca::CaError::HsmUnavailable(fault)) => {
                    let config = meshguard_ca::state::StateDir::new(&a.state).read_config()?;
                    outln!("trust domain:  {}", config.trust_domain)?;
                    outln!("key:           {}", config.key)?;
                    outln!("key status:    HSM unavailable: {fault}")?;
                    return Ok(ExitCode::from(1));
                }
                Err(other) => return Err(other.into()),
            };
            let s = ca.status()?;
            outln!("trust domain:  {}", s.trust_domain)?;
            outln!("key:           {} [{}]", s.key_location, s.key_kind)?;
            outln!("algorithm:     {}", s.algorithm.name())?;
            match &s.key_unavailable {
                None => outln!("key status:    available")?,
                Some(why) => outln!("key status:    HSM unavailable: {why}")?,
            }
            outln!("root expires:  {}", s.root_not_after)?;
            outln!(
                "SVID ttl:      default {}s, max {}s",
                s.ttl.default_ttl.as_secs(),
                s.ttl.max_ttl.as_secs()
            )?;
            outln!("issued:        {}", s.issued)?;
            outln!("refused:       {}", s.refused)?;
        }
        Command::Audit {
            command: AuditCommand::Verify(a),
        } => {
            let state = meshguard_ca::state::StateDir::new(&a.state);
            state.read_config()?;
            match audit::verify(&state.audit())? {
                Ok(n) => outln!("audit trail intact: {n} records")?,
                Err(broken) => {
                    outln!(
                        "audit trail BROKEN at line {}: {}",
                        broken.line,
                        broken.reason
                    )?;
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The bundle needs no key: PEM and SPIFFE JSON from the root certificate alone.
fn open_without_key(state: &std::path::Path) -> anyhow::Result<(String, String)> {
    let state = meshguard_ca::state::StateDir::new(state);
    let config = state.read_config()?;
    let td = TrustDomain::parse(&config.trust_domain)?;
    let pem = std::fs::read(state.root_cert())
        .with_context(|| format!("reading {}", state.root_cert().display()))?;
    let bundle = meshguard_identity::TrustBundle::from_pem(td, &pem)?.with_sequence(1);
    Ok((bundle.to_pem(), bundle.to_spiffe_json()?))
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    parse_duration(text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// The HSM PIN from the environment, when the key URI has no pin-source. Never from arguments.
fn pin_from_env() -> Option<Secret> {
    std::env::var("MESHGUARD_HSM_PIN").ok().map(Secret::new)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
