//! Protocol detection on a connection's first bytes (what any client, or attacker, sends first).
//! Besides not panicking, a verdict must be final: more bytes never change a decided protocol,
//! or the proxy would route a stream differently depending on how the peer split its writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_proxy::detect::{Classified, classify};

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        if let Classified::Done(early) = classify(&data[..cut]) {
            assert_eq!(
                whole,
                Classified::Done(early),
                "the verdict changed after {cut} bytes"
            );
        }
    }
});
