//! The CA's issuance API bodies (`POST /v1/sign`, `POST /v1/renew`) down to the CSR inside them:
//! the JSON a workload or an attacker sends before any token or certificate is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_ca::issue::parse_csr;
use meshguard_ca::serve::{RenewRequest, SignRequest, decode_body};
use meshguard_identity::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let csr = if selector % 2 == 0 {
        decode_body::<SignRequest>(body).map(|r| r.csr)
    } else {
        decode_body::<RenewRequest>(body).map(|r| r.csr)
    };
    match csr {
        Ok(csr) => {
            if let Ok(parsed) = parse_csr(csr.as_bytes()) {
                assert_eq!(
                    SpiffeId::parse(parsed.spiffe_id.as_str()).ok(),
                    Some(parsed.spiffe_id)
                );
            }
        }
        Err(message) => assert!(message.starts_with("the request body is not the expected JSON")),
    }
});
