//! The iptables rules for transparent capture (`meshguard iptables`).
//!
//! Inbound: TCP arriving at the host from the network is redirected to the inbound mTLS listener,
//! except loopback, the admin port, the listener's own port and any excluded ports. Outbound: TCP
//! the local apps open is redirected to the transparent listener, except the proxy's own
//! connections (matched by its uid, so the proxy's mTLS connections are not captured again),
//! loopback and excluded networks. Rules live in two chains of the `nat` table so that removing
//! them removes exactly what was added.

use std::process::Command;

use crate::config::Config;

/// The chain that holds the inbound rules (jumped to from `PREROUTING`).
pub const INBOUND_CHAIN: &str = "MESHGUARD_INBOUND";
/// The chain that holds the outbound rules (jumped to from `OUTPUT`).
pub const OUTBOUND_CHAIN: &str = "MESHGUARD_OUTPUT";

/// What to capture and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    /// The inbound mTLS listener's port; `None` captures no inbound traffic.
    pub inbound_port: Option<u16>,
    /// The transparent listener's port; `None` captures no outbound traffic.
    pub outbound_port: Option<u16>,
    /// The uid the proxy runs as; its own connections are never captured.
    pub proxy_uid: u32,
    /// The admin port, never captured.
    pub admin_port: u16,
    /// Inbound ports left alone (for example 22 for SSH).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination networks left alone (CIDR).
    pub exclude_outbound_cidrs: Vec<String>,
}

/// One iptables invocation, as its arguments.
pub type Rule = Vec<String>;

/// An iptables command that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IptablesError {
    /// The program could not be run at all.
    #[error(
        "cannot run `{program}`: {source}; is iptables installed, and are you root (CAP_NET_ADMIN)?"
    )]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and refused the rule.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What iptables said.
        stderr: String,
    },
}

// === impl CaptureSpec ===

impl CaptureSpec {
    /// The capture for a proxy config: its first inbound listener, its transparent listener and
    /// its admin port.
    pub fn from_config(config: &Config, proxy_uid: u32) -> Self {
        Self {
            inbound_port: config.inbound.first().map(|l| l.listen.port()),
            outbound_port: config.transparent.as_ref().map(|t| t.listen.port()),
            proxy_uid,
            admin_port: config.admin.listen.port(),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }

    /// The rules that install the capture, in order.
    pub fn install_rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        let nat = |args: &[&str]| -> Rule {
            ["-t", "nat"]
                .iter()
                .chain(args)
                .map(|s| (*s).to_owned())
                .collect()
        };
        if let Some(port) = self.inbound_port {
            let port = port.to_string();
            let admin = self.admin_port.to_string();
            rules.push(nat(&["-N", INBOUND_CHAIN]));
            rules.push(nat(&["-A", INBOUND_CHAIN, "-i", "lo", "-j", "RETURN"]));
            rules.push(nat(&[
                "-A",
                INBOUND_CHAIN,
                "-p",
                "tcp",
                "--dport",
                &admin,
                "-j",
                "RETURN",
            ]));
            rules.push(nat(&[
                "-A",
                INBOUND_CHAIN,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "RETURN",
            ]));
            for excluded in &self.exclude_inbound_ports {
                let excluded = excluded.to_string();
                rules.push(nat(&[
                    "-A",
                    INBOUND_CHAIN,
                    "-p",
                    "tcp",
                    "--dport",
                    &excluded,
                    "-j",
                    "RETURN",
                ]));
            }
            rules.push(nat(&[
                "-A",
                INBOUND_CHAIN,
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                &port,
            ]));
            rules.push(nat(&["-A", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN]));
        }
        if let Some(port) = self.outbound_port {
            let port = port.to_string();
            let uid = self.proxy_uid.to_string();
            rules.push(nat(&["-N", OUTBOUND_CHAIN]));
            rules.push(nat(&[
                "-A",
                OUTBOUND_CHAIN,
                "-m",
                "owner",
                "--uid-owner",
                &uid,
                "-j",
                "RETURN",
            ]));
            rules.push(nat(&["-A", OUTBOUND_CHAIN, "-o", "lo", "-j", "RETURN"]));
            rules.push(nat(&[
                "-A",
                OUTBOUND_CHAIN,
                "-d",
                "127.0.0.0/8",
                "-j",
                "RETURN",
            ]));
            for cidr in &self.exclude_outbound_cidrs {
                rules.push(nat(&["-A", OUTBOUND_CHAIN, "-d", cidr, "-j", "RETURN"]));
            }
            rules.push(nat(&[
                "-A",
                OUTBOUND_CHAIN,
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                &port,
            ]));
            rules.push(nat(&["-A", "OUTPUT", "-p", "tcp", "-j", OUTBOUND_CHAIN]));
        }
        rules
    }

    /// The rules that remove the capture (each may fail harmlessly when it is not installed).
    pub fn remove_rules(&self) -> Vec<Rule> {
        let nat = |args: &[&str]| -> Rule {
            ["-t", "nat"]
                .iter()
                .chain(args)
                .map(|s| (*s).to_owned())
                .collect()
        };
        vec![
            nat(&["-D", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN]),
            nat(&["-F", INBOUND_CHAIN]),
            nat(&["-X", INBOUND_CHAIN]),
            nat(&["-D", "OUTPUT", "-p", "tcp", "-j", OUTBOUND_CHAIN]),
            nat(&["-F", OUTBOUND_CHAIN]),
            nat(&["-X", OUTBOUND_CHAIN]),
        ]
    }
}

/// The rules as shell lines, for printing.
pub fn to_script(program: &str, rules: &[Rule]) -> String {
    rules
        .iter()
        .map(|rule| format!("{program} {}\n", rule.join(" ")))
        .collect()
}

/// Runs each rule with `program` (normally `iptables`), stopping at the first failure.
pub fn run_all(program: &str, rules: &[Rule]) -> Result<(), IptablesError> {
    for rule in rules {
        run(program, rule)?;
    }
    Ok(())
}

/// Runs each rule, ignoring failures (for removal of rules that may not be there).
pub fn run_ignoring_failures(program: &str, rules: &[Rule]) -> Result<(), IptablesError> {
    for rule in rules {
        match run(program, rule) {
            Ok(()) | Err(IptablesError::Failed { .. }) => {}
            Err(spawn) => return Err(spawn),
        }
    }
    Ok(())
}

fn run(program: &str, rule: &Rule) -> Result<(), IptablesError> {
    let output = Command::new(program)
        .arg("-w")
        .args(rule)
        .output()
        .map_err(|source| IptablesError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(IptablesError::Failed {
            command: format!("{program} -w {}", rule.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CaptureSpec {
        CaptureSpec {
            inbound_port: Some(15006),
            outbound_port: Some(15001),
            proxy_uid: 1337,
            admin_port: 15000,
            exclude_inbound_ports: vec![22],
            exclude_outbound_cidrs: vec!["169.254.169.254/32".into()],
        }
    }

    #[test]
    fn the_script_excludes_the_proxy_admin_and_loopback_before_redirecting() {
        let script = to_script("iptables", &spec().install_rules());
        let lines: Vec<&str> = script.lines().collect();
        let position = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no `{needle}` in\n{script}"))
        };
        assert!(position("-i lo -j RETURN") < position("REDIRECT --to-ports 15006"));
        assert!(position("--dport 15000 -j RETURN") < position("REDIRECT --to-ports 15006"));
        assert!(position("--dport 22 -j RETURN") < position("REDIRECT --to-ports 15006"));
        assert!(position("--uid-owner 1337 -j RETURN") < position("REDIRECT --to-ports 15001"));
        assert!(position("-o lo -j RETURN") < position("REDIRECT --to-ports 15001"));
        assert!(
            position("-d 169.254.169.254/32 -j RETURN") < position("REDIRECT --to-ports 15001")
        );
        // The jumps come last, once the chains are complete.
        assert_eq!(
            lines[position("-A PREROUTING")],
            "iptables -t nat -A PREROUTING -p tcp -j MESHGUARD_INBOUND"
        );
        assert!(
            lines
                .last()
                .unwrap()
                .ends_with("-A OUTPUT -p tcp -j MESHGUARD_OUTPUT")
        );
    }

    #[test]
    fn only_the_configured_directions_are_captured() {
        let mut outbound_only = spec();
        outbound_only.inbound_port = None;
        let script = to_script("iptables", &outbound_only.install_rules());
        assert!(!script.contains(INBOUND_CHAIN));
        assert!(script.contains(OUTBOUND_CHAIN));
    }

    #[test]
    fn removal_undoes_both_chains() {
        let script = to_script("iptables", &spec().remove_rules());
        for needle in [
            "-D PREROUTING -p tcp -j MESHGUARD_INBOUND",
            "-X MESHGUARD_INBOUND",
            "-D OUTPUT -p tcp -j MESHGUARD_OUTPUT",
            "-X MESHGUARD_OUTPUT",
        ] {
            assert!(script.contains(needle), "{needle}");
        }
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let error = run_all("/nonexistent/iptables", &spec().install_rules()).unwrap_err();
        assert!(
            error.to_string().contains("is iptables installed"),
            "{error}"
        );
    }
}
