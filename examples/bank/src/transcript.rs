//! The readable transcript: sections, notes, one line per scripted request with what was expected
//! and what was observed, and the summary table at the end. Everything printed here comes from a
//! real response or a real log line; the transcript only formats it.

use std::fmt::Write as _;

/// What one scripted step showed.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Who called, e.g. `payments`.
    pub caller: String,
    /// Who was called, e.g. `ledger`.
    pub target: String,
    /// `POST /ledger/entries`, or `connect` at L4.
    pub request: String,
    /// `allow` or `deny`.
    pub expected: String,
    /// `allow`, `deny`, or what went wrong.
    pub observed: String,
    /// The deciding policy and reason, from the log.
    pub why: String,
    /// Whether the step behaved as scripted.
    pub passed: bool,
}

/// Lines not built into this binary: said plainly and listed at the end.
#[derive(Debug, Default)]
pub struct Transcript {
    steps: Vec<StepResult>,
    missing: Vec<String>,
    failures: Vec<String>,
}

impl Transcript {
    /// Starts a section.
    pub fn section(&mut self, title: &str) {
        println!("\n== {title} ==");
    }

    /// A line of narration.
    pub fn note(&mut self, text: &str) {
        println!("   {text}");
    }

    /// Indented output of a command or log.
    pub fn detail(&mut self, text: &str) {
        println!("      | {text}");
    }

    /// A warning that does not fail the run.
    pub fn warn(&mut self, text: &str) {
        println!("   !! {text}");
    }

    /// A piece the demo needs that this build does not have. The run cannot pass with it missing.
    pub fn missing(&mut self, what: &str) {
        println!("   -- NOT AVAILABLE in this build: {what}");
        self.missing.push(what.to_owned());
    }

    /// A check outside the request table (renewal, audit, perf) that did not behave as scripted.
    pub fn fail(&mut self, what: &str) {
        println!("   XX UNEXPECTED: {what}");
        self.failures.push(what.to_owned());
    }

    /// Records and prints one scripted request.
    pub fn step(&mut self, result: StepResult) {
        let n = self.steps.len() + 1;
        let mark = if result.passed { "ok" } else { "XX" };
        println!(
            "   {mark} [{n:>2}] {:<10} -> {:<12} {:<44} {:<6} (expected {})",
            result.caller,
            result.target,
            result.request,
            result.observed.to_uppercase(),
            result.expected
        );
        if !result.why.is_empty() {
            println!("             why: {}", result.why);
        }
        if !result.passed {
            self.failures.push(format!(
                "step {n}: {} -> {} {}",
                result.caller, result.target, result.request
            ));
        }
        self.steps.push(result);
    }

    /// The summary table.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n== Summary ==");
        let _ = writeln!(
            out,
            "   {:>3}  {:<10} {:<12} {:<44} {:<8} {:<8} result",
            "#", "caller", "target", "request", "expected", "observed"
        );
        for (i, s) in self.steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "   {:>3}  {:<10} {:<12} {:<44} {:<8} {:<8} {}",
                i + 1,
                s.caller,
                s.target,
                s.request,
                s.expected,
                s.observed,
                if s.passed {
                    "as scripted"
                } else {
                    "NOT AS SCRIPTED"
                }
            );
        }
        let passed = self.steps.iter().filter(|s| s.passed).count();
        let _ = writeln!(
            out,
            "   {passed}/{} requests behaved as scripted",
            self.steps.len()
        );
        for m in &self.missing {
            let _ = writeln!(out, "   missing: {m}");
        }
        for f in &self.failures {
            let _ = writeln!(out, "   failed: {f}");
        }
        out
    }

    /// Steps recorded so far.
    pub fn steps(&self) -> &[StepResult] {
        &self.steps
    }

    /// Pieces not available in this build.
    pub fn missing_pieces(&self) -> &[String] {
        &self.missing
    }

    /// Everything that did not behave as scripted.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }
}
