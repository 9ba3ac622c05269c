//! A stable-toolchain run of the fuzz harnesses: every seed, then a fixed number of deterministic
//! mutations of the seeds (byte flips, token inserts, cuts, splices). It finds shallow panics
//! without libFuzzer; `cargo +nightly fuzz run <target>` searches far deeper.

use std::path::{Path, PathBuf};

/// Tokens that tend to reach new parser states in TOML and Rego.
#[rustfmt::skip]
const TOKENS: &[&str] = &[
    "\"", "'", "'''", "\"\"\"", "[", "]", "[[", "]]", "{", "}", "=", ",", "\n", "\r\n", "\t", "#",
    "*", ":", "/", "-", ".", "\\", "\\u", "\\U0010FFFF", "\u{0}", "\u{1F600}", "é", "1e999",
    "-0", "65536", "24:00", "23:59", "00:00", "Fri-Mon", "Europe/London", "spiffe://", "*/sa/",
    "not_", "default", "allow", "deny", "audit", "allow-authenticated", "enforce", "true",
    "[[policy]]", "[[grant]]", "[[case]]", "hours = {", "rego", "m.rego", "::", "/33", "::ffff:",
    "package", "import rego.v1", "import future.keywords", " if ", " contains ", " in ", "some",
    "every", ":=", "==", "not ", "with", "time.now_ns()", "input.", "data.", "deny_reason",
    "sprintf(", "count([", "numbers.range(1, 100000)", "walk(", "regex.match(", "glob.match(",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: fixed seed, so a failure reproduces.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                data.splice(at..at, token.iter().copied());
            }
            2 => {
                let end = (at + rng.below(64)).min(data.len());
                data.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(64)).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
        }
    }
    data
}

fn run(target: &str, iterations: usize, harness: fn(&[u8])) {
    let seeds = seeds(target);
    for seed in &seeds {
        harness(seed);
    }
    let mut rng = Rng(0x6d65_7368_6775_6172); // "meshguar"
    for i in 0..iterations {
        let input = mutate(&mut rng, &seeds);
        // On a panic, the input is printed so it can be saved as a seed or a regression test.
        let result = std::panic::catch_unwind(|| harness(&input));
        if let Err(panic) = result {
            let text = String::from_utf8_lossy(&input);
            eprintln!("{target}: iteration {i} panicked on input:\n{text:?}");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn policy_file_never_panics() {
    run("policy_file", 4000, meshguard_policy_fuzz::policy_file);
}

#[test]
fn rego_module_never_panics() {
    run("rego_module", 1500, meshguard_policy_fuzz::rego_module);
}
