//! From [`Sources`] to an immutable [`PolicySet`]: parse each file into validated types, resolve and
//! compile Rego modules once, check names and defaults across files, and index the policies.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::break_glass::BreakGlass;
use crate::decision::DefaultMode;
use crate::policy::{Cond, Policy};
use crate::rego::RegoPolicy;
use crate::set::{Group, PolicySet};
use crate::sources::{Sources, resolve};
use crate::spec::{self, Action, FileSpec, PolicySpec};
use crate::{Location, PolicyError};

/// Compiles `sources`; the first error stops compilation and names its file, line and column.
pub(crate) fn compile(sources: &Sources) -> Result<PolicySet, PolicyError> {
    let mut default: Option<(DefaultMode, Location)> = None;
    let mut names: HashMap<String, Location> = HashMap::new();
    let mut rego_cache: BTreeMap<PathBuf, Arc<RegoPolicy>> = BTreeMap::new();
    let mut policies = Vec::new();

    for file in &sources.policies {
        let spec = FileSpec::parse(&file.path, &file.text)?;
        if let Some(mode) = &spec.default {
            let at = spec::location(&file.path, &file.text, mode);
            match &default {
                Some((first, first_at)) if first != mode.get_ref() => {
                    return Err(PolicyError::invalid(
                        at,
                        format!(
                            "default = {:?} conflicts with default = {:?} at {first_at}; set the \
                             default in one file only",
                            mode.get_ref().as_str(),
                            first.as_str()
                        ),
                    ));
                }
                Some(_) => {}
                None => default = Some((*mode.get_ref(), at)),
            }
        }
        for p in spec.policy {
            let at = spec::location(&file.path, &file.text, &p.name);
            let name = p.name.get_ref().clone();
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                return Err(PolicyError::invalid(
                    at,
                    "a policy name must be non-empty printable text",
                ));
            }
            if let Some(first) = names.get(&name) {
                return Err(PolicyError::invalid(
                    at,
                    format!("policy {name:?} is already defined at {first}; names must be unique"),
                ));
            }
            names.insert(name, at);
            let rego = match &p.rego {
                None => None,
                Some(rel) => {
                    let path = resolve(&file.path, rel.get_ref());
                    let compiled = match rego_cache.get(&path) {
                        Some(compiled) => compiled.clone(),
                        None => {
                            let text = sources.rego.get(&path).ok_or_else(|| {
                                PolicyError::invalid(
                                    spec::location(&file.path, &file.text, rel),
                                    format!(
                                        "Rego module {} was not loaded; check the path",
                                        path.display()
                                    ),
                                )
                            })?;
                            let compiled = Arc::new(RegoPolicy::compile(&path, text)?);
                            rego_cache.insert(path, compiled.clone());
                            compiled
                        }
                    };
                    Some(compiled)
                }
            };
            policies.push(build(p, rego));
        }
    }

    let break_glass = match &sources.break_glass {
        Some(f) => BreakGlass::parse(&f.path, &f.text)?,
        None => BreakGlass::default(),
    };
    Ok(index(
        policies,
        default.map(|(d, _)| d).unwrap_or_default(),
        break_glass,
        sources.revision().into(),
    ))
}

fn build(p: PolicySpec, rego: Option<Arc<RegoPolicy>>) -> Policy {
    fn unwrap<T, U>(list: Option<spec::List<T>>, f: impl Fn(T) -> U) -> Option<Vec<U>> {
        list.map(|l| l.0.into_iter().map(f).collect())
    }
    fn headers(
        map: Option<BTreeMap<spec::HeaderName, spec::Plain>>,
    ) -> Box<[(Box<str>, crate::Pattern)]> {
        map.unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.0.into(), v.0))
            .collect()
    }
    let name: Arc<str> = Arc::from(p.name.into_inner());
    let reason = p
        .reason
        .unwrap_or_else(|| format!("denied by policy {name}"));
    Policy {
        reason: Arc::from(reason),
        action: p.action,
        enforce: p.enforce,
        principals: Cond::new(
            unwrap(p.principals, |x| x.0),
            unwrap(p.not_principals, |x| x.0),
        ),
        trust_domains: Cond::new(
            unwrap(p.trust_domains, |x| x.0),
            unwrap(p.not_trust_domains, |x| x.0),
        ),
        source_cidrs: Cond::new(
            unwrap(p.source_cidrs, |x| x.0),
            unwrap(p.not_source_cidrs, |x| x.0),
        ),
        ports: Cond::new(unwrap(p.ports, |x| x), unwrap(p.not_ports, |x| x)),
        sni: Cond::new(unwrap(p.sni, |x| x.0), unwrap(p.not_sni, |x| x.0)),
        methods: Cond::new(unwrap(p.methods, |x| x.0), unwrap(p.not_methods, |x| x.0)),
        hosts: Cond::new(unwrap(p.hosts, |x| x.0), unwrap(p.not_hosts, |x| x.0)),
        paths: Cond::new(unwrap(p.paths, |x| x.0), unwrap(p.not_paths, |x| x.0)),
        headers: headers(p.headers),
        not_headers: headers(p.not_headers),
        hours: p.hours,
        rego,
        name,
    }
}

/// Sorts policies into the deny, allow and observe (audit + dry-run) groups and indexes each by
/// exact principal.
fn index(
    policies: Vec<Policy>,
    default: DefaultMode,
    break_glass: BreakGlass,
    revision: Arc<str>,
) -> PolicySet {
    let mut deny = Vec::new();
    let mut allow = Vec::new();
    let mut observe = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        match (p.action, p.enforce) {
            (Action::Deny, true) => deny.push(i),
            (Action::Allow, true) => allow.push(i),
            _ => observe.push(i),
        }
    }
    let group = |members: Vec<u32>| {
        let mut by_principal: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut rest = Vec::new();
        for i in members {
            let policy = &policies[i as usize];
            match policy.exact_principals() {
                Some(ids) => {
                    for id in ids {
                        by_principal.entry(id.into()).or_default().push(i);
                    }
                }
                None => rest.push(i),
            }
        }
        Group::new(by_principal, rest)
    };
    let (deny, allow) = (group(deny), group(allow));
    PolicySet::new(
        policies.into(),
        default,
        deny,
        allow,
        observe.into(),
        break_glass,
        revision,
    )
}
