//! Real clients the interop tests drive (curl, openssl, nc, h2load): present, or a loud skip, or,
//! under `MESHGUARD_REQUIRE_TOOLS=1` (CI, scripts/test), a failure. An interop test that quietly
//! passed because curl was missing proved nothing.
#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

/// `true` when every program in `programs` is on `PATH`; otherwise a SKIPPED banner naming `test`
/// and `false`, or a panic when `MESHGUARD_REQUIRE_TOOLS=1`.
pub fn require(test: &str, programs: &[&str]) -> bool {
    let required = std::env::var("MESHGUARD_REQUIRE_TOOLS").as_deref() == Ok("1");
    require_with(test, programs, required)
}

/// [`require`] with the environment read by the caller.
pub fn require_with(test: &str, programs: &[&str], required: bool) -> bool {
    let Some(missing) = programs.iter().find(|program| !on_path(program)) else {
        return true;
    };
    let why = format!("`{missing}` is not installed (scripts/install-deps installs it)");
    assert!(
        !required,
        "MESHGUARD_REQUIRE_TOOLS=1 but {test} cannot run: {why}"
    );
    eprintln!(
        "\n!!!!! SKIPPED {test}: {why}. Set MESHGUARD_REQUIRE_TOOLS=1 to make this a failure. !!!!!\n"
    );
    false
}

/// Whether `program` is a file in one of `PATH`'s directories.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file()))
    })
}
