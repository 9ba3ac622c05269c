//! Policy file text -> compiled set: must never panic (see `meshguard_policy_fuzz::policy_file`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_policy_fuzz::policy_file(data));
