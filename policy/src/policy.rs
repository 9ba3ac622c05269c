//! One compiled policy and how it matches a request, field by field. Every check borrows; nothing
//! here allocates. A field whose attribute the request does not carry (an HTTP field on a
//! connection-level request, an unknown address or port) is *unknown*: an allow policy then does not
//! match, a deny policy does (fail closed).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::hours::Hours;
use crate::pattern::{Pattern, trust_domain_of};
use crate::rego::RegoPolicy;
use crate::request::Request;
use crate::spec::Action;

/// A list condition and its `not_` form; each absent side matches anything.
#[derive(Debug, Clone)]
pub(crate) struct Cond<T> {
    pub(crate) any_of: Option<Box<[T]>>,
    pub(crate) none_of: Option<Box<[T]>>,
}

impl<T> Cond<T> {
    pub(crate) fn new(any_of: Option<Vec<T>>, none_of: Option<Vec<T>>) -> Self {
        Self {
            any_of: any_of.map(Into::into),
            none_of: none_of.map(Into::into),
        }
    }

    fn is_set(&self) -> bool {
        self.any_of.is_some() || self.none_of.is_some()
    }

    /// Checks a value that may be unknown (`None`) with `hit` as the element test.
    #[inline]
    fn check<V: Copy>(
        &self,
        value: Option<V>,
        fail_closed: bool,
        hit: impl Fn(&T, V) -> bool,
    ) -> Check {
        if !self.is_set() {
            return Check::Match;
        }
        let Some(value) = value else {
            return if fail_closed {
                Check::Match
            } else {
                Check::Unknown
            };
        };
        self.check_known(Some(value), hit)
    }

    /// Checks a value whose absence is a fact (no principal, no SNI): it is in no list.
    #[inline]
    fn check_known<V: Copy>(&self, value: Option<V>, hit: impl Fn(&T, V) -> bool) -> Check {
        let any = |list: &[T]| value.is_some_and(|v| list.iter().any(|p| hit(p, v)));
        if self.any_of.as_deref().is_some_and(|list| !any(list))
            || self.none_of.as_deref().is_some_and(any)
        {
            return Check::NoMatch;
        }
        Check::Match
    }
}

/// The result of checking one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Match,
    NoMatch,
    /// The request does not carry the attribute.
    Unknown,
}

/// Why a policy did not match: the first field that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Miss {
    pub field: &'static str,
    /// True when the request lacked the attribute (e.g. an HTTP field on a connection).
    pub unknown: bool,
}

/// A request with its derived attributes (trust domain, host without port, path without query,
/// canonical source address) worked out once per decision instead of once per policy.
#[derive(Clone, Copy)]
pub(crate) struct Attrs<'r> {
    pub(crate) req: Request<'r>,
    http: bool,
    /// An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, what a dual-stack socket reports for an
    /// IPv4 client) as its IPv4 form, so IPv4 CIDRs cannot be bypassed by the mapped spelling.
    source_ip: Option<IpAddr>,
    trust_domain: Option<&'r str>,
    host: Option<&'r str>,
    path: Option<&'r str>,
}

impl<'r> Attrs<'r> {
    pub(crate) fn new(req: &Request<'r>) -> Self {
        let http = !req.is_connection_level();
        Self {
            req: *req,
            http,
            source_ip: req.source_ip.map(|ip| ip.to_canonical()),
            trust_domain: req.principal.and_then(trust_domain_of),
            host: if http { req.host_name() } else { None },
            path: if http { req.path_only() } else { None },
        }
    }
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) action: Action,
    pub(crate) enforce: bool,
    /// The reason a matching deny gives.
    pub(crate) reason: Arc<str>,
    pub(crate) principals: Cond<Pattern>,
    pub(crate) trust_domains: Cond<Pattern>,
    pub(crate) source_cidrs: Cond<IpNet>,
    pub(crate) ports: Cond<u16>,
    pub(crate) sni: Cond<Pattern>,
    pub(crate) methods: Cond<Pattern>,
    pub(crate) hosts: Cond<Pattern>,
    pub(crate) paths: Cond<Pattern>,
    pub(crate) headers: Box<[(Box<str>, Pattern)]>,
    pub(crate) not_headers: Box<[(Box<str>, Pattern)]>,
    pub(crate) hours: Option<Hours>,
    pub(crate) rego: Option<Arc<RegoPolicy>>,
}

impl Policy {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn action(&self) -> Action {
        self.action
    }

    pub fn enforce(&self) -> bool {
        self.enforce
    }

    /// Unknown attributes make deny policies match (fail closed), others not.
    pub(crate) fn fail_closed(&self) -> bool {
        self.action == Action::Deny
    }

    /// Checks every native field (not Rego); `Err` names the first field that did not match.
    #[inline]
    pub(crate) fn check_fields(&self, attrs: &Attrs<'_>) -> Result<(), Miss> {
        let req = &attrs.req;
        let fc = self.fail_closed();
        let http = attrs.http;
        let step = |field: &'static str, check: Check| match check {
            Check::Match => Ok(()),
            Check::NoMatch => Err(Miss {
                field,
                unknown: false,
            }),
            Check::Unknown => Err(Miss {
                field,
                unknown: true,
            }),
        };
        step(
            "principals",
            self.principals
                .check_known(req.principal, |p, v| p.matches(v)),
        )?;
        let domain = attrs.trust_domain;
        step(
            "trust_domains",
            self.trust_domains.check_known(domain, |p, v| p.matches(v)),
        )?;
        step(
            "source_cidrs",
            self.source_cidrs
                .check(attrs.source_ip, fc, |n, ip| n.contains(&ip)),
        )?;
        step("ports", self.ports.check(req.port, fc, |p, v| *p == v))?;
        step(
            "sni",
            self.sni
                .check_known(req.sni, |p, v| p.matches_ignore_case(v)),
        )?;
        step(
            "methods",
            self.methods.check(req.method, fc, |p, v| p.matches(v)),
        )?;
        let host = attrs.host;
        step(
            "hosts",
            self.hosts.check(host, fc, |p, v| p.matches_ignore_case(v)),
        )?;
        let path = attrs.path;
        step("paths", self.paths.check(path, fc, |p, v| p.matches(v)))?;
        step("headers", self.check_headers(req, http, fc))?;
        if self
            .hours
            .as_ref()
            .is_some_and(|hours| !hours.contains(req.time))
        {
            return Err(Miss {
                field: "hours",
                unknown: false,
            });
        }
        Ok(())
    }

    fn check_headers(&self, req: &Request<'_>, http: bool, fail_closed: bool) -> Check {
        if self.headers.is_empty() && self.not_headers.is_empty() {
            return Check::Match;
        }
        if !http {
            return if fail_closed {
                Check::Match
            } else {
                Check::Unknown
            };
        }
        // Any value of a repeated header may match; a value that is not text matches only `*`.
        let hit = |name: &str, p: &Pattern| {
            req.headers.is_some_and(|h| {
                h.any_value(name, &mut |v| match v {
                    Some(v) => p.matches_ignore_case(v),
                    None => matches!(p, Pattern::Any),
                })
            })
        };
        let all_present = self.headers.iter().all(|(name, p)| hit(name, p));
        let none_forbidden = self.not_headers.iter().all(|(name, p)| !hit(name, p));
        if all_present && none_forbidden {
            Check::Match
        } else {
            Check::NoMatch
        }
    }

    /// The exact principals this policy is limited to, when all its principal patterns are exact
    /// (used to index policies by principal).
    pub(crate) fn exact_principals(&self) -> Option<Vec<&str>> {
        let list = self.principals.any_of.as_ref()?;
        list.iter().map(Pattern::as_exact).collect()
    }
}
