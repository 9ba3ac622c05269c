//! The decision log: one JSON line per deny and per audit, dry-run or break-glass match, with a
//! decision id, the time, an input summary (configured headers redacted), outcome, policy,
//! reasons, the policy revision and the evaluation time. The proxy owns the file; this module
//! formats lines and hands them to a `std::io::Write` or a bounded channel (never blocking the
//! request path: a full channel drops the line and counts it).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use jiff::Timestamp;
use serde::Serialize;

use crate::decision::{Decision, Outcome};
use crate::request::Request;

/// Headers whose values never reach the log, in addition to the configured ones.
pub const ALWAYS_REDACTED: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

const REDACTED: &str = "[redacted]";

/// One log line.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    pub decision_id: String,
    pub time: Timestamp,
    pub input: InputSummary,
    pub outcome: Outcome,
    pub policy: Option<String>,
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRunRecord>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub default_audit: bool,
    pub revision: String,
    pub eval_ns: u64,
}

/// A dry-run entry in a log line.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunRecord {
    pub policy: String,
    pub outcome: Outcome,
}

/// The request as logged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InputSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl DecisionRecord {
    /// Builds the line for `decision` about `req`; `redact` lists extra header names (lower case)
    /// whose values are replaced.
    pub fn new(req: &Request<'_>, decision: &Decision, eval_ns: u64, redact: &[String]) -> Self {
        let mut headers = BTreeMap::new();
        if let Some(h) = req.headers {
            for (name, value) in crate::request::joined(h) {
                let hidden = ALWAYS_REDACTED.contains(&name.as_str()) || redact.contains(&name);
                headers.insert(name, if hidden { REDACTED.to_owned() } else { value });
            }
        }
        Self {
            decision_id: new_decision_id(),
            time: req.time,
            input: InputSummary {
                principal: req.principal.map(str::to_owned),
                source_ip: req.source_ip,
                port: req.port,
                sni: req.sni.map(str::to_owned),
                method: req.method.map(str::to_owned),
                host: req.host.map(str::to_owned),
                // The query string can carry secrets; log the path only.
                path: req.path_only().map(str::to_owned),
                headers,
            },
            outcome: decision.outcome,
            policy: decision.policy.as_deref().map(str::to_owned),
            reasons: decision.reasons.iter().map(|r| r.to_string()).collect(),
            dry_run: decision
                .dry_run
                .iter()
                .map(|d| DryRunRecord {
                    policy: d.policy.to_string(),
                    outcome: d.outcome,
                })
                .collect(),
            audit: decision.audit.iter().map(|a| a.to_string()).collect(),
            break_glass: decision.break_glass.as_deref().map(str::to_owned),
            default_audit: decision.default_audit,
            revision: decision.revision.to_string(),
            eval_ns,
        }
    }

    /// The JSON line, without the newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"unloggable decision: {e}\"}}"))
    }
}

/// A random UUIDv4-formatted id.
pub fn new_decision_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What a full channel does to the next line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// The caller waits until the writer has room: no decision is lost, and a stalled disk
    /// stalls the requests that produce decisions (the default for this log).
    #[default]
    Block,
    /// The line is dropped and counted: requests never wait on the log.
    Drop,
}

enum Sink {
    Writer(Mutex<Box<dyn Write + Send>>),
    Channel(SyncSender<String>),
}

/// Where decision lines go. Cheap to share behind an `Arc`.
pub struct DecisionLog {
    sink: Sink,
    redact: Vec<String>,
    written: AtomicU64,
    dropped: AtomicU64,
    on_full: OnFull,
    /// Told about every dropped line (the proxy counts it in a metric and logs it).
    on_drop: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("redact", &self.redact)
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .field("on_full", &self.on_full)
            .finish_non_exhaustive()
    }
}

impl DecisionLog {
    /// Writes each line straight to `writer` (flushing per line).
    pub fn to_writer(writer: impl Write + Send + 'static, redact: &[&str]) -> Self {
        Self::new(Sink::Writer(Mutex::new(Box::new(writer))), redact)
    }

    /// Sends lines into a channel of `capacity`; the receiver (the proxy's log task) writes them.
    pub fn channel(capacity: usize, redact: &[&str]) -> (Self, Receiver<String>) {
        let (tx, rx) = sync_channel(capacity);
        (Self::new(Sink::Channel(tx), redact), rx)
    }

    fn new(sink: Sink, redact: &[&str]) -> Self {
        Self {
            sink,
            redact: redact.iter().map(|r| r.to_ascii_lowercase()).collect(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            on_full: OnFull::default(),
            on_drop: None,
        }
    }

    /// Sets what a full channel does ([`OnFull::Block`] unless changed).
    #[must_use]
    pub fn with_on_full(mut self, on_full: OnFull) -> Self {
        self.on_full = on_full;
        self
    }

    /// Calls `on_drop` for every line lost.
    #[must_use]
    pub fn with_on_drop(mut self, on_drop: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_drop = Some(Box::new(on_drop));
        self
    }

    /// Logs `decision` if it is one the log keeps ([`Decision::should_log`]); returns whether a
    /// line was written or queued.
    pub fn record(&self, req: &Request<'_>, decision: &Decision, eval_ns: u64) -> bool {
        if !decision.should_log() {
            return false;
        }
        let line = DecisionRecord::new(req, decision, eval_ns, &self.redact).to_line();
        let ok = match &self.sink {
            Sink::Writer(w) => w
                .lock()
                .is_ok_and(|mut w| writeln!(w, "{line}").and_then(|()| w.flush()).is_ok()),
            Sink::Channel(tx) => match tx.try_send(line) {
                Ok(()) => true,
                // The writer is a thread of its own, so waiting here cannot stop it draining.
                Err(TrySendError::Full(line)) if self.on_full == OnFull::Block => {
                    tx.send(line).is_ok()
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
        };
        let counter = if ok { &self.written } else { &self.dropped };
        counter.fetch_add(1, Ordering::Relaxed);
        if !ok && let Some(on_drop) = &self.on_drop {
            on_drop();
        }
        ok
    }

    /// Lines written or queued.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Lines lost (channel full or closed, write error).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::PolicySet;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn set() -> PolicySet {
        PolicySet::from_texts([(
            "p.toml",
            "[[policy]]\nname = \"gets\"\naction = \"allow\"\nmethods = [\"GET\"]\n\n[[policy]]\nname = \"dry\"\naction = \"deny\"\nenforce = false\npaths = [\"/secret\"]\n".to_owned(),
        )])
        .unwrap()
    }

    #[test]
    fn denies_and_dry_runs_are_logged_with_redaction() {
        let out = Shared::default();
        let log = DecisionLog::to_writer(out.clone(), &["X-Session"]);
        let headers: &[(&str, &str)] = &[
            ("authorization", "Bearer s3cret"),
            ("x-session", "abc"),
            ("x-role", "auditor"),
        ];
        let mut req = Request::connection("2026-11-23T10:00:00Z".parse().unwrap());
        req.method = Some("POST");
        req.path = Some("/x?token=s3cret");
        req.headers = Some(&headers);
        let set = set();
        assert!(log.record(&req, &set.evaluate(&req), 1234));
        req.method = Some("GET");
        assert!(
            !log.record(&req, &set.evaluate(&req), 10),
            "a plain allow is not logged"
        );
        req.path = Some("/secret");
        assert!(
            log.record(&req, &set.evaluate(&req), 10),
            "a dry-run match is"
        );
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("s3cret") && !text.contains("abc"), "{text}");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["outcome"], "deny");
        assert_eq!(lines[0]["input"]["headers"]["authorization"], "[redacted]");
        assert_eq!(lines[0]["input"]["headers"]["x-session"], "[redacted]");
        assert_eq!(lines[0]["input"]["headers"]["x-role"], "auditor");
        assert_eq!(lines[0]["input"]["path"], "/x");
        assert_eq!(lines[0]["eval_ns"], 1234);
        assert_eq!(lines[0]["revision"].as_str().unwrap().len(), 64);
        assert_eq!(lines[0]["decision_id"].as_str().unwrap().len(), 36);
        assert_eq!(lines[1]["dry_run"][0]["policy"], "dry");
        assert_eq!(lines[1]["outcome"], "allow");
    }

    #[test]
    fn a_full_channel_drops_and_counts_when_told_to_drop() {
        let (log, rx) = DecisionLog::channel(1, &[]);
        let drops = Arc::new(AtomicU64::new(0));
        let seen = drops.clone();
        let log = log.with_on_full(OnFull::Drop).with_on_drop(move || {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        let req = Request::connection("2026-11-23T10:00:00Z".parse().unwrap());
        let d = set().evaluate(&req);
        assert!(log.record(&req, &d, 1));
        assert!(!log.record(&req, &d, 1));
        assert_eq!((log.written(), log.dropped()), (1, 1));
        assert_eq!(drops.load(Ordering::Relaxed), 1, "the drop is reported");
        assert!(rx.recv().unwrap().contains("\"outcome\":\"deny\""));
    }

    #[test]
    fn by_default_a_full_channel_waits_for_a_slow_writer_and_loses_nothing() {
        let (log, rx) = DecisionLog::channel(2, &[]);
        let writer = std::thread::spawn(move || {
            let mut lines = 0;
            while let Ok(_line) = rx.recv() {
                // A slow disk.
                std::thread::sleep(std::time::Duration::from_micros(200));
                lines += 1;
            }
            lines
        });
        let req = Request::connection("2026-11-23T10:00:00Z".parse().unwrap());
        let d = set().evaluate(&req);
        for _ in 0..300 {
            assert!(log.record(&req, &d, 1));
        }
        assert_eq!((log.written(), log.dropped()), (300, 0));
        drop(log);
        assert_eq!(writer.join().unwrap(), 300);
    }

    #[test]
    fn on_full_is_block_or_drop() {
        #[derive(serde::Deserialize)]
        struct T {
            on_full: OnFull,
        }
        let parse = |v: &str| toml::from_str::<T>(&format!("on_full = \"{v}\"")).map(|t| t.on_full);
        assert_eq!(parse("block").unwrap(), OnFull::Block);
        assert_eq!(parse("drop").unwrap(), OnFull::Drop);
        let error = parse("sometimes").unwrap_err().to_string();
        assert!(error.contains("block") && error.contains("drop"), "{error}");
        assert_eq!(OnFull::default(), OnFull::Block);
    }
}
