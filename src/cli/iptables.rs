//! `meshguard iptables`: prints the REDIRECT rules for transparent capture (IPv4 and IPv6), or
//! applies (`--apply`) or removes (`--remove`) them. The rules themselves are built in
//! `meshguard_proxy::iptables`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use meshguard_proxy::config::Cidr;
use meshguard_proxy::iptables::host::{self, Applied, Programs};
use meshguard_proxy::iptables::{self, CaptureSpec, Family};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Take the inbound, transparent and admin ports from this proxy config.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The uid the proxy runs as; its own connections are never captured.
    #[arg(long, required_unless_present = "remove")]
    proxy_uid: Option<u32>,
    /// Inbound mTLS listener port (overrides the config's first [[inbound]]).
    #[arg(long)]
    inbound_port: Option<u16>,
    /// Transparent listener port (overrides the config's [transparent]).
    #[arg(long)]
    outbound_port: Option<u16>,
    /// Admin port, never captured (default: the config's, else 15000).
    #[arg(long)]
    admin_port: Option<u16>,
    /// An inbound port to leave alone (repeatable), e.g. 22.
    #[arg(long = "exclude-inbound-port")]
    exclude_inbound_ports: Vec<u16>,
    /// An outbound destination network to leave alone (repeatable), e.g. 169.254.169.254/32.
    #[arg(long = "exclude-outbound-cidr")]
    exclude_outbound_cidrs: Vec<Cidr>,
    /// Install the rules (needs root / CAP_NET_ADMIN).
    #[arg(long, conflicts_with = "remove")]
    apply: bool,
    /// Remove the rules.
    #[arg(long)]
    remove: bool,
    /// The IPv4 rule program.
    #[arg(long, default_value = "iptables")]
    iptables: String,
    /// The IPv6 rule program.
    #[arg(long, default_value = "ip6tables")]
    ip6tables: String,
    /// Capture IPv4 only. Without it, `--apply` on a host with IPv6 enabled refuses to install
    /// anything unless the IPv6 rules install too (IPv6 would otherwise bypass the proxy).
    #[arg(long)]
    ipv4_only: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args
        .config
        .as_ref()
        .map(|path| meshguard_proxy::Config::load(path))
        .transpose()?;
    let mut spec = match &config {
        Some(config) => CaptureSpec::from_config(config, args.proxy_uid.unwrap_or_default()),
        None => CaptureSpec {
            inbound_port: None,
            outbound_port: None,
            // Only `--remove` may omit the uid, and removal does not use it.
            proxy_uid: args.proxy_uid.unwrap_or_default(),
            admin_port: 15000,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        },
    };
    spec.inbound_port = args.inbound_port.or(spec.inbound_port);
    spec.outbound_port = args.outbound_port.or(spec.outbound_port);
    spec.admin_port = args.admin_port.unwrap_or(spec.admin_port);
    spec.exclude_inbound_ports = args.exclude_inbound_ports;
    spec.exclude_outbound_cidrs = args.exclude_outbound_cidrs;
    if spec.inbound_port.is_none() && spec.outbound_port.is_none() && !args.remove {
        anyhow::bail!(
            "nothing to capture: give --inbound-port and/or --outbound-port, or --config with an [[inbound]] or [transparent] listener"
        );
    }
    let programs = Programs {
        v4: args.iptables,
        v6: args.ip6tables,
    };
    if args.remove {
        host::remove(&spec, &programs)?;
        eprintln!("meshguard iptables: capture rules removed (IPv4 and IPv6)");
    } else if args.apply {
        match host::apply(&spec, &programs, args.ipv4_only, host::ipv6_enabled())? {
            Applied::Both => {
                eprintln!("meshguard iptables: capture rules installed (IPv4 and IPv6)");
                if let Some(config) = &config {
                    warn_ipv4_only_listeners(config);
                }
            }
            Applied::Ipv4OnlyAsAsked => eprintln!(
                "meshguard iptables: capture rules installed for IPv4 only (--ipv4-only); IPv6 \
                 connections are NOT captured and reach the apps with no mTLS and no policy"
            ),
            Applied::Ipv4OnlyIpv6Disabled(why) => eprintln!(
                "meshguard iptables: capture rules installed for IPv4; IPv6 is disabled on this \
                 host, and its rules could not be installed ({why})"
            ),
            _ => eprintln!("meshguard iptables: capture rules installed"),
        }
    } else {
        out!(
            "{}",
            iptables::to_script(&programs.v4, &spec.install_rules(Family::V4))
        )?;
        if !args.ipv4_only {
            out!(
                "{}",
                iptables::to_script(&programs.v6, &spec.install_rules(Family::V6))
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// IPv6 connections are redirected to the same ports; a listener on an IPv4 address cannot take
/// them, so they are refused (safe, but the app is unreachable over IPv6). Say so.
fn warn_ipv4_only_listeners(config: &meshguard_proxy::Config) {
    let listeners = config
        .inbound
        .first()
        .map(|l| l.listen)
        .into_iter()
        .chain(config.transparent.as_ref().map(|t| t.listen));
    for listen in listeners.filter(SocketAddr::is_ipv4) {
        eprintln!(
            "meshguard iptables: warning: the proxy listens on {listen}, IPv4 only, so redirected \
             IPv6 connections will be refused; listen on [::]:{} to serve both families",
            listen.port()
        );
    }
}
