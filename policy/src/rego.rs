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
use crate::rego_text::{precheck, regorus_error};
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
    /// The module loaded in regorus's interpreter with strict builtin errors, to confirm a
    /// permitting deny-side result (see [`RegoPolicy::confirm`]); cloned per use, pooled.
    strict: Engine,
    strict_pool: Mutex<Vec<Engine>>,
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
        precheck(path, source)?;
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
            .map_err(|e| compile_error(&name, "cannot compile the module", &e.to_string()))?;
        let entry_refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let program = Compiler::compile_from_policy(&compiled, &entry_refs).map_err(|e| {
            compile_error(
                &name,
                "cannot compile the module to RVM bytecode",
                &e.to_string(),
            )
        })?;
        let mut strict = engine.clone();
        strict.set_strict_builtin_errors(true);
        let rego = Self {
            path: path.to_owned(),
            package,
            program,
            allow_entry: has_allow.then_some(0),
            deny_entry: has_deny.then_some(usize::from(has_allow)),
            pool: Mutex::new(Vec::new()),
            strict,
            strict_pool: Mutex::new(Vec::new()),
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
    ///
    /// The RVM treats an error inside a rule body (a failing builtin, even in strict mode) as that
    /// body not matching, so a `deny_reason` whose body errs silently gives no reason. When
    /// `deny_reason` decides (`!allow_decides`, or no `allow` rule) and the VM's answer permits,
    /// the answer is confirmed by regorus's interpreter with strict builtin errors, which does
    /// raise them; an error there fails closed. Only that (not denied) path pays for it.
    pub fn evaluate(&self, req: &Request<'_>, allow_decides: bool) -> Result<RegoResult, String> {
        let deny_decides = !allow_decides || self.allow_entry.is_none();
        let input = input_value(req);
        // Kept only where a confirmation may need it (a `Value` clone shares its contents).
        let kept = deny_decides.then(|| input.clone());
        let mut vm = self.take_vm();
        vm.set_input(input);
        let result = self.run(&mut vm, allow_decides);
        self.put_vm(vm);
        let result = result?;
        if let Some(input) = kept
            && result.allow
            && result.deny_reasons.is_empty()
        {
            self.confirm(input)?;
        }
        Ok(result)
    }

    /// Evaluates the entry points in the strict interpreter; `Err` is the first builtin error.
    fn confirm(&self, input: Value) -> Result<(), String> {
        let pooled = self.strict_pool.lock().ok().and_then(|mut pool| pool.pop());
        let mut engine = pooled.unwrap_or_else(|| self.strict.clone());
        engine.set_input(input);
        let mut outcome = Ok(());
        for (present, rule) in [
            (self.allow_entry.is_some(), "allow"),
            (self.deny_entry.is_some(), "deny_reason"),
        ] {
            if present && let Err(e) = engine.eval_rule(format!("{}.{rule}", self.package)) {
                outcome = Err(regorus_error(&e.to_string()).1);
                break;
            }
        }
        if let Ok(mut pool) = self.strict_pool.lock()
            && pool.len() < POOL_SIZE
        {
            pool.push(engine);
        }
        outcome
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
            // A failing builtin called directly in an entry point's expression is an error, not
            // `undefined`. Errors inside rule bodies are still swallowed by the RVM; `evaluate`
            // confirms permitting deny-side answers in the strict interpreter for that reason.
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
    let (position, message) = regorus_error(v1_error);
    let (line, column) = position.unwrap_or((1, 1));
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
            message: format!(
                "this module is Rego v0 syntax, which meshguard refuses (in v0 a rule without \
                 `if` can silently allow everything); rewrite it as Rego v1: `allow if {{ ... }}`, \
                 `deny_reason contains msg if {{ ... }}` (as v1: {message})"
            ),
        };
    }
    PolicyError::Rego {
        at,
        message: format!("not valid Rego v1: {message}"),
    }
}

/// A compile error, placed where regorus says it is (else at the top of the module).
fn compile_error(name: &str, what: &str, error: &str) -> PolicyError {
    let (position, message) = regorus_error(error);
    let (line, column) = position.unwrap_or((1, 1));
    PolicyError::Rego {
        at: Location {
            file: name.to_owned(),
            line,
            column,
        },
        message: format!("{what}: {message}"),
    }
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
        // Canonical, as native CIDR matching sees it: `::ffff:10.0.0.5` is `10.0.0.5`.
        put("source_ip", Value::from(ip.to_canonical().to_string()));
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
        let map: BTreeMap<Value, Value> = crate::request::joined(headers)
            .into_iter()
            .map(|(k, v)| (Value::from(k), Value::from(v)))
            .collect();
        put("headers", Value::from(map));
    }
    put("time", Value::from(req.time.to_string()));
    Value::from(input)
}
