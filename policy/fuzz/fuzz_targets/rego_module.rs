//! Rego module text -> refused or compiled, never a panic (see `meshguard_policy_fuzz::rego_module`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_policy_fuzz::rego_module(data));
