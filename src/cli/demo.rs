//! `meshguard demo`: the bank demo from `examples/bank` (crate `meshguard-demo`), run with this
//! very binary as the CA and the sidecars. Exits 0 when every step behaved as scripted, 1 when one
//! did not, 2 when every step that ran behaved but pieces of meshguard it needs are missing.

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
    /// Run every sidecar at L4 (per-connection decisions) even when the L7 proxy is built.
    #[arg(long)]
    l4: bool,
    /// Keep the CA's root key in a software file (labelled as such) even when SoftHSM2 is there.
    #[arg(long)]
    software_key: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let meshguard =
        std::env::current_exe().context("cannot find the meshguard binary to run the sidecars")?;
    let options = meshguard_demo::Options {
        meshguard,
        dir: args.dir,
        skip_perf: args.skip_perf,
        l4_only: args.l4,
        software_key: args.software_key,
    };
    Ok(ExitCode::from(meshguard_demo::run(&options)?.exit_code()))
}
