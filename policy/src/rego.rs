//! Rego policies, run in process by regorus's bytecode VM (RVM). A module is compiled once, off the
//! request path, into a shared `Program`; evaluation takes a VM from a small pool (one per worker
//! in practice) so workers never share one. Only Rego v1 is accepted: regorus in v0 mode loads a
//! module without `import future.keywords.if` with a warning and `allow` true for every input.
//!
//! Entry points: `allow` (boolean) and `deny_reason` (set of strings); a module needs at least one.
//! The `input` document is [`crate::RequestDoc`]'s JSON: `principal`, `source_ip`, `port`, `sni`,
//! `method`, `host`, `path`, `headers` (lower-case names) and `time` (RFC 3339, the proxy's clock;
//! use `time.parse_rfc3339_ns(input.time)` with `time.clock`/`time.weekday`, never `time.now_ns`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::{Engine, Value};

use crate::decision::Reasons;
use crate::request::Request;
use crate::{Location, PolicyError};

/// Instruction budget per evaluation: a runaway policy fails closed instead of stalling a worker.
const MAX_INSTRUCTIONS: usize = 250_000;
/// VMs kept for reuse; more concurrent evaluations than this build a fresh VM.
const POOL_SIZE: usize = 64;

/// What a Rego module decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegoResult {
    pub allow: bool,
    pub deny_reasons: Reasons,
}

/// A compiled Rego module and a pool of VMs over its program.
pub struct RegoPolicy {
    path: PathBuf,
    package: String,
    program: Arc<Program>,
    allow_entry: Option<usize>,
    deny_entry: Option<usize>,
    pool: Mutex<Vec<RegoVM>>,
}

impl fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegoPolicy")
            .field("path", &self.path)
            .field("package", &self.package)
            .field("allow", &self.allow_entry.is_some())
            .field("deny_reason", &self.deny_entry.is_some())
            .finish_non_exhaustive()
    }
}

impl RegoPolicy {
    /// Parses and compiles a Rego v1 module. `path` is used in errors only.
    pub fn compile(path: &Path, source: &str) -> Result<Self, PolicyError> {
        let name = path.display().to_string();
        let fail = |line: usize, message: String| PolicyError::Rego {
            at: Location {
                file: name.clone(),
                line,
                column: 1,
            },
            message,
        };
        if let Some(line) = source
            .lines()
            .position(|l| uncommented(l).contains("time.now_ns"))
        {
            return Err(fail(
                line + 1,
                "the module calls time.now_ns; decisions must be replayable, so read the proxy's \
                 clock from input.time (time.parse_rfc3339_ns(input.time))"
                    .into(),
            ));
        }
        let mut engine = Engine::new();
        let package = match engine.add_policy(name.clone(), source.to_owned()) {
            Ok(package) => package,
            Err(v1_error) => return Err(refuse_v0_or_report(&name, source, &v1_error.to_string())),
        };
        let declared = |rule: &str| {
            engine
                .has_declared_rule_rooted_at(&name, rule)
                .unwrap_or(false)
        };
        let mut entries: Vec<String> = Vec::new();
        let (has_allow, has_deny) = (declared("allow"), declared("deny_reason"));
        if has_allow {
            entries.push(format!("{package}.allow"));
        }
        if has_deny {
            entries.push(format!("{package}.deny_reason"));
        }
        let Some(first) = entries.first() else {
            return Err(fail(
                1,
                "the module defines neither `allow` nor `deny_reason`; meshguard \
                evaluates those two rules"
                    .into(),
            ));
        };
        let compiled = engine
            .compile_with_entrypoint(&first.as_str().into())
            .map_err(|e| fail(1, format!("cannot compile the module: {e}")))?;
        let entry_refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let program = Compiler::compile_from_policy(&compiled, &entry_refs)
            .map_err(|e| fail(1, format!("cannot compile the module to RVM bytecode: {e}")))?;
        let rego = Self {
            path: path.to_owned(),
            package,
            program,
            allow_entry: has_allow.then_some(0),
            deny_entry: has_deny.then_some(usize::from(has_allow)),
            pool: Mutex::new(Vec::new()),
        };
        Ok(rego)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The module's package, e.g. `data.meshguard.key_access`.
    pub fn package(&self) -> &str {
        &self.package
    }

    /// Evaluates the module for `req`. `Err` carries the evaluation error; callers fail closed.
    ///
    /// With `allow_decides`, a true `allow` is the answer and `deny_reason` is evaluated only to
    /// explain a false one (half the work on the common, allowed path). Otherwise both run and a
    /// non-empty `deny_reason` always counts.
    pub fn evaluate(&self, req: &Request<'_>, allow_decides: bool) -> Result<RegoResult, String> {
        let mut vm = self.take_vm();
        vm.set_input(input_value(req));
        let result = self.run(&mut vm, allow_decides);
        self.put_vm(vm);
        result
    }

    fn run(&self, vm: &mut RegoVM, allow_decides: bool) -> Result<RegoResult, String> {
        // A module without `allow` permits unless it gives a deny reason.
        let mut result = RegoResult {
            allow: self.allow_entry.is_none(),
            ..RegoResult::default()
        };
        if let Some(index) = self.allow_entry {
            result.allow = match vm
                .execute_entry_point_by_index(index)
                .map_err(|e| e.to_string())?
            {
                Value::Bool(b) => b,
                Value::Undefined => false,
                other => return Err(format!("`allow` must be a boolean, got {other}")),
            };
            if result.allow && allow_decides {
                return Ok(result);
            }
        }
        if let Some(index) = self.deny_entry {
            match vm
                .execute_entry_point_by_index(index)
                .map_err(|e| e.to_string())?
            {
                Value::Undefined => {}
                Value::Set(set) => {
                    for reason in set.iter() {
                        match reason {
                            Value::String(s) => result.deny_reasons.push(Arc::from(&**s)),
                            other => result.deny_reasons.push(Arc::from(other.to_string())),
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "`deny_reason` must be a set of strings, got {other}"
                    ));
                }
            }
        }
        Ok(result)
    }

    fn take_vm(&self) -> RegoVM {
        let pooled = self.pool.lock().ok().and_then(|mut pool| pool.pop());
        pooled.unwrap_or_else(|| {
            let mut vm = RegoVM::new();
            vm.load_program(self.program.clone());
            vm.set_max_instructions(MAX_INSTRUCTIONS);
            // A failing builtin is an error, not `undefined`: a `not f(x)` in a deny rule must not
            // turn an error into a pass.
            vm.set_strict_builtin_errors(true);
            vm
        })
    }

    fn put_vm(&self, vm: RegoVM) {
        let Ok(mut pool) = self.pool.lock() else {
            return;
        };
        if pool.len() < POOL_SIZE {
            pool.push(vm);
        }
    }
}

/// A module that fails to parse as v1 but parses as v0 is refused as v0; otherwise the v1 error
/// is reported.
fn refuse_v0_or_report(name: &str, source: &str, v1_error: &str) -> PolicyError {
    let (line, column) = regorus_position(v1_error);
    let at = Location {
        file: name.to_owned(),
        line,
        column,
    };
    let mut v0 = Engine::new();
    v0.set_rego_v0(true);
    if v0.add_policy(name.to_owned(), source.to_owned()).is_ok() {
        return PolicyError::Rego {
            at,
            message:
                "this module is Rego v0 syntax, which meshguard refuses (in v0 a rule without \
                `if` can silently allow everything); rewrite it as Rego v1: `allow if { ... }`, \
                `deny_reason contains msg if { ... }`"
                    .into(),
        };
    }
    PolicyError::Rego {
        at,
        message: format!("not valid Rego v1: {}", first_line(v1_error)),
    }
}

/// Regorus errors start `file:line:col: error: ...`; pull the numbers out.
fn regorus_position(error: &str) -> (usize, usize) {
    let mut numbers = error
        .split(':')
        .skip(1)
        .map(|part| part.trim().parse::<usize>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(line), Some(column)) => (line, column),
        _ => (1, 1),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text)
}

fn uncommented(line: &str) -> &str {
    line.split_once('#').map_or(line, |(code, _)| code)
}

/// Builds the `input` document.
pub(crate) fn input_value(req: &Request<'_>) -> Value {
    let mut input = BTreeMap::new();
    let mut put = |key: &str, value: Value| {
        input.insert(Value::from(key), value);
    };
    if let Some(p) = req.principal {
        put("principal", Value::from(p));
    }
    if let Some(ip) = req.source_ip {
        put("source_ip", Value::from(ip.to_string()));
    }
    if let Some(port) = req.port {
        put("port", Value::from(u64::from(port)));
    }
    for (key, value) in [
        ("sni", req.sni),
        ("method", req.method),
        ("host", req.host),
        ("path", req.path),
    ] {
        if let Some(v) = value {
            put(key, Value::from(v));
        }
    }
    if let Some(headers) = req.headers {
        let mut map = BTreeMap::new();
        headers.for_each(&mut |k, v| {
            map.insert(Value::from(k.to_ascii_lowercase()), Value::from(v));
        });
        put("headers", Value::from(map));
    }
    put("time", Value::from(req.time.to_string()));
    Value::from(input)
}
