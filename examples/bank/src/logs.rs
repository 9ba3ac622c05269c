//! Reading the sidecars' JSON access logs: the transcript's "why" (decision, policy, reason) comes
//! from the log line the inbound sidecar wrote for the request, never from the script.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// A log file read from a remembered offset, so each step sees only the lines it caused.
#[derive(Debug, Clone)]
pub struct LogCursor {
    path: PathBuf,
    offset: usize,
}

impl LogCursor {
    /// A cursor at the current end of `path` (0 when the file does not exist yet).
    pub fn at_end(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map_or(0, |m| usize::try_from(m.len()).unwrap_or(0));
        Self {
            path: path.to_owned(),
            offset,
        }
    }

    /// Complete JSON lines written after the cursor.
    pub fn new_lines(&self) -> Vec<Value> {
        let text = std::fs::read(&self.path).unwrap_or_default();
        let Some(fresh) = text.get(self.offset..) else {
            return Vec::new();
        };
        let fresh = String::from_utf8_lossy(fresh);
        let complete = match fresh.rfind('\n') {
            Some(end) => &fresh[..end],
            None => "",
        };
        complete
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits up to `timeout` for a new line that `matches`. The proxy writes its access log from a
    /// separate task, so the line may land shortly after the response.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.new_lines().into_iter().find(|l| matches(l)) {
                return Some(line);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A string field of a log line.
pub fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line.get(name).and_then(Value::as_str)
}

/// The request id of an L7 request line (`http.request_id`, or top level).
pub fn request_id(line: &Value) -> Option<&str> {
    line.get("http")
        .and_then(|h| field(h, "request_id"))
        .or_else(|| field(line, "request_id"))
}

/// The logged decision: `allow`, `deny`, `audit`, or the error class when the connection failed
/// before a decision (for example a client without a certificate).
pub fn decision(line: &Value) -> String {
    let decision = line.get("decision").and_then(|d| {
        d.as_str()
            .or_else(|| d.get("outcome").and_then(Value::as_str))
    });
    match decision {
        Some(d) => d.to_owned(),
        None => match field(line, "error_class") {
            Some(class) => format!("refused ({class})"),
            None => "none".to_owned(),
        },
    }
}

/// `policy=NAME reason="..." dry-run` from a log line, for the transcript.
pub fn explain(line: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(peer) = field(line, "peer_id") {
        parts.push(format!("peer={peer}"));
    }
    parts.push(format!(
        "policy={}",
        field(line, "policy").unwrap_or("(default)")
    ));
    for key in ["rule", "reason"] {
        if let Some(v) = line.get(key) {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; "),
                _ => continue,
            };
            parts.push(format!("{key}={text:?}"));
        }
    }
    let http = line.get("http");
    if let Some(http) = http.filter(|h| field(h, "method").is_some_and(|m| !m.is_empty())) {
        let status = http.get("status").and_then(Value::as_u64).unwrap_or(0);
        parts.insert(
            0,
            format!(
                "{} {} -> {status}",
                field(http, "method").unwrap_or("?"),
                field(http, "path").unwrap_or("?")
            ),
        );
    }
    if line.get("dry_run").and_then(Value::as_bool) == Some(true) {
        parts.push("dry-run policy matched (not enforced)".to_owned());
    }
    // `reason` already joins every reason; `http.break_glass` flags a grant (its reason is in `reason`).
    if http.unwrap_or(line).get("break_glass") == Some(&Value::Bool(true)) {
        parts.push("granted by break-glass".to_owned());
    }
    if let Some(tls) = field(line, "tls_version") {
        parts.push(format!("{tls} {}", field(line, "kx_group").unwrap_or("")));
    }
    parts.join(" ")
}

/// A decision-log line in a few words: outcome, policy, reasons, dry-run matches, grant, id.
pub fn explain_decision(entry: &Value) -> String {
    let mut parts = vec![format!(
        "{} by {}",
        field(entry, "outcome").unwrap_or("?"),
        field(entry, "policy").unwrap_or("(default)")
    )];
    if let Some(reasons) = entry
        .get("reasons")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    {
        let text: Vec<&str> = reasons.iter().filter_map(Value::as_str).collect();
        parts.push(format!("reasons={:?}", text.join("; ")));
    }
    for dry in entry
        .get("dry_run")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(format!(
            "dry-run {} would {}",
            field(dry, "policy").unwrap_or("?"),
            field(dry, "outcome").unwrap_or("?")
        ));
    }
    if let Some(grant) = entry.get("break_glass").and_then(Value::as_str) {
        // The grant text already starts with "break-glass:".
        parts.push(grant.to_owned());
    }
    if let Some(id) = field(entry, "decision_id") {
        parts.push(format!("id={id}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_complete_lines_after_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, "{\"decision\":\"allow\"}\n").unwrap();
        let cursor = LogCursor::at_end(&path);
        assert!(cursor.new_lines().is_empty());
        std::fs::write(
            &path,
            "{\"decision\":\"allow\"}\n{\"decision\":\"deny\",\"policy\":\"p\"}\n{\"partial",
        )
        .unwrap();
        let lines = cursor.new_lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(decision(&lines[0]), "deny");
        assert_eq!(explain(&lines[0]), "policy=p");
    }

    #[test]
    fn an_http_request_line_shows_the_request_and_its_id() {
        let line: Value = serde_json::json!({"direction": "inbound", "decision": "deny", "policy": "no-deletes",
            "reason": "ledger entries are append-only",
            "http": {"method": "DELETE", "path": "/ledger/entries/1", "status": 403, "request_id": "demo-5", "reasons": ["ledger entries are append-only"], "break_glass": false}});
        assert_eq!(request_id(&line), Some("demo-5"));
        let text = explain(&line);
        assert!(
            text.starts_with("DELETE /ledger/entries/1 -> 403 policy=no-deletes"),
            "{text}"
        );
        assert!(text.contains("append-only"));
    }

    #[test]
    fn a_decision_line_names_its_dry_run_matches() {
        let entry: Value = serde_json::json!({"decision_id": "d1", "outcome": "allow", "policy": "reporting-connect", "reasons": [],
            "dry_run": [{"policy": "reporting-to-read-replica", "outcome": "deny"}]});
        assert_eq!(
            explain_decision(&entry),
            "allow by reporting-connect, dry-run reporting-to-read-replica would deny, id=d1"
        );
    }

    #[test]
    fn a_failed_handshake_reads_as_refused() {
        let line: Value =
            serde_json::json!({"error_class": "handshake", "reason": "no client certificate"});
        assert_eq!(decision(&line), "refused (handshake)");
        assert!(explain(&line).contains("no client certificate"));
    }
}
