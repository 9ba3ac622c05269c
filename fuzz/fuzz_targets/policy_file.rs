//! A policy file (TOML rules), as an operator writes it and a reload reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_policy::PolicySet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match PolicySet::from_texts([("fuzz.toml", text.to_owned())]) {
        Ok(set) => assert_eq!(
            set.revision().len(),
            64,
            "the revision is not a SHA-256 in hex"
        ),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
