//! A SPIFFE trust bundle as a JWK Set (the federation format, fetched from a foreign trust
//! domain's endpoint). What parses must survive a round trip through `to_spiffe_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_identity::{TrustBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::parse("bank.example").expect("a valid trust domain");
    let Ok(bundle) = TrustBundle::from_spiffe_json(td.clone(), data) else {
        return;
    };
    let json = bundle
        .to_spiffe_json()
        .expect("a parsed bundle does not serialize");
    let again = TrustBundle::from_spiffe_json(td, json.as_bytes())
        .expect("a bundle's own JWK Set does not parse");
    assert_eq!(again.roots(), bundle.roots());
    assert_eq!(again.sequence(), bundle.sequence());
    assert_eq!(again.refresh_hint(), bundle.refresh_hint());
});
