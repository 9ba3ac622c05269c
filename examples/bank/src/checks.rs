//! Steps outside the sidecar-to-sidecar script: clients nobody here wrote (curl with and without a
//! client certificate) knocking on the ledger, and the policy engine itself (`meshguard policy
//! eval` / `break-glass` / `test`) deciding with a fixed clock on the very files the sidecars load.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::ca::path;
use crate::logs::{self, LogCursor};
use crate::process::Meshguard;
use crate::topology::Sidecar;
use crate::transcript::{StepResult, Transcript};

/// `curl` straight at the ledger's inbound mTLS port: once without a certificate, once with a
/// valid SVID of a workload the policy does not know (`cert` = an `ca issue` output directory).
pub async fn curl_at_ledger(ledger: &Sidecar, who: &str, cert: Option<&Path>, t: &mut Transcript) {
    let url = format!("https://{}/ledger/balances", ledger.inbound);
    let cursor = LogCursor::at_end(&ledger.access_log);
    let mut command = Command::new("curl");
    // -k: an SVID names a SPIFFE ID, not a host name; the server side is what is tested here.
    command.args([
        "-sS",
        "-k",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    if let Some(dir) = cert {
        command
            .arg("--cert")
            .arg(dir.join("svid.pem"))
            .arg("--key")
            .arg(dir.join("svid.key"));
    }
    let output = match tokio::task::spawn_blocking(move || command.output()).await {
        Ok(Ok(output)) => output,
        _ => {
            t.warn("curl is not installed: the external-client steps are skipped");
            return;
        }
    };
    let code = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let err = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let line = cursor
        .wait_for(Duration::from_secs(5), |l| {
            logs::field(l, "direction") == Some("inbound")
        })
        .await;
    let logged = line
        .as_ref()
        .map(logs::decision)
        .unwrap_or_else(|| "no-log".into());
    // Refused: either at the handshake (no certificate) or by policy; never an HTTP 2xx.
    let got_through = code.starts_with('2');
    let refused = !got_through && (logged == "deny" || logged.starts_with("refused"));
    let observed = if got_through {
        "allow".to_owned()
    } else if refused {
        "deny".to_owned()
    } else {
        logged.clone()
    };
    t.step(StepResult {
        caller: who.to_owned(),
        target: "ledger".to_owned(),
        request: format!(
            "curl GET /ledger/balances {}",
            if cert.is_some() {
                "(own SVID)"
            } else {
                "(no cert)"
            }
        ),
        expected: "deny".to_owned(),
        observed,
        why: format!(
            "{}\n             curl: exit {}, http_code {code} {err}",
            line.as_ref()
                .map(logs::explain)
                .unwrap_or_else(|| "no access-log line within 5 s".into()),
            output.status.code().unwrap_or(-1)
        ),
        passed: refused,
    });
}

/// One decision by `meshguard policy eval --format json` on a request document at a fixed time.
pub fn eval(
    mg: &Meshguard,
    dir: &Path,
    policy: &Path,
    grants: Option<&Path>,
    doc: &Value,
    label: &str,
) -> anyhow::Result<Value> {
    let input = dir.join(format!("{label}.request.json"));
    std::fs::write(&input, serde_json::to_string_pretty(doc)?)?;
    let mut args = vec![
        "policy".to_owned(),
        "eval".to_owned(),
        path(policy),
        "--input".to_owned(),
        path(&input),
        "--format".to_owned(),
        "json".to_owned(),
    ];
    if let Some(grants) = grants {
        args.extend(["--break-glass".to_owned(), path(grants)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = mg.output(&args)?;
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "`meshguard policy eval` gave no JSON decision ({e}): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}

/// Records an engine decision as a step.
pub fn engine_step(
    t: &mut Transcript,
    caller: &str,
    target: &str,
    request: &str,
    expected: &str,
    decision: &Value,
    must_name: Option<&str>,
) {
    let outcome = decision
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let policy = decision
        .get("policy")
        .and_then(Value::as_str)
        .unwrap_or("(default)");
    let reasons: Vec<&str> = decision
        .get("reasons")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut why = format!("policy={policy} reasons={:?}", reasons.join("; "));
    if let Some(bg) = decision.get("break_glass").filter(|b| !b.is_null()) {
        why.push_str(&format!(" break_glass={bg}"));
    }
    if let Some(dry) = decision
        .get("dry_run")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty())
    {
        why.push_str(&format!(" dry_run={}", Value::Array(dry.clone())));
    }
    let named = must_name.is_none_or(|word| why.contains(word));
    let passed = outcome == expected && named;
    if !named {
        why.push_str(&format!(
            " (expected it to name {:?})",
            must_name.unwrap_or("")
        ));
    }
    t.step(StepResult {
        caller: caller.to_owned(),
        target: target.to_owned(),
        request: request.to_owned(),
        expected: expected.to_owned(),
        observed: outcome,
        why,
        passed,
    });
}
