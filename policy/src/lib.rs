//! meshguard's authorization: it compiles policy files into an immutable, indexed matcher and
//! decides each connection and request, with the policy and reasons that decided it. It does no
//! network I/O and takes the time as an input, so every decision can be replayed.
//!
//! # Layout
//! - [`spec`]: the TOML policy file format, parsed into validated types; [`pattern`], [`hours`]:
//!   the field types. [`compile`](PolicySet::compile) turns [`Sources`] into a [`PolicySet`].
//! - [`policy`] matches one policy field by field; [`set`] holds the decision procedure.
//! - [`rego`]: Rego v1 modules on regorus's bytecode VM; `rego_text` pre-checks their source.
//! - [`request`] and [`decision`]: what goes in and what comes out.
//! - [`decision_log`]: JSON lines for denies, audits and dry-runs.
//! - [`lockout`]: continuous verification (temporary blocks after repeated failures).
//! - [`break_glass`]: time-boxed emergency grants.
//! - [`store`]: the live revision, swapped atomically on reload; [`sources`] and [`watch`] are the
//!   only modules that touch the file system.
//! - [`cases`] and [`replay`]: what `meshguard policy test` and `replay` run.

#![forbid(unsafe_code)]

pub mod break_glass;
pub mod cases;
mod compile;
pub mod decision;
pub mod decision_log;
mod error;
pub mod hours;
pub mod lockout;
pub mod pattern;
pub mod policy;
pub mod rego;
mod rego_text;
pub mod replay;
pub mod request;
pub mod set;
pub mod sources;
pub mod spec;
pub mod store;
pub mod watch;

pub use break_glass::{BreakGlass, Grant};
pub use decision::{Decision, DefaultMode, DryRun, Outcome, Reasons};
pub use decision_log::{DecisionLog, DecisionRecord};
pub use error::{Location, PolicyError};
pub use lockout::{Lockout, LockoutConfig, LockoutLimits};
pub use pattern::Pattern;
pub use policy::{Miss, Policy};
pub use request::{Headers, Request, RequestDoc};
pub use set::{PolicySet, Verdict};
pub use sources::{SourceFile, Sources};
pub use spec::Action;
pub use store::{PolicyStore, Reloaded};
pub use watch::{PolicyWatcher, watch};
