//! One module per subcommand; each turns parsed arguments into calls on the library crates.

pub(crate) mod ca;
pub(crate) mod demo;
pub(crate) mod iptables;
pub(crate) mod perf;
pub(crate) mod policy;
pub(crate) mod proxy;

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), so stdout stays for command output.
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: logs redirected to a file or journald stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
