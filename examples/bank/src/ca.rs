//! The demo's CA: a SoftHSM2 token made in the demo's own directory (its own `SOFTHSM2_CONF`), the
//! root key generated inside it by `meshguard ca init`, and `meshguard ca serve` for the sidecars.
//! Without libsofthsm2 the CA falls back to a software key, and says so.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::process::{Child, Meshguard};
use crate::transcript::Transcript;

/// The trust domain of the demo bank.
pub const TRUST_DOMAIN: &str = "bank.example";

/// Where libsofthsm2 is installed on the usual distributions.
const SOFTHSM_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

/// How the root key is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKey {
    /// Inside a SoftHSM2 token, through PKCS#11.
    Hsm { module: PathBuf },
    /// A PKCS#8 file: development only.
    Software,
}

/// A running CA.
#[derive(Debug)]
pub struct Ca {
    /// The state directory.
    pub state: PathBuf,
    /// `https://127.0.0.1:PORT` of the issuance API.
    pub url: String,
    /// The trust bundle (PEM) the sidecars use to authenticate the CA.
    pub bundle: PathBuf,
    /// HSM or software.
    pub root_key: RootKey,
    serve: Child,
}

/// SVID lifetime the demo CA grants: short, so every sidecar renews during the run. The CA
/// backdates `not_before` by a tenth of it (4 s), so renewal falls about 18 s after issuance.
pub const SVID_TTL: &str = "40s";

/// Makes the token (when SoftHSM2 is there), initialises the CA and starts its API.
/// `software_key` skips the HSM on purpose (to show the fallback).
pub fn start(
    mg: &mut Meshguard,
    dir: &Path,
    software_key: bool,
    t: &mut Transcript,
) -> anyhow::Result<Ca> {
    let state = dir.join("ca");
    let module = if software_key { None } else { softhsm_module() };
    let key_uri = match module {
        Some(module) if which("softhsm2-util") => {
            let uri = make_token(mg, dir, &module)?;
            t.note(&format!(
                "SoftHSM2 token `meshguard-demo` created in {}",
                dir.join("softhsm").display()
            ));
            (uri, RootKey::Hsm { module })
        }
        found => {
            t.warn(&format!(
                "libsofthsm2 {} : falling back to a SOFTWARE root key (development only; \
                 install softhsm2 for the HSM-rooted CA)",
                match (software_key, found.is_none()) {
                    (true, _) => "not used (--software-key)",
                    (false, true) => "not found",
                    (false, false) => "found but softhsm2-util is missing",
                }
            ));
            (
                format!("file:{}", dir.join("root-key.pk8").display()),
                RootKey::Software,
            )
        }
    };
    let (key_uri, root_key) = key_uri;
    let out = mg.run(&[
        "ca",
        "init",
        "--state",
        &path(&state),
        "--trust-domain",
        TRUST_DOMAIN,
        "--key",
        &key_uri,
        "--default-ttl",
        SVID_TTL,
        "--max-ttl",
        "1h",
    ])?;
    for line in out.lines() {
        t.detail(line);
    }
    let bundle = dir.join("bundle.pem");
    let pem = mg.run(&["ca", "bundle", "--state", &path(&state)])?;
    std::fs::write(&bundle, pem).with_context(|| format!("writing {}", bundle.display()))?;

    let mut serve = mg.spawn(
        "ca-serve",
        &[
            "ca",
            "serve",
            "--state",
            &path(&state),
            "--listen",
            "127.0.0.1:0",
        ],
    )?;
    let addr = read_listen_line(&mut serve)?;
    let url = format!("https://{addr}");
    t.note(&format!(
        "CA issuance API listening on {url} (TLS with its own certificate)"
    ));
    Ok(Ca {
        state,
        url,
        bundle,
        root_key,
        serve,
    })
}

impl Ca {
    /// A one-time bootstrap token bound to `spiffe_id`, written to `file` (mode 0600).
    pub fn token(&self, mg: &Meshguard, spiffe_id: &str, file: &Path) -> anyhow::Result<()> {
        let token = mg.run(&[
            "ca",
            "token",
            "create",
            "--state",
            &path(&self.state),
            "--spiffe-id",
            spiffe_id,
            "--ttl",
            "10m",
        ])?;
        write_secret(file, token.trim())
    }

    /// Offline issuance (`meshguard ca issue`) into `out`: svid.pem, svid.key, bundle.pem.
    pub fn issue(&self, mg: &Meshguard, spiffe_id: &str, out: &Path) -> anyhow::Result<String> {
        mg.run(&[
            "ca",
            "issue",
            "--state",
            &path(&self.state),
            "--spiffe-id",
            spiffe_id,
            "--out",
            &path(out),
        ])
    }

    /// `meshguard ca audit verify`: (exit success, its output).
    pub fn audit_verify(&self, mg: &Meshguard) -> anyhow::Result<(bool, String)> {
        let output = mg.output(&["ca", "audit", "verify", "--state", &path(&self.state)])?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), text.trim().to_owned()))
    }

    /// The audit trail file.
    pub fn audit_log(&self) -> PathBuf {
        self.state.join("audit.log")
    }

    /// Audit records (event, outcome, SPIFFE ID) read from the trail.
    pub fn audit_events(&self) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(self.audit_log()).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|v| {
                let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
                (field("event"), field("outcome"), field("spiffe_id"))
            })
            .collect()
    }

    /// Stops the API server.
    pub fn stop(&mut self) {
        self.serve.stop(Duration::from_secs(2));
    }
}

fn softhsm_module() -> Option<PathBuf> {
    SOFTHSM_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Creates a SoftHSM2 token directory and config in `dir`, initialises a token with fresh PINs,
/// and returns the RFC 7512 URI of the root key to generate in it.
fn make_token(mg: &mut Meshguard, dir: &Path, module: &Path) -> anyhow::Result<String> {
    let tokens = dir.join("softhsm").join("tokens");
    std::fs::create_dir_all(&tokens).with_context(|| format!("creating {}", tokens.display()))?;
    let conf = dir.join("softhsm").join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    mg.set_env("SOFTHSM2_CONF", &path(&conf));

    let pin = random_hex(8)?;
    let so_pin = random_hex(8)?;
    let status = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "meshguard-demo",
            "--so-pin",
            &so_pin,
            "--pin",
            &pin,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .stdout(std::process::Stdio::null())
        .output()
        .context("cannot run softhsm2-util")?;
    if !status.status.success() {
        bail!(
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    let pin_file = dir.join("softhsm").join("user.pin");
    write_secret(&pin_file, &pin)?;
    Ok(format!(
        "pkcs11:token=meshguard-demo;object=demo-root?module-path={}&pin-source=file:{}",
        module.display(),
        pin_file.display()
    ))
}

/// Reads `listening on ADDR` from `meshguard ca serve`'s stdout.
fn read_listen_line(serve: &mut Child) -> anyhow::Result<String> {
    let stdout = serve
        .take_stdout()
        .context("the CA server's stdout is not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    match line.trim().strip_prefix("listening on ") {
        Some(addr) => Ok(addr.to_owned()),
        None => bail!(
            "`meshguard ca serve` did not start: {}",
            serve.stderr_tail(5)
        ),
    }
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a secret file readable by its owner only.
pub fn write_secret(file: &Path, content: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("writing {}", file.display()))?;
    std::io::Write::write_all(&mut f, content.as_bytes())?;
    Ok(())
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> String {
    p.display().to_string()
}
