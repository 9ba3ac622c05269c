//! The soak's verdict and figures: each check with what it saw, per sidecar the descriptors and
//! memory before, at the peak and after, and per bad client what the sidecar did. Written as
//! `report.json` and `report.md`; the markdown is also what the command prints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::SoakArgs;
use super::mix::MixOutcome;
use super::resources::Held;

/// One sidecar's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarFigures {
    pub name: String,
    pub baseline: Held,
    pub peak: Held,
    pub after: Held,
    /// `panicked at` lines in its log.
    pub panics: u64,
    /// Policy reloads its log reports as applied and as refused (last good revision kept).
    pub reloads_applied: u64,
    pub reloads_refused: u64,
}

impl SidecarFigures {
    /// Reads the counts from the sidecar's log.
    pub fn new(
        name: &str,
        log: &Path,
        baseline: Held,
        peak: Held,
        after: Held,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(log)
            .with_context(|| format!("could not read the log {}", log.display()))?;
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count() as u64;
        Ok(SidecarFigures {
            name: name.to_owned(),
            baseline,
            peak: peak.max(baseline).max(after),
            after,
            panics: count("panicked at"),
            reloads_applied: count("policy revision applied"),
            reloads_refused: count("policy reload failed"),
        })
    }
}

/// One pass/fail check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Everything the soak measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub started: String,
    pub duration_s: f64,
    pub rate: f64,
    pub handshake_rate: f64,
    pub bad_rate: f64,
    pub good_requests: u64,
    pub good_handshakes: u64,
    pub good_failed: BTreeMap<String, u64>,
    pub bad_clients: BTreeMap<String, BTreeMap<String, u64>>,
    pub rotations: u64,
    pub rotations_seen: u64,
    pub policy_edits: u64,
    pub broken_edits: u64,
    pub settled_in_s: f64,
    pub sidecars: Vec<SidecarFigures>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

impl SoakReport {
    pub fn new(
        args: &SoakArgs,
        started: jiff::Timestamp,
        settled_in: Duration,
        outcome: &MixOutcome,
        sidecars: Vec<SidecarFigures>,
    ) -> SoakReport {
        let mut good_failed = BTreeMap::new();
        for (kind, n) in outcome
            .keepalive
            .errors
            .iter()
            .chain(&outcome.handshakes.errors)
        {
            *good_failed.entry(kind.key().to_owned()).or_default() += n;
        }
        let failed: u64 = good_failed.values().sum();
        let slack = 1.0 + args.rss_slack_percent / 100.0;
        let mut checks = vec![
            check(
                "good requests all succeeded",
                failed == 0,
                format!(
                    "{} kept-alive requests and {} new mTLS connections completed, {failed} failed",
                    outcome.keepalive_completed, outcome.handshakes_completed
                ),
            ),
            check(
                "no bad client was served",
                outcome.breaches.is_empty(),
                if outcome.breaches.is_empty() {
                    format!(
                        "{} attempts, none served",
                        outcome.bad.values().flat_map(|m| m.values()).sum::<u64>()
                    )
                } else {
                    outcome.breaches.join("; ")
                },
            ),
            check(
                "every rotation was served",
                outcome.rotations > 0 && outcome.rotations_seen == outcome.rotations,
                format!(
                    "{} of {} rotations served by the inbound sidecar within 10 s",
                    outcome.rotations_seen, outcome.rotations
                ),
            ),
        ];
        let refused: u64 = sidecars.iter().map(|s| s.reloads_refused).sum();
        checks.push(check(
            "broken policy edits were refused",
            outcome.broken_edits == 0 || refused > 0,
            format!("{} broken edits written, {refused} refusals logged (a burst of edits may reload once)", outcome.broken_edits),
        ));
        for s in &sidecars {
            checks.push(check(
                &format!("{}: no panic", s.name),
                s.panics == 0,
                format!("{} `panicked at` lines", s.panics),
            ));
            checks.push(check(
                &format!("{}: file descriptors back to the baseline", s.name),
                s.after.fds <= s.baseline.fds,
                format!(
                    "{} before, {} at the peak, {} after",
                    s.baseline.fds, s.peak.fds, s.after.fds
                ),
            ));
            checks.push(check(
                &format!("{}: memory back to the baseline", s.name),
                (s.after.rss_bytes as f64) <= s.baseline.rss_bytes as f64 * slack,
                format!(
                    "{} before, {} at the peak, {} after ({:+.1} %, slack {} %)",
                    mib(s.baseline.rss_bytes),
                    mib(s.peak.rss_bytes),
                    mib(s.after.rss_bytes),
                    (s.after.rss_bytes as f64 / s.baseline.rss_bytes.max(1) as f64 - 1.0) * 100.0,
                    args.rss_slack_percent
                ),
            ));
        }
        let passed = checks.iter().all(|c| c.passed);
        SoakReport {
            started: started.to_string(),
            duration_s: args.duration.as_secs_f64(),
            rate: args.rate,
            handshake_rate: args.handshake_rate,
            bad_rate: args.bad_rate,
            good_requests: outcome.keepalive_completed,
            good_handshakes: outcome.handshakes_completed,
            good_failed,
            bad_clients: outcome
                .bad
                .iter()
                .map(|(kind, outcomes)| (kind_key(*kind), outcomes.clone()))
                .collect(),
            rotations: outcome.rotations,
            rotations_seen: outcome.rotations_seen,
            policy_edits: outcome.policy_edits,
            broken_edits: outcome.broken_edits,
            settled_in_s: settled_in.as_secs_f64(),
            sidecars,
            checks,
            passed,
        }
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("could not encode the report")?;
        for (name, text) in [("report.json", json), ("report.md", self.to_string())] {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("could not write {}", path.display()))?;
        }
        Ok(())
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# meshguard soak, {}\n", self.started)?;
        writeln!(
            f,
            "{:.0} s through a sidecar pair: {} good requests/s kept-alive, {} new mTLS \
             connections/s, {} bad clients/s; {} rotations, {} policy edits ({} broken).\n",
            self.duration_s,
            self.rate,
            self.handshake_rate,
            self.bad_rate,
            self.rotations,
            self.policy_edits,
            self.broken_edits
        )?;
        writeln!(f, "**{}**\n", if self.passed { "PASSED" } else { "FAILED" })?;
        writeln!(f, "| check | result | seen |\n|---|---|---|")?;
        for c in &self.checks {
            let result = if c.passed { "ok" } else { "FAILED" };
            writeln!(f, "| {} | {result} | {} |", c.name, c.detail)?;
        }
        writeln!(
            f,
            "\nDescriptors settled {:.1} s after the load stopped.\n",
            self.settled_in_s
        )?;
        writeln!(f, "| bad client | what the sidecar did |\n|---|---|")?;
        for (kind, outcomes) in &self.bad_clients {
            let seen: Vec<String> = outcomes.iter().map(|(k, n)| format!("{k} x{n}")).collect();
            writeln!(f, "| {kind} | {} |", seen.join(", "))?;
        }
        Ok(())
    }
}

fn check(name: &str, passed: bool, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        detail,
    }
}

fn kind_key(kind: super::bad_clients::BadClient) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{kind:?}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
