//! `meshguard perf`: not built yet.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Arguments for a subcommand that is not built yet.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

pub(crate) fn run(_args: Args) -> anyhow::Result<ExitCode> {
    super::not_built_yet("perf")
}
