//! Path normalization never panics, and its output is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_proxy::http::normalize::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = normalize_path(path) {
        let again = normalize_path(&normal).map(|p| p.into_owned());
        assert_eq!(again.as_deref(), Ok(&*normal));
    }
});
