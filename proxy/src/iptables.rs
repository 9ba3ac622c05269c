//! The iptables rules for transparent capture (`meshguard iptables`).
//!
//! Inbound: TCP arriving at the host from the network is redirected to the inbound mTLS listener,
//! except loopback, the admin port, the listener's own port and any excluded ports. Outbound: TCP
//! the local apps open is redirected to the transparent listener, except the proxy's own
//! connections (matched by its uid, so the proxy's mTLS connections are not captured again),
//! loopback and excluded networks. Rules live in two chains of the `nat` table so that removing
//! them removes exactly what was added.
//!
//! Both address families get the same rules (`iptables` and `ip6tables`): a host that captured
//! only IPv4 would let IPv6 reach its apps with no mTLS and no policy. [`host`] applies them and
//! refuses an IPv4-only capture on a host with IPv6 enabled unless told.

pub mod host;

use std::process::Command;

use crate::config::{Cidr, Config};

/// An address family, with its rule program and loopback network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    /// The usual name of the family's rule program.
    pub fn default_program(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    /// The family's loopback network, never captured on the way out (besides `-o lo`, which
    /// covers it once routed, this also covers a loopback destination on another interface).
    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1/128",
        }
    }

    fn holds(self, cidr: &Cidr) -> bool {
        cidr.is_ipv4() == (self == Self::V4)
    }
}

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
    /// Outbound destination networks left alone; each goes in its own family's rules.
    pub exclude_outbound_cidrs: Vec<Cidr>,
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
    /// The IPv6 rules could not be installed on a host with IPv6 enabled; nothing was left
    /// installed.
    #[error(
        "IPv6 is enabled on this host but its capture rules could not be installed ({source}), so \
         IPv6 connections would reach the apps with no mTLS and no policy; nothing was installed. \
         Install ip6tables (it ships with the iptables package) and the ip6table_nat module, disable \
         IPv6 (net.ipv6.conf.all.disable_ipv6 = 1), or pass --ipv4-only to capture IPv4 alone"
    )]
    Ipv6Unprotected {
        /// Why the IPv6 rules failed.
        #[source]
        source: Box<IptablesError>,
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

    /// The rules that install the capture for one family, in order.
    pub fn install_rules(&self, family: Family) -> Vec<Rule> {
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
                family.loopback(),
                "-j",
                "RETURN",
            ]));
            for cidr in self
                .exclude_outbound_cidrs
                .iter()
                .filter(|c| family.holds(c))
            {
                let cidr = String::from(*cidr);
                rules.push(nat(&["-A", OUTBOUND_CHAIN, "-d", &cidr, "-j", "RETURN"]));
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

    /// The rules that remove the capture, the same for both families (each may fail harmlessly
    /// when it is not installed).
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

/// Runs each rule with `program` (`iptables` or `ip6tables`), stopping at the first failure.
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
            exclude_outbound_cidrs: vec![
                "169.254.169.254/32".parse().unwrap(),
                "fd00:ec2::254".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn the_script_excludes_the_proxy_admin_and_loopback_before_redirecting() {
        let script = to_script("iptables", &spec().install_rules(Family::V4));
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
    fn ipv6_gets_the_same_chains_ports_and_exemptions_with_its_own_loopback_and_networks() {
        let v4 = to_script("iptables", &spec().install_rules(Family::V4));
        let v6 = to_script("ip6tables", &spec().install_rules(Family::V6));
        // Line for line the same, except the loopback network and the excluded networks.
        let v4_lines: Vec<&str> = v4.lines().collect();
        let v6_lines: Vec<&str> = v6.lines().collect();
        assert_eq!(v4_lines.len(), v6_lines.len(), "{v4}\n{v6}");
        for (a, b) in v4_lines.iter().zip(&v6_lines) {
            let a = a
                .replacen("iptables", "ip6tables", 1)
                .replace("127.0.0.0/8", "::1/128")
                .replace("169.254.169.254/32", "fd00:ec2::254/128");
            assert_eq!(&a, b);
        }
        for needle in [
            "ip6tables -t nat -A MESHGUARD_INBOUND -i lo -j RETURN",
            "ip6tables -t nat -A MESHGUARD_INBOUND -p tcp --dport 15000 -j RETURN",
            "ip6tables -t nat -A MESHGUARD_INBOUND -p tcp -j REDIRECT --to-ports 15006",
            "ip6tables -t nat -A PREROUTING -p tcp -j MESHGUARD_INBOUND",
            "ip6tables -t nat -A MESHGUARD_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "ip6tables -t nat -A MESHGUARD_OUTPUT -o lo -j RETURN",
            "ip6tables -t nat -A MESHGUARD_OUTPUT -d ::1/128 -j RETURN",
            "ip6tables -t nat -A MESHGUARD_OUTPUT -d fd00:ec2::254/128 -j RETURN",
            "ip6tables -t nat -A MESHGUARD_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            "ip6tables -t nat -A OUTPUT -p tcp -j MESHGUARD_OUTPUT",
        ] {
            assert!(v6.contains(needle), "no `{needle}` in\n{v6}");
        }
        // No IPv4 network in the IPv6 rules, no IPv6 network in the IPv4 rules.
        assert!(
            !v6.contains("127.0.0.0/8") && !v6.contains("169.254"),
            "{v6}"
        );
        assert!(!v4.contains("::1/128") && !v4.contains("fd00"), "{v4}");
    }

    #[test]
    fn only_the_configured_directions_are_captured() {
        let mut outbound_only = spec();
        outbound_only.inbound_port = None;
        let script = to_script("iptables", &outbound_only.install_rules(Family::V4));
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
        let error =
            run_all("/nonexistent/iptables", &spec().install_rules(Family::V4)).unwrap_err();
        assert!(
            error.to_string().contains("is iptables installed"),
            "{error}"
        );
    }
}
