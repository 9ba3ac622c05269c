//! The bank demo behind `meshguard demo`: it builds a small bank on 127.0.0.1 (a CA whose root key
//! lives in a SoftHSM2 token, apps behind `meshguard proxy` sidecars, a gateway for a legacy host),
//! sends a scripted set of requests and prints, from the real responses and logs, who called what,
//! whether it was allowed and why. It exits non-zero when anything does not behave as scripted.
//!
//! # Layout
//! - [`process`]: child processes of the real `meshguard` binary; [`ca`]: the CA and its token.
//! - [`apps`]: the bank's small HTTP apps, in process; [`client`]: their HTTP client.
//! - [`topology`]: sidecar configs rendered from `templates/`, started and awaited.
//! - [`script`]: the scripted requests; [`checks`]: curl and the policy engine with a fixed clock;
//!   [`perf`]: the closing measurement; [`logs`] reads access logs; [`transcript`] prints.

#![forbid(unsafe_code)]

pub mod apps;
pub mod ca;
pub mod checks;
pub mod client;
pub mod logs;
pub mod perf;
pub mod process;
mod run;
pub mod script;
pub mod topology;
pub mod transcript;

pub use run::{Options, Verdict, run};
