//! A trust bundle in PEM, as operators and the CA's `/v1/bundle` hand it out. What parses must
//! survive a round trip through `to_pem` with the same roots.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_identity::{TrustBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::parse("bank.example").expect("a valid trust domain");
    let Ok(bundle) = TrustBundle::from_pem(td.clone(), data) else {
        return;
    };
    let again = TrustBundle::from_pem(td, bundle.to_pem().as_bytes())
        .expect("a bundle's own PEM does not parse");
    assert_eq!(again.roots(), bundle.roots());
});
