//! Policy unit tests, like `opa test`: a TOML table of inputs with expected outcomes, policies and
//! reasons, run by `meshguard policy test`.
//!
//! ```toml
//! [[case]]
//! name = "accounting decrypts in business hours"
//! input = { principal = "spiffe://bank.example/ns/accounting/sa/reporting", method = "POST",
//!           path = "/v1/keys/financial-report/decrypt", source_ip = "10.20.3.4",
//!           headers = { x-role = "accountant" }, time = "2026-11-23T10:00:00Z" }
//! expect = "allow"
//! policy = "financial-report-key-decrypt"   # optional: the deciding policy
//! reasons = ["outside business hours"]      # optional: each must occur in some reason
//! ```

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::decision::{Decision, Outcome};
use crate::request::RequestDoc;
use crate::set::PolicySet;
use crate::{Location, PolicyError};

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub input: RequestDoc,
    pub expect: Outcome,
    /// The expected deciding policy; `""` means "decided by the default".
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Expected break-glass marking (true: a grant decided).
    #[serde(default)]
    pub break_glass: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    case: Vec<Spanned<Case>>,
}

/// A case with where it was written.
#[derive(Debug, Clone)]
pub struct LocatedCase {
    pub at: Location,
    pub case: Case,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub at: Location,
    pub name: String,
    pub decision: Decision,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Parses a cases file; every input must carry a `time` so cases are deterministic.
pub fn parse(file: &Path, text: &str) -> Result<Vec<LocatedCase>, PolicyError> {
    let parsed: CasesFile =
        toml::from_str(text).map_err(|e| PolicyError::from_toml(file, text, &e))?;
    let mut cases = Vec::with_capacity(parsed.case.len());
    for spanned in parsed.case {
        let at = Location::at_offset(file, text, spanned.span().start);
        let mut case = spanned.into_inner();
        if case.input.time.is_none() {
            return Err(PolicyError::invalid(
                at,
                format!(
                    "case {:?} has no input.time; give one so the case decides the same way every day",
                    case.name
                ),
            ));
        }
        case.input.normalize();
        cases.push(LocatedCase { at, case });
    }
    if cases.is_empty() {
        return Err(PolicyError::invalid(
            Location::file_start(file),
            "no [[case]] tables; a test file needs at least one",
        ));
    }
    Ok(cases)
}

/// Runs every case against `set`.
pub fn run(set: &PolicySet, cases: &[LocatedCase]) -> Vec<CaseResult> {
    cases
        .iter()
        .map(|LocatedCase { at, case }| {
            let req = case.input.as_request(jiff::Timestamp::UNIX_EPOCH);
            let decision = set.evaluate(&req);
            let failures = check(case, &decision);
            CaseResult {
                at: at.clone(),
                name: case.name.clone(),
                decision,
                failures,
            }
        })
        .collect()
}

fn check(case: &Case, d: &Decision) -> Vec<String> {
    let mut failures = Vec::new();
    if d.outcome != case.expect {
        failures.push(format!("expected {}, got {}", case.expect, d.outcome));
    }
    if let Some(expected) = &case.policy {
        let got = d.policy.as_deref().unwrap_or("");
        if got != expected {
            let show = |s: &str| {
                if s.is_empty() {
                    "the default".to_owned()
                } else {
                    format!("policy {s:?}")
                }
            };
            failures.push(format!(
                "expected {} to decide, got {}",
                show(expected),
                show(got)
            ));
        }
    }
    for reason in &case.reasons {
        if !d.reasons.iter().any(|r| r.contains(reason.as_str())) {
            failures.push(format!("no reason contains {reason:?}"));
        }
    }
    if let Some(expected) = case.break_glass.filter(|e| *e != d.break_glass.is_some()) {
        failures.push(format!(
            "expected break_glass = {expected}, got {}",
            d.break_glass.is_some()
        ));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "[[policy]]\nname = \"gets\"\naction = \"allow\"\nmethods = [\"GET\"]\n";

    #[test]
    fn cases_pass_and_fail_with_messages() {
        let set = PolicySet::from_texts([("p.toml", POLICY.to_owned())]).unwrap();
        let text = r#"
[[case]]
name = "get allowed"
input = { method = "GET", time = "2026-11-23T10:00:00Z" }
expect = "allow"
policy = "gets"

[[case]]
name = "wrong expectation"
input = { method = "POST", time = "2026-11-23T10:00:00Z" }
expect = "allow"
reasons = ["nope"]
"#;
        let cases = parse(Path::new("c.toml"), text).unwrap();
        let results = run(&set, &cases);
        assert!(results[0].passed());
        assert!(!results[1].passed());
        assert_eq!(results[1].at.line, 8);
        assert_eq!(
            results[1].failures,
            ["expected allow, got deny", "no reason contains \"nope\""]
        );
    }

    #[test]
    fn cases_need_a_time() {
        let text = "[[case]]\nname = \"x\"\ninput = { method = \"GET\" }\nexpect = \"allow\"\n";
        let e = parse(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(e.contains("input.time"), "{e}");
        let e = parse(
            Path::new("c.toml"),
            "[[case]]\nname = \"x\"\ninput = { metod = \"GET\" }\nexpect = \"allow\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.toml:3:") && e.contains("metod"), "{e}");
    }
}
