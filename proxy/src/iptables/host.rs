//! Installing and removing the capture on this host, for both address families.
//!
//! IPv4 rules are always installed. IPv6 rules are installed too unless the operator asked for
//! IPv4 only; if they cannot be (no `ip6tables`, no `ip6table_nat`) on a host where IPv6 is
//! enabled, nothing is left installed and the caller gets [`IptablesError::Ipv6Unprotected`]:
//! capturing half the traffic would look protected while IPv6 bypassed mTLS and policy.

use std::path::Path;

use super::{CaptureSpec, Family, IptablesError, run_all, run_ignoring_failures};

/// The rule programs, one per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programs {
    /// IPv4, normally `iptables`.
    pub v4: String,
    /// IPv6, normally `ip6tables`.
    pub v6: String,
}

impl Default for Programs {
    fn default() -> Self {
        Self {
            v4: Family::V4.default_program().to_owned(),
            v6: Family::V6.default_program().to_owned(),
        }
    }
}

/// What [`apply`] installed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// Both families are captured.
    Both,
    /// IPv4 only, as the operator asked (`--ipv4-only`).
    Ipv4OnlyAsAsked,
    /// IPv4 only: the IPv6 rules failed, and IPv6 is disabled here, so nothing bypasses capture.
    /// Holds why the IPv6 rules failed.
    Ipv4OnlyIpv6Disabled(String),
}

/// Whether IPv6 is enabled in this network namespace: it has IPv6 addresses
/// (`/proc/net/if_inet6` is not empty) and `net.ipv6.conf.all.disable_ipv6` is not 1.
pub fn ipv6_enabled() -> bool {
    ipv6_enabled_in(Path::new("/proc"))
}

/// [`ipv6_enabled`] under another `/proc` (for tests).
pub fn ipv6_enabled_in(proc: &Path) -> bool {
    // No file: the kernel has no IPv6 at all.
    let addresses = std::fs::read_to_string(proc.join("net/if_inet6")).unwrap_or_default();
    if addresses.trim().is_empty() {
        return false;
    }
    // Addresses but an unreadable switch: assume enabled, the answer that cannot open a bypass.
    std::fs::read_to_string(proc.join("sys/net/ipv6/conf/all/disable_ipv6"))
        .map_or(true, |flag| flag.trim() != "1")
}

/// Installs the capture (removing any previous one first, so applying twice does not stack
/// rules). `ipv4_only` skips IPv6 on purpose; `ipv6_enabled` is [`ipv6_enabled`]'s answer.
pub fn apply(
    spec: &CaptureSpec,
    programs: &Programs,
    ipv4_only: bool,
    ipv6_enabled: bool,
) -> Result<Applied, IptablesError> {
    remove(spec, programs)?;
    if let Err(error) = run_all(&programs.v4, &spec.install_rules(Family::V4)) {
        let _ = remove(spec, programs);
        return Err(error);
    }
    if ipv4_only {
        return Ok(Applied::Ipv4OnlyAsAsked);
    }
    match run_all(&programs.v6, &spec.install_rules(Family::V6)) {
        Ok(()) => Ok(Applied::Both),
        Err(error) if ipv6_enabled => {
            let _ = remove(spec, programs);
            Err(IptablesError::Ipv6Unprotected {
                source: Box::new(error),
            })
        }
        Err(error) => {
            let _ = remove_family(spec, &programs.v6);
            Ok(Applied::Ipv4OnlyIpv6Disabled(error.to_string()))
        }
    }
}

/// Removes the capture of both families. A missing `ip6tables` is not an error: there can be no
/// rules of a program that is not there.
pub fn remove(spec: &CaptureSpec, programs: &Programs) -> Result<(), IptablesError> {
    run_ignoring_failures(&programs.v4, &spec.remove_rules())?;
    match remove_family(spec, &programs.v6) {
        Err(IptablesError::Spawn { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        other => other,
    }
}

fn remove_family(spec: &CaptureSpec, program: &str) -> Result<(), IptablesError> {
    run_ignoring_failures(program, &spec.remove_rules())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_with(if_inet6: Option<&str>, disable_ipv6: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = if_inet6 {
            std::fs::create_dir_all(dir.path().join("net")).unwrap();
            std::fs::write(dir.path().join("net/if_inet6"), text).unwrap();
        }
        if let Some(text) = disable_ipv6 {
            let conf = dir.path().join("sys/net/ipv6/conf/all");
            std::fs::create_dir_all(&conf).unwrap();
            std::fs::write(conf.join("disable_ipv6"), text).unwrap();
        }
        dir
    }

    const LO: &str = "00000000000000000000000000000001 01 80 10 80       lo\n";

    #[test]
    fn ipv6_is_enabled_when_there_are_addresses_and_it_is_not_disabled() {
        assert!(ipv6_enabled_in(proc_with(Some(LO), Some("0\n")).path()));
        assert!(ipv6_enabled_in(proc_with(Some(LO), None).path()));
        assert!(!ipv6_enabled_in(proc_with(Some(LO), Some("1\n")).path()));
        assert!(!ipv6_enabled_in(proc_with(Some(""), Some("0\n")).path()));
        assert!(!ipv6_enabled_in(proc_with(None, None).path()));
    }

    fn spec() -> CaptureSpec {
        CaptureSpec {
            inbound_port: Some(15006),
            outbound_port: None,
            proxy_uid: 1337,
            admin_port: 15000,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }

    /// `true` as the IPv4 program: every rule "succeeds" without touching the host.
    fn programs(v6: &str) -> Programs {
        Programs {
            v4: "true".into(),
            v6: v6.into(),
        }
    }

    #[test]
    fn a_missing_ip6tables_on_an_ipv6_host_refuses_the_capture_with_what_to_do() {
        let error = apply(&spec(), &programs("/nonexistent/ip6tables"), false, true).unwrap_err();
        assert!(
            matches!(error, IptablesError::Ipv6Unprotected { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        for needle in ["IPv6 is enabled", "no mTLS and no policy", "--ipv4-only"] {
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn a_failing_ip6tables_on_an_ipv6_host_refuses_the_capture() {
        let error = apply(&spec(), &programs("false"), false, true).unwrap_err();
        assert!(
            matches!(error, IptablesError::Ipv6Unprotected { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn ipv4_only_is_applied_when_asked_or_when_ipv6_is_off() {
        let missing = programs("/nonexistent/ip6tables");
        assert_eq!(
            apply(&spec(), &missing, true, true).unwrap(),
            Applied::Ipv4OnlyAsAsked
        );
        assert!(matches!(
            apply(&spec(), &missing, false, false).unwrap(),
            Applied::Ipv4OnlyIpv6Disabled(_)
        ));
        assert_eq!(
            apply(&spec(), &programs("true"), false, true).unwrap(),
            Applied::Both
        );
        remove(&spec(), &missing).unwrap();
    }
}
