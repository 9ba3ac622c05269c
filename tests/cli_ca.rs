//! `meshguard ca ...` end to end: the real binary, a real SoftHSM2 token per test (its own
//! `SOFTHSM2_CONF`, passed to the child process), and clients nobody here wrote (openssl, curl,
//! pkcs11-tool).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TD: &str = "bank.example";

struct Hsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    pin_file: PathBuf,
}

impl Hsm {
    fn new() -> Option<Self> {
        if !Path::new(MODULE).exists() {
            assert_ne!(
                std::env::var("MESHGUARD_REQUIRE_HSM").as_deref(),
                Ok("1"),
                "MESHGUARD_REQUIRE_HSM=1 but {MODULE} is missing"
            );
            eprintln!(
                "\n!!!!! SKIPPED: {MODULE} is missing; install softhsm2 to run the HSM tests !!!!!\n"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        let init = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                "ca",
                "--pin",
                "1234",
                "--so-pin",
                "5678",
            ])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(init.status.success());
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, "1234\n").unwrap();
        Some(Self {
            dir,
            conf,
            pin_file,
        })
    }

    fn uri(&self) -> String {
        format!(
            "pkcs11:token=ca;object=root?module-path={MODULE}&pin-source=file:{}",
            self.pin_file.display()
        )
    }

    fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }
}

fn meshguard(hsm: Option<&Hsm>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshguard"));
    cmd.args(args);
    if let Some(hsm) = hsm {
        cmd.env("SOFTHSM2_CONF", &hsm.conf);
    }
    cmd.output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn hsm_ca_issues_chains_openssl_accepts() {
    let Some(hsm) = Hsm::new() else { return };
    let state = hsm.dir.path().join("state");
    ok(meshguard(
        Some(&hsm),
        &[
            "ca",
            "init",
            "--state",
            s(&state),
            "--trust-domain",
            TD,
            "--key",
            &hsm.uri(),
        ],
    ));
    let out = hsm.dir.path().join("out");
    let printed = ok(meshguard(
        Some(&hsm),
        &[
            "ca",
            "issue",
            "--state",
            s(&state),
            "--spiffe-id",
            "spiffe://bank.example/ns/a/sa/a",
            "--out",
            s(&out),
            "--dns",
            "a.bank.example",
        ],
    ));
    assert!(
        printed.contains("spiffe://bank.example/ns/a/sa/a"),
        "{printed}"
    );
    let verify = Command::new("openssl")
        .args(["verify", "-x509_strict", "-check_ss_sig", "-CAfile"])
        .args([s(&out.join("bundle.pem")), s(&out.join("svid.pem"))])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The root key as another PKCS#11 client sees it: sensitive, never extractable, local.
    if let Ok(objects) = Command::new("pkcs11-tool")
        .args([
            "--module",
            MODULE,
            "--token-label",
            "ca",
            "--login",
            "--pin",
            "1234",
            "--list-objects",
            "--type",
            "privkey",
        ])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
    {
        let text = String::from_utf8_lossy(&objects.stdout);
        assert!(
            text.contains("sensitive")
                && text.contains("never extractable")
                && text.contains("local"),
            "{text}"
        );
    }

    let status = ok(meshguard(
        Some(&hsm),
        &["ca", "status", "--state", s(&state)],
    ));
    assert!(
        status.contains("HSM (PKCS#11)") && status.contains("available"),
        "{status}"
    );
    assert!(status.contains("issued:        1"), "{status}");
    assert!(!status.contains("1234"), "the PIN never shows");
    let config = std::fs::read_to_string(state.join("config.toml")).unwrap();
    assert!(!config.contains("1234"));
    let bundle = ok(meshguard(
        None,
        &["ca", "bundle", "--state", s(&state), "--format", "spiffe"],
    ));
    assert!(
        bundle.contains("\"x509-svid\"") && bundle.contains("spiffe_sequence"),
        "{bundle}"
    );
    ok(meshguard(
        None,
        &["ca", "audit", "verify", "--state", s(&state)],
    ));

    // With the token gone, status names the cause instead of crashing.
    let away = hsm.dir.path().join("tokens.away");
    std::fs::rename(hsm.tokens(), &away).unwrap();
    let out = meshguard(Some(&hsm), &["ca", "status", "--state", s(&state)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HSM unavailable"), "{text}");
    std::fs::rename(&away, hsm.tokens()).unwrap();
}

#[test]
fn a_software_key_is_labelled_development_only() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = format!("file:{}", dir.path().join("root.key").display());
    let out = meshguard(
        None,
        &[
            "ca",
            "init",
            "--state",
            s(&state),
            "--trust-domain",
            TD,
            "--key",
            &key,
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SOFTWARE"),
        "the log says so"
    );
    ok(out);
    let status = ok(meshguard(None, &["ca", "status", "--state", s(&state)]));
    assert!(
        status.contains("SOFTWARE KEY - DEVELOPMENT ONLY"),
        "{status}"
    );
}

#[test]
fn the_pin_is_never_taken_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("pkcs11:token=ca;object=root?module-path={MODULE}&pin-value=1234");
    let out = meshguard(
        None,
        &[
            "ca",
            "init",
            "--state",
            s(&dir.path().join("st")),
            "--trust-domain",
            TD,
            "--key",
            &key,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pin-source") && !err.contains("1234"), "{err}");
}

#[test]
fn audit_verify_names_the_first_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = format!("file:{}", dir.path().join("root.key").display());
    ok(meshguard(
        None,
        &[
            "ca",
            "init",
            "--state",
            s(&state),
            "--trust-domain",
            TD,
            "--key",
            &key,
        ],
    ));
    for i in 0..5 {
        let id = format!("spiffe://bank.example/w/{i}");
        ok(meshguard(
            None,
            &[
                "ca",
                "issue",
                "--state",
                s(&state),
                "--spiffe-id",
                &id,
                "--out",
                s(&dir.path().join("o")),
            ],
        ));
    }
    let log = state.join("audit.log");
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<String> = original.lines().map(str::to_owned).collect();
    let verify = || meshguard(None, &["ca", "audit", "verify", "--state", s(&state)]);
    assert!(ok(verify()).contains("intact: 5 records"));
    let list = ok(meshguard(None, &["ca", "list", "--state", s(&state)]));
    assert!(list.contains("spiffe://bank.example/w/4"), "{list}");

    let mut edited = lines.clone();
    edited[1] = edited[1].replace("/w/1", "/w/9");
    let mut deleted = lines.clone();
    deleted.remove(2);
    let mut reordered = lines.clone();
    reordered.swap(3, 4);
    let truncated = lines[..4].to_vec();
    for (what, tampered, expected) in [
        ("edit", edited, "line 2"),
        ("delete", deleted, "line 3"),
        ("reorder", reordered, "line 4"),
        ("truncate", truncated, "line 5"),
    ] {
        std::fs::write(
            &log,
            tampered
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )
        .unwrap();
        let out = verify();
        assert_eq!(out.status.code(), Some(1), "{what}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(expected), "{what}: {text}");
    }
    std::fs::write(&log, &original).unwrap();
    ok(verify());
}

// === the issuance API with curl ===

struct Serve {
    child: Child,
    addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(hsm: &Hsm, state: &Path) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args([
            "ca",
            "serve",
            "--state",
            s(state),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected: {line}"))
        .to_owned();
    Serve { child, addr }
}

/// A key and CSR made by openssl, asking for `id`.
fn openssl_csr(dir: &Path, name: &str, id: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/O=w",
        ])
        .args([
            "-keyout",
            s(&dir.join(format!("{name}.key"))),
            "-addext",
            &format!("subjectAltName=URI:{id}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_str(value: &str) -> String {
    format!(
        "\"{}\"",
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// POSTs with curl; returns (HTTP status, body); status 0 when no HTTP response came.
fn curl(
    addr: &str,
    path: &str,
    body: &str,
    bundle: &Path,
    client: Option<(&Path, &Path)>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-w",
        "\n%{http_code}",
        "--cacert",
        s(bundle),
        "-d",
        body,
    ]);
    if let Some((cert, key)) = client {
        cmd.args(["--cert", s(cert), "--key", s(key)]);
    }
    let out = cmd.arg(format!("https://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn field(json: &str, name: &str) -> String {
    let at = json
        .find(&format!("\"{name}\":\""))
        .unwrap_or_else(|| panic!("{name} not in {json}"))
        + name.len()
        + 4;
    let end = json[at..].find('"').unwrap() + at;
    json[at..end].replace("\\n", "\n")
}

#[test]
fn the_api_bootstraps_renews_refuses_and_survives_the_hsm_going_away() {
    let Some(hsm) = Hsm::new() else { return };
    let dir = hsm.dir.path();
    let state = dir.join("state");
    ok(meshguard(
        Some(&hsm),
        &[
            "ca",
            "init",
            "--state",
            s(&state),
            "--trust-domain",
            TD,
            "--key",
            &hsm.uri(),
        ],
    ));
    let bundle = dir.join("bundle.pem");
    std::fs::write(
        &bundle,
        ok(meshguard(None, &["ca", "bundle", "--state", s(&state)])),
    )
    .unwrap();
    let server = serve(&hsm, &state);
    let id = "spiffe://bank.example/ns/ledger/sa/ledger";
    let token = |id: &str| {
        ok(meshguard(
            None,
            &[
                "ca",
                "token",
                "create",
                "--state",
                s(&state),
                "--spiffe-id",
                id,
            ],
        ))
        .trim()
        .to_owned()
    };

    // GET the bundle.
    let pem = Command::new("curl")
        .args(["-s", "--cacert", s(&bundle)])
        .arg(format!("https://{}/v1/bundle", server.addr))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&pem.stdout),
        std::fs::read_to_string(&bundle).unwrap()
    );

    // Bootstrap with a token; the key stays here, only the CSR travels.
    let csr = openssl_csr(dir, "w1", id);
    let t1 = token(id);
    let body = format!("{{\"token\":{},\"csr\":{}}}", json_str(&t1), json_str(&csr));
    let (code, resp) = curl(&server.addr, "/v1/sign", &body, &bundle, None);
    assert_eq!(code, 200, "{resp}");
    std::fs::write(dir.join("w1.pem"), field(&resp, "svid")).unwrap();
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-check_ss_sig",
            "-CAfile",
            s(&bundle),
            s(&dir.join("w1.pem")),
        ])
        .output()
        .unwrap();
    assert!(verify.status.success());

    // Replayed token; a token for another ID; a malformed CSR.
    let (code, resp) = curl(&server.addr, "/v1/sign", &body, &bundle, None);
    assert_eq!(
        (code, field(&resp, "code")),
        (403, "token_used".into()),
        "{resp}"
    );
    let t2 = token("spiffe://bank.example/ns/other");
    let other_body = format!("{{\"token\":{},\"csr\":{}}}", json_str(&t2), json_str(&csr));
    let (code, resp) = curl(&server.addr, "/v1/sign", &other_body, &bundle, None);
    assert_eq!(
        (code, field(&resp, "code")),
        (403, "id_mismatch".into()),
        "{resp}"
    );
    let garbage = format!("{{\"token\":{},\"csr\":\"garbage\"}}", json_str(&t2));
    let (code, resp) = curl(&server.addr, "/v1/sign", &garbage, &bundle, None);
    assert_eq!(
        (code, field(&resp, "code")),
        (400, "malformed_csr".into()),
        "{resp}"
    );
    assert!(field(&resp, "error").contains("CSR"), "a sentence: {resp}");

    // Renewal over mTLS with the current SVID and a new key; another ID is refused.
    let renew_body = |csr: &str| format!("{{\"csr\":{}}}", json_str(csr));
    let (cert, key) = (dir.join("w1.pem"), dir.join("w1.key"));
    let client = Some((cert.as_path(), key.as_path()));
    let (code, resp) = curl(
        &server.addr,
        "/v1/renew",
        &renew_body(&openssl_csr(dir, "w2", id)),
        &bundle,
        client,
    );
    assert_eq!(code, 200, "{resp}");
    let admin_csr = openssl_csr(dir, "w3", "spiffe://bank.example/ns/admin");
    let (code, resp) = curl(
        &server.addr,
        "/v1/renew",
        &renew_body(&admin_csr),
        &bundle,
        client,
    );
    assert_eq!(
        (code, field(&resp, "code")),
        (403, "id_mismatch".into()),
        "{resp}"
    );
    let (code, resp) = curl(
        &server.addr,
        "/v1/renew",
        &renew_body(&openssl_csr(dir, "w4", id)),
        &bundle,
        None,
    );
    assert_eq!(
        (code, field(&resp, "code")),
        (401, "no_client_certificate".into()),
        "{resp}"
    );

    // A certificate from another CA (same trust domain name, another root) fails the handshake.
    let other = dir.join("other");
    let other_key = format!("file:{}", dir.join("other.key").display());
    ok(meshguard(
        None,
        &[
            "ca",
            "init",
            "--state",
            s(&other.join("st")),
            "--trust-domain",
            TD,
            "--key",
            &other_key,
        ],
    ));
    ok(meshguard(
        None,
        &[
            "ca",
            "issue",
            "--state",
            s(&other.join("st")),
            "--spiffe-id",
            id,
            "--out",
            s(&other),
        ],
    ));
    let foreign = Some((other.join("svid.pem"), other.join("svid.key")));
    let foreign = foreign.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let (code, _) = curl(
        &server.addr,
        "/v1/renew",
        &renew_body(&openssl_csr(dir, "w5", id)),
        &bundle,
        foreign,
    );
    assert_eq!(code, 0, "no HTTP response after a refused handshake");

    // The HSM goes away: issuance answers "HSM unavailable"; it comes back: issuance resumes.
    let away = dir.join("tokens.away");
    std::fs::rename(hsm.tokens(), &away).unwrap();
    let (code, resp) = curl(
        &server.addr,
        "/v1/renew",
        &renew_body(&openssl_csr(dir, "w6", id)),
        &bundle,
        client,
    );
    assert_eq!(
        (code, field(&resp, "code")),
        (503, "hsm_unavailable".into()),
        "{resp}"
    );
    assert!(
        field(&resp, "error").starts_with("HSM unavailable"),
        "{resp}"
    );
    std::fs::rename(&away, hsm.tokens()).unwrap();
    let mut resumed = false;
    for _ in 0..100 {
        let (code, _) = curl(
            &server.addr,
            "/v1/renew",
            &renew_body(&openssl_csr(dir, "w7", id)),
            &bundle,
            client,
        );
        if code == 200 {
            resumed = true;
            break;
        }
        // Reconnects are paced (200 ms) so a dead HSM is not hammered; poll until then.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(resumed, "issuance resumed without a restart");

    // Every decision is in the trail, which verifies.
    let list = ok(meshguard(None, &["ca", "list", "--state", s(&state)]));
    for code in [
        "token_used",
        "id_mismatch",
        "malformed_csr",
        "no_client_certificate",
        "invalid_client_certificate",
        "hsm_unavailable",
    ] {
        assert!(list.contains(code), "{code} not in\n{list}");
    }
    assert!(list.contains("bootstrap") && list.contains("renew"));
    ok(meshguard(
        None,
        &["ca", "audit", "verify", "--state", s(&state)],
    ));
}

#[test]
fn the_pin_can_come_from_the_environment() {
    let Some(hsm) = Hsm::new() else { return };
    let state = hsm.dir.path().join("state");
    let uri = format!("pkcs11:token=ca;object=root?module-path={MODULE}");
    let args = [
        "ca",
        "init",
        "--state",
        s(&state),
        "--trust-domain",
        TD,
        "--key",
        &uri,
    ];
    let without = meshguard(Some(&hsm), &args);
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("MESHGUARD_HSM_PIN"));
    let with = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(args)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env("MESHGUARD_HSM_PIN", "1234")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&with.stderr).contains("1234"),
        "never logged"
    );
    ok(with);
}

#[test]
fn ca_revoke_records_the_revocation_and_needs_a_target_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = format!("file:{}", dir.path().join("root.key").display());
    ok(meshguard(
        None,
        &[
            "ca",
            "init",
            "--state",
            s(&state),
            "--trust-domain",
            TD,
            "--key",
            &key,
        ],
    ));
    let id = "spiffe://bank.example/ns/web/sa/frontend";
    ok(meshguard(
        None,
        &[
            "ca",
            "issue",
            "--state",
            s(&state),
            "--spiffe-id",
            id,
            "--out",
            s(&dir.path().join("o")),
        ],
    ));
    let no_reason = meshguard(
        None,
        &["ca", "revoke", "--state", s(&state), "--spiffe-id", id],
    );
    assert!(!no_reason.status.success());
    let no_target = meshguard(
        None,
        &["ca", "revoke", "--state", s(&state), "--reason", "x"],
    );
    assert!(!no_target.status.success());
    let out = ok(meshguard(
        None,
        &[
            "ca",
            "revoke",
            "--state",
            s(&state),
            "--spiffe-id",
            id,
            "--reason",
            "INC-11",
        ],
    ));
    assert!(out.contains("revoked 1 certificate(s)"), "{out}");
    let revoked = std::fs::read_to_string(state.join("revoked.json")).unwrap();
    assert!(
        revoked.contains(id) && revoked.contains("INC-11"),
        "{revoked}"
    );
    let list = ok(meshguard(None, &["ca", "list", "--state", s(&state)]));
    assert!(list.contains("revoke") && list.contains("INC-11"), "{list}");
    assert!(
        ok(meshguard(
            None,
            &["ca", "audit", "verify", "--state", s(&state)]
        ))
        .contains("intact")
    );
}
