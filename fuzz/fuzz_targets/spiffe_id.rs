//! SPIFFE IDs and trust domains, from peer certificates, CSRs and operator files. A parsed ID
//! must print back to a string that parses to the same ID, in the same trust domain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        let again = SpiffeId::parse(id.as_str()).expect("a printed SPIFFE ID does not parse");
        assert_eq!(again, id);
        assert!(id.is_member_of(&id.trust_domain()));
        assert!(id.as_str().starts_with("spiffe://"));
    }
    if let Ok(td) = TrustDomain::parse(text) {
        let again = TrustDomain::parse(td.as_str()).expect("a printed trust domain does not parse");
        assert_eq!(again, td);
    }
});
