//! Helpers shared by the binary's integration tests.
#![allow(dead_code)] // each test file uses its own part

pub(crate) mod netns;
#[path = "../../proxy/tests/tools/mod.rs"]
pub(crate) mod tools;
