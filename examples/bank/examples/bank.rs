//! Runs the bank demo without the `meshguard demo` subcommand:
//! `cargo run -p meshguard-demo --example bank -- [PATH/TO/meshguard] [--skip-perf] [--l4] [--software-key]`
//! (the binary defaults to `target/debug/meshguard`; build it with `cargo build -p meshguard`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let skip_perf = args.iter().any(|a| a == "--skip-perf");
    let meshguard = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/meshguard")
        });
    let options = meshguard_demo::Options {
        meshguard,
        dir: None,
        skip_perf,
        l4_only: args.iter().any(|a| a == "--l4"),
        software_key: args.iter().any(|a| a == "--software-key"),
    };
    Ok(ExitCode::from(meshguard_demo::run(&options)?.exit_code()))
}
