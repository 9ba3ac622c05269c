//! `meshguard perf`: the load generator and its upstream live in `meshguard-perf`; this only hands
//! the parsed subcommand over.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: meshguard_perf::Command,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    meshguard_perf::run(args.command)?;
    Ok(ExitCode::SUCCESS)
}
