//! One module per subcommand; each turns parsed arguments into calls on the library crates.

/// `println!` / `print!` that hand the write error back instead of panicking. A reader that stops
/// early (`meshguard proxy --check | head`) closes the pipe; the command then ends quietly (see
/// [`is_broken_pipe`]) rather than with a panic message.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

pub(crate) mod ca;
pub(crate) mod demo;
pub(crate) mod iptables;
pub(crate) mod perf;
pub(crate) mod policy;
pub(crate) mod proxy;

/// Whether `error` is stdout's reader having gone away: the output was not wanted any more, which
/// is not a failure of the command.
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

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
