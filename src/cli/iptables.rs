//! `meshguard iptables`: prints the REDIRECT rules for transparent capture, or applies
//! (`--apply`) or removes (`--remove`) them. The rules themselves are built in
//! `meshguard_proxy::iptables`.

use std::path::PathBuf;
use std::process::ExitCode;

use meshguard_proxy::iptables::{self, CaptureSpec};

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
    exclude_outbound_cidrs: Vec<String>,
    /// Install the rules (needs root / CAP_NET_ADMIN).
    #[arg(long, conflicts_with = "remove")]
    apply: bool,
    /// Remove the rules.
    #[arg(long)]
    remove: bool,
    /// The iptables program.
    #[arg(long, default_value = "iptables")]
    iptables: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut spec = match &args.config {
        Some(path) => CaptureSpec::from_config(
            &meshguard_proxy::Config::load(path)?,
            args.proxy_uid.unwrap_or_default(),
        ),
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
    if args.remove {
        iptables::run_ignoring_failures(&args.iptables, &spec.remove_rules())?;
        eprintln!("meshguard iptables: capture rules removed");
    } else if args.apply {
        // Start clean so that applying twice does not stack rules.
        iptables::run_ignoring_failures(&args.iptables, &spec.remove_rules())?;
        iptables::run_all(&args.iptables, &spec.install_rules())?;
        eprintln!("meshguard iptables: capture rules installed");
    } else {
        print!(
            "{}",
            iptables::to_script(&args.iptables, &spec.install_rules())
        );
    }
    Ok(ExitCode::SUCCESS)
}
