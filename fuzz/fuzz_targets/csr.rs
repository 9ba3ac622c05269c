//! CSR handling (PEM or DER): signature check, SAN rules, the one SPIFFE ID asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_ca::Refusal;
use meshguard_ca::issue::parse_csr;

fuzz_target!(|data: &[u8]| {
    match parse_csr(data) {
        Ok(csr) => assert!(csr.spiffe_id.as_str().starts_with("spiffe://")),
        Err(refusal) => {
            assert!(matches!(
                refusal,
                Refusal::MalformedCsr(_) | Refusal::BadSpiffeId(_)
            ));
            assert!(!refusal.to_string().is_empty());
        }
    }
});
