//! The bank's mesh: one sidecar per app and a gateway for the legacy host, each a `meshguard proxy
//! --config` child process whose config is rendered from `templates/` into the run directory, on
//! 127.0.0.1 ports chosen free at run time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::ca::{self, Ca};
use crate::client;
use crate::process::{Child, Meshguard};

const SIDECAR_TEMPLATE: &str = include_str!("../templates/sidecar.toml");
const OUTBOUND_TEMPLATE: &str = include_str!("../templates/outbound.toml");

/// The policy files, written next to the configs.
pub const POLICIES: &[(&str, &str)] = &[
    ("ledger.toml", include_str!("../policies/ledger.toml")),
    ("ledger-l4.toml", include_str!("../policies/ledger-l4.toml")),
    ("gateway.toml", include_str!("../policies/gateway.toml")),
    ("deny-all.toml", include_str!("../policies/deny-all.toml")),
    (
        "key-access.toml",
        include_str!("../policies/key-access.toml"),
    ),
    (
        "key-access.rego",
        include_str!("../policies/key-access.rego"),
    ),
];

/// One workload of the bank.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Short name: `payments`.
    pub name: &'static str,
    /// Its SPIFFE ID.
    pub id: &'static str,
    /// Its inbound policy in L7 and in L4 mode.
    pub policy: (&'static str, &'static str),
    /// Peers its outbound listeners lead to.
    pub peers: &'static [&'static str],
}

/// The bank: the gateway fronts the legacy `core-banking` host and also lets legacy clients out.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "ledger",
        id: "spiffe://bank.example/ns/ledger/sa/ledger",
        policy: ("ledger.toml", "ledger-l4.toml"),
        peers: &[],
    },
    Workload {
        name: "keys",
        id: "spiffe://bank.example/ns/security/sa/keys",
        policy: ("key-access.toml", "key-access.toml"),
        peers: &[],
    },
    Workload {
        name: "gateway",
        id: "spiffe://bank.example/ns/legacy/sa/core-banking-gateway",
        policy: ("gateway.toml", "gateway.toml"),
        peers: &["ledger"],
    },
    Workload {
        name: "payments",
        id: "spiffe://bank.example/ns/payments/sa/payments",
        policy: ("deny-all.toml", "deny-all.toml"),
        peers: &["ledger", "keys", "gateway"],
    },
    Workload {
        name: "reporting",
        id: "spiffe://bank.example/ns/reporting/sa/reporting",
        policy: ("deny-all.toml", "deny-all.toml"),
        peers: &["ledger", "keys", "gateway"],
    },
];

/// The SPIFFE ID of a workload.
pub fn id_of(name: &str) -> &'static str {
    WORKLOADS
        .iter()
        .find(|w| w.name == name)
        .map_or("", |w| w.id)
}

/// Optional proxy features this `meshguard` build has (probed with `meshguard proxy --check`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// `protocol = "http"`: per-request decisions.
    pub l7: bool,
    /// `[decision_log]`.
    pub decision_logs: bool,
    /// `[lockout]`.
    pub lockout: bool,
    /// `[break_glass]` (grants file) with the `[admin.control]` socket that adds grants.
    pub break_glass: bool,
}

/// The `[break_glass]` section (the grants file) and the `[admin.control]` socket through which an
/// operator adds grants, auditing each call, for the workload `name` in `dir`.
pub fn break_glass_section(dir: &Path, name: &str) -> String {
    format!(
        "[break_glass]\nfile = \"{}\"\n[admin.control]\nsocket = \"{}\"\naudit_log = \"{}\"\n",
        dir.join(format!("{name}.grants.toml")).display(),
        admin_socket(dir, name).display(),
        admin_audit_log(dir, name).display(),
    )
}

/// The sidecar's admin control socket.
pub fn admin_socket(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.admin.sock"))
}

/// The sidecar's admin audit log: who called the control socket, what and why.
pub fn admin_audit_log(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.admin-audit.log"))
}

/// The gateway fronts a legacy TCP host: its inbound (and the mesh's outbounds to it) always decide
/// per connection, even when the other sidecars speak HTTP.
pub const L4_ONLY: &str = "gateway";

/// The sidecar whose callers get locked out after repeated denials (connection-level denials).
pub const LOCKOUT_ON: &str = "gateway";

/// The protocol of listeners leading to `workload`.
pub fn protocol_for(workload: &str, protocol: &str) -> &'static str {
    if workload == L4_ONLY || protocol == "tcp" {
        "tcp"
    } else {
        "http"
    }
}

/// Three denials within a minute block the caller for 30 s.
pub const LOCKOUT_SECTION: &str =
    "[lockout]\nthreshold = 3\nwindow = \"60s\"\nblock = \"30s\"\nmax_block = \"5m\"\n";

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    /// The workload.
    pub workload: Workload,
    /// The admin probe listener (`/live`, `/ready`, `/metrics`).
    pub admin: SocketAddr,
    /// The admin control socket, when break-glass is on.
    pub admin_socket: PathBuf,
    /// Where the control socket records each call.
    pub admin_audit_log: PathBuf,
    /// The inbound mTLS listener.
    pub inbound: SocketAddr,
    /// Outbound listeners by peer name.
    pub outbound: BTreeMap<&'static str, SocketAddr>,
    /// Its access log.
    pub access_log: PathBuf,
    /// Its decision log, when the proxy writes one.
    pub decision_log: Option<PathBuf>,
    /// Its config file.
    pub config: PathBuf,
    /// The process.
    pub child: Child,
}

/// A free port on 127.0.0.1 (bound, then released for the child to bind).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1")?;
    Ok(listener.local_addr()?)
}

/// Fills `{{KEY}}` placeholders; a placeholder left over is a bug in the template.
pub fn render(template: &str, values: &[(&str, String)]) -> anyhow::Result<String> {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(start) = text.find("{{") {
        let rest = &text[start..];
        bail!(
            "template placeholder left unfilled: {}",
            rest.lines().next().unwrap_or(rest)
        );
    }
    Ok(text)
}

/// Writes the policies and, per workload, a token and a config; starts every sidecar.
/// `apps` maps each workload to the address its inbound forwards to.
pub fn start(
    mg: &Meshguard,
    ca: &Ca,
    dir: &Path,
    protocol: &str,
    features: &Features,
    apps: &BTreeMap<&'static str, SocketAddr>,
) -> anyhow::Result<Vec<Sidecar>> {
    for (file, text) in POLICIES {
        std::fs::write(dir.join(file), text).with_context(|| format!("writing {file}"))?;
    }
    let inbound: BTreeMap<&str, SocketAddr> = WORKLOADS
        .iter()
        .map(|w| Ok((w.name, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let mut sidecars = Vec::new();
    for w in WORKLOADS {
        let admin = free_port()?;
        let token = dir.join(format!("{}.token", w.name));
        ca.token(mg, w.id, &token)?;
        let mut outbounds = String::new();
        let mut outbound = BTreeMap::new();
        for peer in w.peers {
            let listen = free_port()?;
            outbound.insert(*peer, listen);
            outbounds.push_str(&render(
                OUTBOUND_TEMPLATE,
                &[
                    ("NAME", w.name.to_owned()),
                    ("PEER", (*peer).to_owned()),
                    ("LISTEN", listen.to_string()),
                    ("TARGET", inbound[peer].to_string()),
                    ("PEER_ID", id_of(peer).to_owned()),
                    ("PROTOCOL", protocol_for(peer, protocol).to_owned()),
                ],
            )?);
        }
        let access_log = dir.join(format!("{}.access.log", w.name));
        let decision_log = features
            .decision_logs
            .then(|| dir.join(format!("{}.decision.log", w.name)));
        let mut extra = decision_log
            .as_deref()
            .map(decision_log_section)
            .unwrap_or_default();
        if features.break_glass {
            extra.push_str(&break_glass_section(dir, w.name));
        }
        if features.lockout && w.name == LOCKOUT_ON {
            extra.push_str(LOCKOUT_SECTION);
        }
        let policy = if protocol == "tcp" {
            w.policy.1
        } else {
            w.policy.0
        };
        let app = apps
            .get(w.name)
            .with_context(|| format!("no app for {}", w.name))?;
        let config_text = render(
            SIDECAR_TEMPLATE,
            &[
                ("NAME", w.name.to_owned()),
                ("CA_URL", ca.url.clone()),
                ("SPIFFE_ID", w.id.to_owned()),
                ("TOKEN_FILE", ca::path(&token)),
                ("BUNDLE", ca::path(&ca.bundle)),
                ("ADMIN", admin.to_string()),
                ("ACCESS_LOG", ca::path(&access_log)),
                ("INBOUND", inbound[w.name].to_string()),
                ("APP", app.to_string()),
                ("PROTOCOL", protocol_for(w.name, protocol).to_owned()),
                ("POLICY", ca::path(&dir.join(policy))),
                ("OUTBOUNDS", outbounds),
                ("EXTRA", extra),
            ],
        )?;
        let config = dir.join(format!("{}.proxy.toml", w.name));
        std::fs::write(&config, config_text)
            .with_context(|| format!("writing {}", config.display()))?;
        let child = mg.spawn(
            &format!("{}-sidecar", w.name),
            &["proxy", "--config", &ca::path(&config)],
        )?;
        sidecars.push(Sidecar {
            workload: *w,
            admin,
            admin_socket: admin_socket(dir, w.name),
            admin_audit_log: admin_audit_log(dir, w.name),
            inbound: inbound[w.name],
            outbound,
            access_log,
            decision_log,
            config,
            child,
        });
    }
    Ok(sidecars)
}

/// Whether this `meshguard` accepts a config with a listener speaking `protocol` and the extra
/// top-level TOML `extra` (asks `meshguard proxy --check`); with the error when it does not.
pub fn config_supported(
    mg: &Meshguard,
    dir: &Path,
    protocol: &str,
    extra: &str,
) -> anyhow::Result<(bool, String)> {
    let policy = dir.join("probe-policy.toml");
    std::fs::write(&policy, "default = \"deny\"\n")?;
    let config = dir.join("probe.proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[identity]\nfiles = {{ cert = \"c.pem\", key = \"k.pem\", bundle = \"b.pem\" }}\n{extra}\n\
             [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward_to = \"127.0.0.1:1\"\nprotocol = \"{protocol}\"\npolicy = \"{}\"\n",
            policy.display()
        ),
    )?;
    let output = mg.output(&["proxy", "--check", "--config", &ca::path(&config)])?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    ))
}

/// The `[decision_log]` section for a sidecar, when the proxy has one.
pub fn decision_log_section(path: &Path) -> String {
    format!("[decision_log]\npath = \"{}\"\n", path.display())
}

/// Waits until every sidecar's `/ready` answers 200 (it got its SVID from the CA and bound its
/// listeners), or fails naming the sidecar and quoting its log.
pub async fn wait_ready(sidecars: &mut [Sidecar], timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for sidecar in sidecars.iter_mut() {
        loop {
            if client::admin_status(sidecar.admin, "/ready").await == Some(200) {
                break;
            }
            if let Some(status) = sidecar.child.exited() {
                bail!(
                    "the {} sidecar exited ({status}):\n{}",
                    sidecar.workload.name,
                    sidecar.child.stderr_tail(8)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the {} sidecar was not ready within {} s; its log ({}) ends with:\n{}",
                    sidecar.workload.name,
                    timeout.as_secs(),
                    sidecar.child.log().display(),
                    sidecar.child.stderr_tail(8)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_into_valid_toml_with_no_placeholder_left() {
        let out = render(
            OUTBOUND_TEMPLATE,
            &[
                ("NAME", "payments".into()),
                ("PEER", "ledger".into()),
                ("LISTEN", "127.0.0.1:1".into()),
                ("TARGET", "127.0.0.1:2".into()),
                ("PEER_ID", id_of("ledger").into()),
                ("PROTOCOL", "tcp".into()),
            ],
        )
        .unwrap();
        let values: Vec<(&str, String)> = [
            "NAME",
            "CA_URL",
            "SPIFFE_ID",
            "TOKEN_FILE",
            "BUNDLE",
            "ADMIN",
            "ACCESS_LOG",
            "INBOUND",
            "APP",
            "PROTOCOL",
            "POLICY",
            "EXTRA",
        ]
        .iter()
        .map(|k| {
            let value = match *k {
                "EXTRA" => decision_log_section(Path::new("d.log")),
                _ => "127.0.0.1:3".to_owned(),
            };
            (*k, value)
        })
        .chain([("OUTBOUNDS", out)])
        .collect();
        let text = render(SIDECAR_TEMPLATE, &values).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["outbound"].as_array().unwrap().len(), 1);
        assert_eq!(parsed["decision_log"]["path"].as_str(), Some("d.log"));
    }

    #[test]
    fn an_unfilled_placeholder_is_an_error() {
        let error = render("a = \"{{MISSING}}\"", &[]).unwrap_err();
        assert!(error.to_string().contains("{{MISSING}}"));
    }

    #[test]
    fn every_peer_is_a_workload() {
        for w in WORKLOADS {
            for peer in w.peers {
                assert!(!id_of(peer).is_empty(), "{peer}");
            }
        }
    }
}
