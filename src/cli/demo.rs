//! `meshguard demo`: the bank demo from `examples/bank` (crate `meshguard-demo`), run with this
//! very binary as the CA and the sidecars. Exits non-zero when any step does not behave as scripted.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Keep configs, logs and the CA state here instead of a fresh temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip the closing 2 x 5 s `meshguard perf http` run.
    #[arg(long)]
    skip_perf: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let meshguard =
        std::env::current_exe().context("cannot find the meshguard binary to run the sidecars")?;
    let options = meshguard_demo::Options {
        meshguard,
        dir: args.dir,
        skip_perf: args.skip_perf,
    };
    Ok(ExitCode::from(meshguard_demo::run(&options)?.exit_code()))
}
