//! Protocol detection never panics, and a verdict on a prefix is never contradicted by more bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_proxy::detect::{Classified, classify};

fuzz_target!(|data: &[u8]| {
    let full = classify(data);
    for n in 0..data.len() {
        if let Classified::Done(early) = classify(&data[..n]) {
            assert_eq!(
                Classified::Done(early),
                full,
                "verdict changed after {n} bytes"
            );
            break;
        }
    }
});
