//! The soak's loopback topology: the built-in upstream, an inbound sidecar (mTLS, per-request
//! policy, access log) and an outbound sidecar in front of it, both separate `meshguard proxy`
//! processes with file-based SVIDs from a throwaway [`Pki`]. The soak rotates those SVIDs and edits
//! the policy file while traffic flows; both sidecars pick the changes up by watching the files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::compare::pki::{Pki, SignedSvid, SvidFiles};
use crate::compare::pool::spawn_upstream;
use crate::compare::process::{Child, free_port, wait_for_port};
use crate::compare::topology::{listener, policy_toml, sidecar_config};

/// How long a sidecar may take to start listening (a debug build on a loaded machine is slow).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the sidecars keep an idle pooled upstream connection; shorter than the soak's settle
/// window by design (see [`soak_sidecar_config`]; `super` checks the order at compile time).
pub(super) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The running pair. Dropping it stops every process.
#[derive(Debug)]
pub struct Pair {
    pub pki: Pki,
    /// The outbound sidecar's plaintext listener: the good requests of the app next to it.
    pub outbound: SocketAddr,
    /// The inbound sidecar's mTLS listener.
    pub inbound: SocketAddr,
    /// The load generator's own SVID: allowed by policy, for new mTLS connections to `inbound`.
    pub client: SvidFiles,
    /// Allowed by policy: sends the malformed requests (so denials of it lock out only it).
    pub prober: SvidFiles,
    /// Valid, but no policy allows it.
    pub intruder: SvidFiles,
    pub inbound_svid: SvidFiles,
    pub outbound_svid: SvidFiles,
    /// The inbound listener's policy file, which the soak edits.
    pub policy: PathBuf,
    /// `sidecar-in` then `sidecar-out`.
    pub sidecars: Vec<Child>,
    upstream: Child,
}

impl Pair {
    /// Starts the upstream and both sidecars in `dir` and waits until each one listens.
    pub fn start(meshguard: &Path, dir: &Path, threads: u16) -> anyhow::Result<Pair> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("could not create {}", logs.display()))?;
        let pki = Pki::create(&dir.join("pki"))?;
        let client = pki.issue("load-generator")?;
        let prober = pki.issue("soak-prober")?;
        let intruder = pki.issue("soak-intruder")?;
        let inbound_svid = pki.issue("sidecar-in")?;
        let outbound_svid = pki.issue("sidecar-out")?;

        let upstream_addr = free_port()?;
        let upstream = spawn_upstream(meshguard, &logs, "upstream", upstream_addr, None)?;

        let policy = dir.join("policy.toml");
        std::fs::write(
            &policy,
            Self::policy_text(&client, &prober, &outbound_svid, 0),
        )
        .with_context(|| format!("could not write {}", policy.display()))?;
        let (inbound, outbound) = (free_port()?, free_port()?);
        let in_config =
            soak_sidecar_config(&inbound_svid, free_port()?, &dir.join("in-access.log"))
                + &listener(
                    "inbound",
                    "http",
                    inbound,
                    &format!("forward_to = \"{upstream_addr}\""),
                    Some(&policy),
                    None,
                );
        let out_config =
            soak_sidecar_config(&outbound_svid, free_port()?, &dir.join("out-access.log"))
                + &listener(
                    "outbound",
                    "http",
                    outbound,
                    &format!("target = \"{inbound}\""),
                    None,
                    Some(&inbound_svid.spiffe_id),
                );
        let sidecars = vec![
            spawn_sidecar(meshguard, dir, "sidecar-in", &in_config, inbound, threads)?,
            spawn_sidecar(
                meshguard,
                dir,
                "sidecar-out",
                &out_config,
                outbound,
                threads,
            )?,
        ];
        Ok(Pair {
            pki,
            outbound,
            inbound,
            client,
            prober,
            intruder,
            inbound_svid,
            outbound_svid,
            policy,
            sidecars,
            upstream,
        })
    }

    /// Revision `n` of the inbound policy: the three allowed callers, plus a deny rule for an ID
    /// nobody has, so every revision hashes differently.
    fn policy_text(client: &SvidFiles, prober: &SvidFiles, out: &SvidFiles, n: u64) -> String {
        policy_toml(&[&client.spiffe_id, &prober.spiffe_id, &out.spiffe_id])
            + &format!(
                "\n[[policy]]\nname = \"edit-{n}\"\naction = \"deny\"\n\
                 principals = [\"spiffe://perf.meshguard.test/retired-{n}\"]\n"
            )
    }

    /// Replaces the policy with revision `n`, or with a broken file (which the sidecar must refuse,
    /// keeping the last good revision). Written whole and renamed into place, as deploy tools do.
    pub fn edit_policy(&self, n: u64, broken: bool) -> anyhow::Result<()> {
        let text = if broken {
            format!("[[policy]]\nname = \"broken-{n}\"\naction = \"allow\nprincipals = [\n")
        } else {
            Self::policy_text(&self.client, &self.prober, &self.outbound_svid, n)
        };
        replace(&self.policy, &text)
    }

    /// Issues a new key and SVID for `files` and renames them into place (key first: a sidecar
    /// that reads between the two renames sees a mismatched pair and keeps its current one).
    pub fn rotate(&self, files: &SvidFiles) -> anyhow::Result<SignedSvid> {
        let name = files
            .spiffe_id
            .rsplit('/')
            .next()
            .context("an SVID file set without a name")?;
        let now = SystemTime::now();
        let signed = self.pki.sign(
            name,
            now - Duration::from_secs(60),
            now + Duration::from_secs(24 * 3600),
        )?;
        replace(&files.key, &signed.key_pem)?;
        replace(&files.chain, &signed.chain_pem)?;
        Ok(signed)
    }

    /// Errors when a process of the pair has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.upstream.check_alive()?;
        self.sidecars.iter_mut().try_for_each(Child::check_alive)
    }
}

/// The comparison's sidecar config with idle pooled upstream connections closed after
/// [`POOL_IDLE_TIMEOUT`] instead of the default 90 s: a connection the pool opened at the load's peak is idle capacity, not a leak,
/// and it must be gone within the soak's settle window so "descriptors back to the baseline"
/// measures leaks only. The line joins the `[http]` table `sidecar_config` ends with.
fn soak_sidecar_config(svid: &SvidFiles, admin: SocketAddr, access_log: &Path) -> String {
    let config = sidecar_config(svid, admin, access_log);
    debug_assert!(
        config
            .rsplit("\n[")
            .next()
            .is_some_and(|last| last.starts_with("http]")),
        "sidecar_config no longer ends with its [http] table"
    );
    config + &format!("pool_idle_timeout = \"{}s\"\n", POOL_IDLE_TIMEOUT.as_secs())
}

fn spawn_sidecar(
    meshguard: &Path,
    dir: &Path,
    name: &str,
    config: &str,
    listen: SocketAddr,
    threads: u16,
) -> anyhow::Result<Child> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).with_context(|| format!("could not write {}", path.display()))?;
    let mut command = Command::new(meshguard);
    command.arg("proxy").arg("--config").arg(&path);
    command.args(["--threads", &threads.to_string()]);
    // info: the soak counts policy reloads (applied and refused) and panics in these logs.
    command.env("RUST_LOG", "info").env("NO_COLOR", "1");
    let mut child = Child::spawn(name, command, &dir.join("logs"))?;
    wait_for_port(&mut child, listen, START_TIMEOUT)?;
    Ok(child)
}

/// Writes `text` to a sibling temporary file and renames it over `path`.
fn replace(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("could not write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("could not rename {} to {}", tmp.display(), path.display()))
}
