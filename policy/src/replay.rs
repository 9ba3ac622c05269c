//! `meshguard policy replay`: re-decide logged requests under new policy and list each whose
//! outcome would change ("what would this change have denied?").
//!
//! Each line of the access log is a JSON object; these fields are read (first name wins, others
//! are ignored), at the top level or, as meshguard's proxy writes request lines, under `http`:
//! `principal` | `peer_id`, `source_ip` | `source_addr` | `source` (an address or `addr:port`),
//! `port` | `dst_port` | the port of `original_dst` (`addr:port`), `sni`, `method`, `host` |
//! `authority`, `path`, `headers` (object), `time` | `start_time` (RFC 3339), and the logged
//! outcome `decision` | `outcome` (`allow`/`allowed`/`audit` (forwarded)/`deny`/`denied`, or an
//! object with an `outcome` field). Lines without a logged outcome are re-decided but cannot
//! "change"; they are counted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use crate::decision::{Decision, Outcome};
use crate::request::RequestDoc;
use crate::set::PolicySet;

/// One request whose outcome changes.
#[derive(Debug, Clone)]
pub struct Change {
    /// 1-based line number in the log.
    pub line: usize,
    pub request: RequestDoc,
    pub was: Outcome,
    pub now: Decision,
}

/// The result of a replay.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lines: usize,
    pub replayed: usize,
    pub changed: Vec<Change>,
    /// Lines replayed without a logged outcome.
    pub no_outcome: usize,
    /// Lines that could not be read, with why.
    pub skipped: Vec<(usize, String)>,
}

/// Replays every line of `log` under `set`.
pub fn replay(set: &PolicySet, log: &str) -> Report {
    let mut report = Report::default();
    for (index, line) in log.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        let (doc, was) = match parse_line(line) {
            Ok(parsed) => parsed,
            Err(why) => {
                report.skipped.push((number, why));
                continue;
            }
        };
        report.replayed += 1;
        let decision = set.evaluate(&doc.as_request(jiff::Timestamp::UNIX_EPOCH));
        match was {
            None => report.no_outcome += 1,
            Some(was) if was != decision.outcome => {
                report.changed.push(Change {
                    line: number,
                    request: doc,
                    was,
                    now: decision,
                });
            }
            Some(_) => {}
        }
    }
    report
}

/// Reads one access-log line into a request and its logged outcome.
pub fn parse_line(line: &str) -> Result<(RequestDoc, Option<Outcome>), String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value.as_object().ok_or("not a JSON object")?;
    // The proxy nests a request's L7 fields under `http`; flat logs have them at the top.
    let http = obj.get("http").and_then(Value::as_object);
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| obj.get(*n).filter(|v| !v.is_null()))
            .or_else(|| {
                http.and_then(|h| {
                    names
                        .iter()
                        .find_map(|n| h.get(*n).filter(|v| !v.is_null()))
                })
            })
    };
    let text = |names: &[&str]| {
        field(names)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .filter(|s| !s.is_empty() && s != "-")
    };
    let source_ip = match text(&["source_ip", "source_addr", "source"]) {
        None => None,
        Some(s) => Some(
            s.parse::<IpAddr>()
                .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
                .map_err(|_| format!("source address {s:?} is not an IP address"))?,
        ),
    };
    let port = match field(&["port", "dst_port"]) {
        None => match text(&["original_dst"]) {
            None => None,
            Some(s) => Some(
                s.parse::<SocketAddr>()
                    .map(|a| a.port())
                    .map_err(|_| format!("original_dst {s:?} is not an addr:port"))?,
            ),
        },
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or("port out of range")?,
        ),
        Some(Value::String(s)) => Some(
            s.parse()
                .map_err(|_| format!("port {s:?} is not a number"))?,
        ),
        Some(_) => return Err("port is neither a number nor a string".into()),
    };
    let headers = match field(&["headers"]) {
        None => None,
        Some(Value::Object(map)) => Some(
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.to_ascii_lowercase(), v.to_owned())))
                .collect::<BTreeMap<_, _>>(),
        ),
        Some(_) => return Err("headers is not an object".into()),
    };
    let time = text(&["time", "start_time"]).ok_or("no time or start_time")?;
    let time = time
        .parse()
        .map_err(|e| format!("time {time:?} is not RFC 3339: {e}"))?;
    let outcome = match field(&["decision", "outcome"]) {
        None => None,
        Some(Value::Object(o)) => o
            .get("outcome")
            .and_then(Value::as_str)
            .map(parse_outcome)
            .transpose()?,
        Some(Value::String(s)) => Some(parse_outcome(s)?),
        Some(_) => return Err("decision is neither a string nor an object".into()),
    };
    let doc = RequestDoc {
        principal: text(&["principal", "peer_id"]),
        source_ip,
        port,
        sni: text(&["sni"]),
        method: text(&["method"]),
        host: text(&["host", "authority"]),
        path: text(&["path"]),
        headers,
        time: Some(time),
    };
    Ok((doc, outcome))
}

fn parse_outcome(s: &str) -> Result<Outcome, String> {
    match s.to_ascii_lowercase().as_str() {
        // `audit`: forwarded, with an audit policy matching (the proxy's access log).
        "allow" | "allowed" | "audit" => Ok(Outcome::Allow),
        "deny" | "denied" => Ok(Outcome::Deny),
        other => Err(format!(
            "logged outcome {other:?} is not allow, audit or deny"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_changed_outcomes() {
        let set = PolicySet::from_texts([(
            "p.toml",
            "[[policy]]\nname = \"gets\"\naction = \"allow\"\nmethods = [\"GET\"]\n".to_owned(),
        )])
        .unwrap();
        let log = r#"{"peer_id":"spiffe://b/x","source":"10.0.0.1:5555","method":"GET","authority":"a","path":"/","start_time":"2026-11-23T10:00:00Z","decision":"allowed"}
{"principal":"spiffe://b/x","method":"POST","path":"/","time":"2026-11-23T10:00:00Z","outcome":"allow"}

{"method":"DELETE","time":"2026-11-23T10:00:00Z","decision":{"outcome":"deny"}}
not json
{"method":"GET","time":"2026-11-23T10:00:00Z"}
"#;
        let r = replay(&set, log);
        assert_eq!((r.lines, r.replayed, r.no_outcome), (5, 4, 1));
        assert_eq!(r.changed.len(), 1);
        assert_eq!(
            (
                r.changed[0].line,
                r.changed[0].was,
                r.changed[0].now.outcome
            ),
            (2, Outcome::Allow, Outcome::Deny)
        );
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].0, 5);
        let (doc, _) = parse_line(log.lines().next().unwrap()).unwrap();
        assert_eq!(doc.source_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(doc.host.as_deref(), Some("a"));
    }

    #[test]
    fn reads_the_proxys_access_log_lines() {
        // Shaped like meshguard-proxy's `ConnectionRecord` (with `http` on request lines).
        let l4 = r#"{"start_time":"2026-11-23T10:00:00Z","duration_ms":1.5,"direction":"inbound","listener":"inbound:app","source_addr":"[::ffff:10.0.0.9]:41000","peer_id":"spiffe://b/x","local_id":"spiffe://b/me","original_dst":"10.0.0.1:8443","upstream":"127.0.0.1:8080","bytes_in":1,"bytes_out":2,"tls_version":"TLSv1_3","cipher_suite":null,"kx_group":null,"alpn":null,"sni":"ledger","decision":"audit","dry_run":false,"policy":null,"rule":null,"reason":null,"error_class":null,"http":null}"#;
        let (doc, was) = parse_line(l4).unwrap();
        assert_eq!(was, Some(Outcome::Allow));
        assert_eq!(doc.principal.as_deref(), Some("spiffe://b/x"));
        assert_eq!(doc.source_ip, Some("::ffff:10.0.0.9".parse().unwrap()));
        assert_eq!(doc.port, Some(8443));
        assert_eq!(doc.method, None);
        let l7 = r#"{"start_time":"2026-11-23T10:00:00Z","source_addr":"10.0.0.9:41000","peer_id":"spiffe://b/x","original_dst":"10.0.0.1:8443","sni":null,"decision":"deny","http":{"method":"POST","authority":"ledger:8443","path":"/a","version":"HTTP/1.1","status":403}}"#;
        let (doc, was) = parse_line(l7).unwrap();
        assert_eq!(was, Some(Outcome::Deny));
        assert_eq!(doc.source_ip, Some("10.0.0.9".parse().unwrap()));
        assert_eq!(doc.port, Some(8443));
        assert_eq!(doc.method.as_deref(), Some("POST"));
        assert_eq!(doc.host.as_deref(), Some("ledger:8443"));
        assert_eq!(doc.path.as_deref(), Some("/a"));
        let set = PolicySet::from_texts([(
            "p.toml",
            "[[policy]]\nname = \"x\"\naction = \"allow\"\nports = [8443]\n".to_owned(),
        )])
        .unwrap();
        let r = replay(&set, &format!("{l4}\n{l7}\n"));
        assert_eq!((r.replayed, r.skipped.len()), (2, 0), "{:?}", r.skipped);
        assert_eq!(r.changed.len(), 1);
        assert_eq!(r.changed[0].line, 2);
    }
}
