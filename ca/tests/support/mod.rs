//! Test support: a SoftHSM2 token per test in its own temp dir, and running HSM work in a child
//! process (SoftHSM reads `SOFTHSM2_CONF` from the environment at `C_Initialize`, and tests may not
//! change their own environment).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "246810";
pub const SO_PIN: &str = "13579135";

/// A SoftHSM2 token in a temp dir.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub tokens: PathBuf,
    pub pin_file: PathBuf,
    pub label: String,
}

impl SoftHsm {
    /// A fresh, initialised token; `None` (with a loud message) when SoftHSM2 is not installed,
    /// unless `MESHGUARD_REQUIRE_HSM=1`, which turns that into a failure.
    pub fn new(label: &str) -> Option<Self> {
        if !Path::new(MODULE).exists() {
            if std::env::var("MESHGUARD_REQUIRE_HSM").as_deref() == Ok("1") {
                panic!("MESHGUARD_REQUIRE_HSM=1 but {MODULE} is missing: install softhsm2");
            }
            eprintln!(
                "\n!!!!! SKIPPED: {MODULE} is missing; install softhsm2 to run the HSM tests !!!!!\n"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens.display()),
        )
        .unwrap();
        let status = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                PIN,
                "--so-pin",
                SO_PIN,
            ])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "softhsm2-util failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        Some(Self {
            dir,
            conf,
            tokens,
            pin_file,
            label: label.to_owned(),
        })
    }

    /// The RFC 7512 URI of `object` in this token, PIN from the pin file.
    pub fn uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token={};object={object}?module-path={MODULE}&pin-source=file:{}",
            self.label,
            self.pin_file.display()
        )
    }
}

/// Runs the `#[ignore]`d test `name` of this same test binary in a child process with
/// `SOFTHSM2_CONF` (and `envs`) set, and asserts that it passed.
pub fn run_child(name: &str, hsm: &SoftHsm, envs: &[(&str, &str)]) {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env("MESHGUARD_TEST_CHILD", "1")
        .env("MESHGUARD_TEST_URI", hsm.uri("root"))
        .env("MESHGUARD_TEST_TOKENS", &hsm.tokens)
        .env("MESHGUARD_TEST_LABEL", &hsm.label)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child test {name} failed:\n{stdout}\n{stderr}"
    );
}

/// In a child test: the value of a variable the parent set.
pub fn child_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is set by the parent test; run the parent, not this child")
    })
}

/// Logs the application out of the token through a second handle on the module: every session of
/// this process loses its login, as when an HSM restarts under us.
pub fn logout_everyone(uri: &meshguard_ca::key::Pkcs11Uri) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    let ctx = Pkcs11::new(&uri.module_path).unwrap();
    let _already = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    for slot in ctx.get_slots_with_token().unwrap_or_default() {
        if let Ok(session) = ctx.open_ro_session(slot) {
            let _not_logged_in = session.logout();
        }
    }
}

/// A development CA for `bank.example` with its root key in `dir/root.key` (software key: the
/// HSM path is covered by the HSM tests) and default lifetimes; change fields as a test needs.
pub fn software_ca_options(dir: &Path) -> meshguard_ca::InitOptions {
    meshguard_ca::InitOptions {
        trust_domain: meshguard_identity::TrustDomain::parse("bank.example").unwrap(),
        key: format!("file:{}", dir.join("root.key").display())
            .parse()
            .unwrap(),
        algorithm: meshguard_ca::key::KeyAlgorithm::EcdsaP256,
        use_existing_key: false,
        root_ttl: std::time::Duration::from_secs(86400),
        root_spiffe_id: None,
        ttl: meshguard_ca::issue::TtlPolicy::default(),
        pin_from_env: None,
    }
}
