//! The `meshguard` command: parses arguments and wires the library crates together. Nothing else
//! lives here; each subcommand's wiring is in its own file under `src/cli/`.

#![forbid(unsafe_code)]

#[macro_use]
mod cli;

use std::process::ExitCode;

/// jemalloc for the whole process (see the root Cargo.toml): lower RSS per connection under churn.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand};

/// Zero-trust service-mesh data plane: SPIFFE mTLS proxy, HSM-rooted CA, policy as code.
#[derive(Debug, Parser)]
#[command(name = "meshguard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the certificate authority: init, issue, tokens, the issuance API, bundle, audit.
    Ca(cli::ca::Args),
    /// Run the data plane (sidecar or gateway) from a config file.
    Proxy(cli::proxy::Args),
    /// Check, evaluate, test and replay authorization policies.
    Policy(cli::policy::Args),
    /// Measure handshakes, forwarding and latency against meshguard, direct and peer proxies.
    Perf(cli::perf::Args),
    /// Print, apply or remove the iptables rules for transparent capture.
    Iptables(cli::iptables::Args),
    /// Run the bank demo: a CA in SoftHSM2, sidecars, policies and a scripted run on 127.0.0.1.
    Demo(cli::demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing();
    let result = match cli.command {
        Command::Ca(args) => cli::ca::run(args),
        Command::Proxy(args) => cli::proxy::run(args),
        Command::Policy(args) => cli::policy::run(args),
        Command::Perf(args) => cli::perf::run(args),
        Command::Iptables(args) => cli::iptables::run(args),
        Command::Demo(args) => cli::demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) if cli::is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every option and argument of every subcommand has a help line: `--help` is the manual an
    /// operator reads first.
    #[test]
    fn every_option_says_what_it_is_for() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "meshguard", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:#?}");
    }
}
