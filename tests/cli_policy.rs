//! `meshguard policy ...` end to end: the real binary on the shipped example policies, cases,
//! request documents and access log.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a failure is the test failing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies")
}

fn policy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .arg("policy")
        .args(args)
        .current_dir(examples())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[test]
fn check_accepts_the_examples() {
    let o = policy(&["check", "ledger.toml", "key-access.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("ok: 8 policies in 2 file(s), default deny, revision "),
        "{}",
        stdout(&o)
    );
    let o = policy(&["check", "ledger.toml", "--format", "json"]);
    let v = json(&o);
    assert_eq!(
        (v["ok"].as_bool(), v["policies"].as_u64()),
        (Some(true), Some(6))
    );
    assert_eq!(v["revision"].as_str().unwrap().len(), 64);
}

#[test]
fn check_reports_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "default = \"deny\"\n\n[[policy]]\nname = \"x\"\naction = \"allow\"\nprincipals = [\"payments\"]\n").unwrap();
    let o = policy(&["check", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!("{}:6:14: ", bad.display())),
        "{err}"
    );
    assert!(err.contains("SPIFFE ID"), "{err}");

    std::fs::write(
        &bad,
        "[[policy]]\nname = \"x\"\naction = \"allow\"\nrego = \"v0.rego\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("v0.rego"),
        "package x\n\nallow {\n  true\n}\n",
    )
    .unwrap();
    let o = policy(&["check", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("v0.rego:") && err.contains("Rego v0"), "{err}");
}

#[test]
fn eval_prints_the_decision_and_explains_each_policy() {
    let o = policy(&[
        "eval",
        "ledger.toml",
        "--input",
        "requests/reporting-balances.json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("decision: allow"), "{out}");
    assert!(out.contains("policy:   reporting-read-in-hours"), "{out}");
    assert!(
        out.contains("payments-write-entries (allow): no match: `principals` did not match"),
        "{out}"
    );
    assert!(
        out.contains("bank-domain-only (deny, dry-run): no match"),
        "{out}"
    );

    let o = policy(&[
        "eval",
        "key-access.toml",
        "--input",
        "requests/decrypt-saturday.json",
        "--format",
        "json",
    ]);
    let v = json(&o);
    assert_eq!(v["outcome"], "deny");
    assert_eq!(v["policy"], serde_json::Value::Null);
    assert_eq!(
        v["reasons"],
        serde_json::json!([
            "no allow policy matched (default deny)",
            "outside business hours (Mon-Fri 09:00-17:00 Europe/London)"
        ])
    );
    assert_eq!(v["dry_run"], serde_json::json!([]));
}

#[test]
fn eval_of_a_connection_explains_the_fail_closed_rule() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("conn.json");
    std::fs::write(
        &input,
        r#"{"principal": "spiffe://partner.example/ns/feeds/sa/rates", "source_ip": "10.10.3.4",
            "port": 7443, "time": "2026-11-23T10:00:00Z"}"#,
    )
    .unwrap();
    let o = policy(&[
        "eval",
        "ledger.toml",
        "--input",
        input.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let v = json(&o);
    assert_eq!(
        (v["outcome"].as_str(), v["policy"].as_str()),
        (Some("deny"), Some("no-deletes"))
    );
    assert_eq!(
        v["dry_run"],
        serde_json::json!([{"policy": "bank-domain-only", "outcome": "deny"}])
    );
    let o = policy(&["eval", "ledger.toml", "--input", input.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("payments-write-entries (allow): no match: `principals` did not match")
    );
    assert!(
        stdout(&o).contains("explanation (connection-level request)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn test_runs_the_example_cases_and_fails_on_a_wrong_expectation() {
    for (policies, cases) in [
        ("ledger.toml", "ledger.cases.toml"),
        ("key-access.toml", "key-access.cases.toml"),
    ] {
        let o = policy(&["test", policies, "--cases", cases]);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains(" passed, 0 failed"), "{}", stdout(&o));
    }
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("wrong.toml");
    std::fs::write(
        &cases,
        "[[case]]\nname = \"deletes are fine\"\ninput = { principal = \"spiffe://bank.example/ns/payments/sa/payments\", method = \"DELETE\", path = \"/ledger/entries/1\", time = \"2026-11-23T10:00:00Z\" }\nexpect = \"allow\"\n",
    )
    .unwrap();
    let o = policy(&["test", "ledger.toml", "--cases", cases.to_str().unwrap()]);
    assert!(!o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("FAIL deletes are fine") && out.contains("expected allow, got deny"),
        "{out}"
    );
    assert!(out.contains("0 passed, 1 failed"), "{out}");
}

#[test]
fn replay_lists_what_the_new_policy_would_change() {
    let o = policy(&[
        "replay",
        "ledger.toml",
        "--log",
        "access.log",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["replayed"], 5);
    let changed: Vec<(u64, &str, &str)> = v["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["line"].as_u64().unwrap(),
                c["was"].as_str().unwrap(),
                c["now"]["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(changed, [(3, "allow", "deny"), (5, "allow", "deny")]);
    let o = policy(&["replay", "ledger.toml", "--log", "access.log"]);
    let out = stdout(&o);
    assert!(
        out.contains("line 5: allow -> deny  DELETE /ledger/entries/9"),
        "{out}"
    );
    assert!(
        out.contains("2 of 5 replayed requests would change (2 newly denied"),
        "{out}"
    );
}

#[test]
fn break_glass_grants_expire_and_mark_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let grants = dir.path().join("grants.toml");
    let grants_arg = grants.to_str().unwrap();
    let id = "spiffe://bank.example/ns/payments/sa/payments";
    let o = policy(&[
        "break-glass",
        "--principal",
        id,
        "--for",
        "15m",
        "--reason",
        "INC-4711: restore entry",
        "--file",
        grants_arg,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("break-glass granted to"),
        "{}",
        stdout(&o)
    );

    // A DELETE by payments is denied by `no-deletes`; with the grant in force it is allowed, marked.
    let input = dir.path().join("delete.json");
    std::fs::write(
        &input,
        format!(r#"{{"principal": "{id}", "method": "DELETE", "path": "/ledger/entries/1"}}"#),
    )
    .unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "ledger.toml",
            "--input",
            input.to_str().unwrap(),
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        json(&policy(&args))
    };
    assert_eq!(eval(&[])["outcome"], "deny");
    let v = eval(&["--break-glass", grants_arg]);
    assert_eq!(v["outcome"], "allow");
    assert_eq!(v["policy"], "no-deletes");
    assert_eq!(v["break_glass"], "break-glass: INC-4711: restore entry");

    // The same grant file, read at a time after expiry: the deny is back.
    let text = std::fs::read_to_string(&grants).unwrap();
    let expires = text
        .lines()
        .find_map(|l| l.strip_prefix("expires = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    std::fs::write(
        &input,
        format!(r#"{{"principal": "{id}", "method": "DELETE", "path": "/ledger/entries/1", "time": "{expires}"}}"#),
    )
    .unwrap();
    let v = eval(&["--break-glass", grants_arg]);
    assert_eq!(
        (v["outcome"].as_str(), &v["break_glass"]),
        (Some("deny"), &serde_json::Value::Null)
    );

    // A second grant appends; bad grants are refused and leave the file alone.
    let o = policy(&[
        "break-glass",
        "--principal",
        id,
        "--for",
        "1h",
        "--reason",
        "INC-4712",
        "--file",
        grants_arg,
    ]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_to_string(&grants)
            .unwrap()
            .matches("[[grant]]")
            .count(),
        2
    );
    for bad in [
        vec![
            "--principal",
            "spiffe://bank.example/*",
            "--for",
            "15m",
            "--reason",
            "x",
        ],
        vec!["--principal", id, "--for", "25h", "--reason", "x"],
        vec!["--principal", id, "--for", "15m", "--reason", " "],
        vec!["--principal", id, "--for", "soon", "--reason", "x"],
    ] {
        let mut args = vec!["break-glass"];
        args.extend(bad);
        args.extend(["--file", grants_arg]);
        let o = policy(&args);
        assert!(!o.status.success(), "{args:?} was accepted");
    }
    assert_eq!(
        std::fs::read_to_string(&grants)
            .unwrap()
            .matches("[[grant]]")
            .count(),
        2
    );
}

#[test]
fn eval_explains_what_actually_did_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "[[policy]]\nname = \"nets\"\naction = \"allow\"\nsource_cidrs = [\"10.0.0.0/8\"]\n\n\
         [[policy]]\nname = \"port\"\naction = \"allow\"\nports = [8443]\n\n\
         [[policy]]\nname = \"interns\"\naction = \"deny\"\nrego = \"m.rego\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("m.rego"),
        "package x\ndeny_reason contains \"interns\" if { input.principal == \"spiffe://b/intern\" }\n",
    )
    .unwrap();
    let input = dir.path().join("conn.json");
    std::fs::write(
        &input,
        r#"{"principal": "spiffe://b/staff", "time": "2026-11-23T10:00:00Z"}"#,
    )
    .unwrap();
    let o = policy(&[
        "eval",
        p.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert!(!out.contains("needs an HTTP request"), "{out}");
    assert!(
        out.contains("nets (allow): no match: `source_cidrs` needs the source address"),
        "{out}"
    );
    assert!(
        out.contains("port (allow): no match: `ports` needs the destination port"),
        "{out}"
    );
    assert!(!out.contains("`allow` is not true"), "{out}");
    assert!(
        out.contains("interns (deny): no match: the Rego module permits this request"),
        "{out}"
    );
}
