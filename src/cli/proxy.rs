//! `meshguard proxy --config FILE`: runs the data plane (sidecar or gateway) until SIGTERM or
//! Ctrl-C, then drains open connections for the configured grace period and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The proxy's TOML config (identity, admin, access_log, inbound, outbound, transparent).
    #[arg(long, short)]
    config: PathBuf,
    /// Only validate the config and print the effective config as JSON.
    #[arg(long)]
    check: bool,
    /// Worker threads of the data plane (default: one per CPU). A sidecar is usually given one or
    /// two, like linkerd2-proxy's `LINKERD2_PROXY_CORES`; `perf compare` uses one to compare per core.
    #[arg(long, env = "MESHGUARD_PROXY_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = meshguard_proxy::Config::load(&args.config)?;
    if args.check {
        outln!(
            "{}",
            serde_json::to_string_pretty(&config.to_redacted_json())?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(usize::from(threads));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        meshguard_proxy::run(config, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGTERM (orchestrators) or Ctrl-C (a terminal).
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}
