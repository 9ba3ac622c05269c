//! A run's figures: printed as a table for people, written as JSON (`--json FILE`) for the compare
//! harness and for baselines. Latencies are in microseconds; the key names are a contract.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::engine::RunOutcome;
use crate::recorder::Latencies;

/// Percentiles of one latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl From<&Latencies> for LatencySummary {
    fn from(l: &Latencies) -> Self {
        LatencySummary {
            p50: l.quantile_us(0.50),
            p90: l.quantile_us(0.90),
            p99: l.quantile_us(0.99),
            p999: l.quantile_us(0.999),
            max: l.max_us(),
        }
    }
}

/// Everything one `meshguard perf` run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `http`, `handshake`, `tcp-ping-pong` or `tcp-bulk`.
    pub mode: String,
    /// What was measured, as given on the command line.
    pub target: String,
    /// Requests per second asked for; `null` for a closed loop (`--rate max`).
    pub target_rate: Option<f64>,
    /// Successful operations per second actually completed.
    pub achieved_rate: f64,
    /// Wall time from the first intended send to the last completion.
    pub duration_s: f64,
    /// Concurrent connections (workers).
    pub connections: usize,
    /// Successful operations.
    pub completed: u64,
    /// Latency from each operation's intended send time (open loop) or actual send (closed loop).
    pub latency_us: LatencySummary,
    /// Latency from the actual send: what a generator with coordinated omission would show.
    pub service_time_us: LatencySummary,
    /// Actual send minus intended send (0 in a closed loop): the generator's own lateness plus
    /// time spent waiting for a free connection.
    pub send_lag_us: LatencySummary,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// Figures only this mode has (handshake latency, throughput per stream, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Report {
    /// The common part of a report from a finished run.
    pub fn from_outcome<E>(
        mode: &str,
        target: &str,
        target_rate: Option<f64>,
        out: &RunOutcome<E>,
    ) -> Self {
        Report {
            mode: mode.to_owned(),
            target: target.to_owned(),
            target_rate,
            achieved_rate: round2(out.achieved_rate()),
            duration_s: round2(out.elapsed.as_secs_f64()),
            connections: out.exchanges.len(),
            completed: out.completed,
            latency_us: LatencySummary::from(&out.recorder.latency),
            service_time_us: LatencySummary::from(&out.recorder.service),
            send_lag_us: LatencySummary::from(&out.recorder.send_lag),
            errors: out
                .recorder
                .errors
                .iter()
                .map(|(k, n)| (k.key().to_owned(), *n))
                .collect(),
            extra: BTreeMap::new(),
        }
    }

    /// Adds a mode-specific figure.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("could not encode the report")?;
        std::fs::write(path, json + "\n").with_context(|| {
            format!(
                "could not write the report to {}: check the directory exists and is writable",
                path.display()
            )
        })
    }
}

/// Two decimals are plenty for rates and seconds, and keep the JSON readable.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target_rate = match self.target_rate {
            Some(r) => format!("{r}/s"),
            None => "max (closed loop)".to_owned(),
        };
        let errors: u64 = self.errors.values().sum();
        writeln!(f, "meshguard perf {} -> {}", self.mode, self.target)?;
        let achieved = if self.extra.get("rate_unit").and_then(|u| u.as_str()) == Some("bytes/s") {
            format!("{:.1} MB/s", self.achieved_rate / 1e6)
        } else {
            format!("{:.1}/s", self.achieved_rate)
        };
        writeln!(
            f,
            "  target {target_rate}   achieved {achieved}   {} ok, {errors} errors, {} connections, {:.2} s",
            self.completed, self.connections, self.duration_s
        )?;
        let mut rows: Vec<(&str, &LatencySummary)> = Vec::new();
        if self.latency_us.max > 0 {
            if self.target_rate.is_some() {
                rows.push(("latency (from intended send)", &self.latency_us));
                rows.push(("service time (from send)", &self.service_time_us));
                rows.push(("send lag (behind schedule)", &self.send_lag_us));
            } else {
                // A closed loop has no schedule: latency and service time are the same thing.
                rows.push(("latency (from send)", &self.latency_us));
            }
        }
        let extra_rows: Vec<(&str, LatencySummary)> = self
            .extra
            .iter()
            .filter_map(|(key, value)| {
                let summary = serde_json::from_value::<LatencySummary>(value.clone()).ok()?;
                Some((key.as_str(), summary))
            })
            .collect();
        rows.extend(extra_rows.iter().map(|(k, s)| (*k, s)));
        if !rows.is_empty() {
            let line = |name: &str, cells: [String; 5]| {
                let [a, b, c, d, e] = cells;
                format!("  {name:<28}{a:>10}{b:>10}{c:>10}{d:>10}{e:>10}\n")
            };
            let header = ["p50", "p90", "p99", "p99.9", "max"].map(str::to_owned);
            f.write_str(&line("", header))?;
            for (name, s) in rows {
                let cells = [s.p50, s.p90, s.p99, s.p999, s.max].map(micros);
                f.write_str(&line(name, cells))?;
            }
        }
        for (key, value) in &self.extra {
            if !value.is_object() {
                writeln!(f, "  {key}: {value}")?;
            }
        }
        for (kind, n) in &self.errors {
            writeln!(f, "  error {kind}: {n}")?;
        }
        Ok(())
    }
}

/// `850µs`, `12.3ms`, `1.20s`: short enough for a table column.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::recorder::{ErrorKind, Recorder};

    fn outcome() -> RunOutcome<()> {
        let mut recorder = Recorder::default();
        for ms in 1..=1000 {
            recorder.latency.record(Duration::from_micros(ms * 10));
            recorder.service.record(Duration::from_micros(ms));
        }
        recorder.error(ErrorKind::Http5xx);
        RunOutcome {
            recorder,
            elapsed: Duration::from_secs(2),
            completed: 1000,
            attempted: 1001,
            exchanges: vec![(), ()],
        }
    }

    #[test]
    fn json_has_the_contract_keys() {
        let report = Report::from_outcome("http", "http://x/", Some(500.0), &outcome()).with(
            "handshake_latency_us",
            serde_json::to_value(LatencySummary {
                p50: 1,
                p90: 2,
                p99: 3,
                p999: 4,
                max: 5,
            })
            .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        report.write_json(&path).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"][key].is_u64(), "{key}");
        }
        assert_eq!(v["latency_us"]["max"], 10_007);
        assert_eq!(v["achieved_rate"], 500.0);
        assert_eq!(v["target_rate"], 500.0);
        assert_eq!(v["errors"]["http_5xx"], 1);
        assert_eq!(v["handshake_latency_us"]["p999"], 4);
    }

    #[test]
    fn closed_loop_target_rate_is_null_and_table_reads() {
        let report = Report::from_outcome("http", "http://x/", None, &outcome());
        let v = serde_json::to_value(&report).unwrap();
        assert!(v["target_rate"].is_null());
        let text = report.to_string();
        assert!(text.contains("max (closed loop)"), "{text}");
        assert!(text.contains("p99.9"), "{text}");
        assert!(text.contains("error http_5xx: 1"), "{text}");
        assert!(text.contains("latency (from send)"), "{text}");
        assert!(
            !text.contains("intended"),
            "a closed loop has no intended send time: {text}"
        );
    }

    #[test]
    fn micros_are_human() {
        assert_eq!(micros(850), "850µs");
        assert_eq!(micros(12_300), "12.30ms");
        assert_eq!(micros(1_200_000), "1.20s");
    }
}
