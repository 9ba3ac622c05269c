//! Request-path normalization, the form policy authorizes and the app receives. A normalized path
//! must be a fixed point (normalizing it again changes nothing, or the app could resolve it to
//! something policy never saw) with no dot segments and no empty segments left.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_proxy::http::normalize::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize_path(path) else {
        return;
    };
    let again = normalize_path(&normal).expect("a normalized path is refused on a second pass");
    assert_eq!(again, normal, "normalization is not idempotent");
    if normal != "*" {
        assert!(normal.starts_with('/'));
        let inner = normal.trim_end_matches('/');
        assert!(!inner.contains("//"), "an empty segment survived: {normal}");
        for segment in inner.split('/').skip(1) {
            assert!(
                segment != "." && segment != "..",
                "a dot segment survived: {normal}"
            );
        }
    }
});
