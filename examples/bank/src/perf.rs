//! The closing figures: `meshguard perf http` for 5 seconds straight at the ledger app, then for 5
//! seconds through the payments -> ledger sidecar pair, read back from the JSON each run writes.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::ca::path;
use crate::process::Meshguard;
use crate::transcript::Transcript;

/// Requests per second offered in each run: modest, because the demo runs on a debug build and the
/// machine's cores are shared with the sidecars themselves.
const RATE: &str = "200";

/// Runs both measurements and prints them side by side.
pub async fn compare(
    mg: &Meshguard,
    dir: &Path,
    direct: SocketAddr,
    pair: SocketAddr,
    t: &mut Transcript,
) {
    let mut rows = Vec::new();
    for (label, addr) in [("direct", direct), ("sidecar pair", pair)] {
        let json = dir.join(format!("perf-{}.json", label.replace(' ', "-")));
        let target = format!("http://{addr}/healthz");
        let args = [
            "perf",
            "http",
            "--target",
            &target,
            "--rate",
            RATE,
            "--duration",
            "5s",
            "--connections",
            "4",
            "--threads",
            "1",
            "--json",
            &path(&json),
        ];
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let mg2 = mg.clone();
        let run = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mg2.output(&args)
        })
        .await;
        match run {
            Ok(Ok(output)) if output.status.success() => {}
            Ok(Ok(output)) => {
                t.fail(&format!(
                    "perf http ({label}) failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
                continue;
            }
            _ => {
                t.fail(&format!("perf http ({label}) could not run"));
                continue;
            }
        }
        match std::fs::read_to_string(&json)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        {
            Some(figures) => rows.push((label, figures)),
            None => t.fail(&format!(
                "perf http ({label}) wrote no readable {}",
                json.display()
            )),
        }
    }
    t.note(&format!(
        "meshguard perf http, 5 s each, {RATE} req/s offered, 4 connections, GET /healthz:"
    ));
    t.detail(&format!(
        "{:<14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "target", "achieved/s", "p50 us", "p90 us", "p99 us", "max us", "errors"
    ));
    for (label, f) in &rows {
        let lat = |k: &str| {
            f["latency_us"][k]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{v:.0}"))
        };
        let errors: u64 = match &f["errors"] {
            Value::Object(m) => m.values().filter_map(Value::as_u64).sum(),
            Value::Number(n) => n.as_u64().unwrap_or(0),
            _ => 0,
        };
        t.detail(&format!(
            "{:<14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
            label,
            f["achieved_rate"]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{v:.0}")),
            lat("p50"),
            lat("p90"),
            lat("p99"),
            lat("max"),
            errors
        ));
        if errors > 0 {
            t.fail(&format!("perf http ({label}) had {errors} errors"));
        }
    }
    t.note("(a debug build on a shared 2-core machine: these show the path works, not its speed; see perf/ for release figures)");
}
