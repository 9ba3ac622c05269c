//! Regressions against a baseline: an earlier `report.json` read back, and the figures of this run
//! that are worse than it beyond a threshold. Only machine-relative figures are compared (per
//! proxy CPU-second, fraction of direct, latency added over direct, memory per connection): this
//! machine is shared, so absolute rates move with the neighbours while ratios mostly do not.

use std::path::Path;

use anyhow::Context as _;

use super::model::{CompareReport, Regression, TargetResult};

/// Added-latency changes smaller than this are noise on a shared machine, whatever the ratio.
const LATENCY_NOISE_US: f64 = 50.0;
/// Memory-per-connection changes smaller than this are allocator noise.
const MEMORY_NOISE_BYTES: f64 = 1024.0;

/// Reads a baseline (a report.json of an earlier `perf compare` run).
pub fn load(path: &Path) -> anyhow::Result<CompareReport> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "Could not read the baseline {}: check the path (a report.json written by `meshguard perf compare --out DIR`).",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "The baseline {} is not a report.json of `meshguard perf compare`; give the report.json of an earlier run.",
            path.display()
        )
    })
}

/// The figures of `now` worse than `baseline` by more than `threshold` (0.25 = 25 %), in the
/// order of `now`'s scenarios and targets. Matched by scenario key and target key; a figure
/// missing on either side is skipped, not a regression.
pub fn regressions(
    baseline: &CompareReport,
    now: &CompareReport,
    threshold: f64,
) -> Vec<Regression> {
    let mut found = Vec::new();
    for scenario in &now.scenarios {
        let Some(before) = baseline.scenarios.iter().find(|s| s.key == scenario.key) else {
            continue;
        };
        for target in &scenario.targets {
            let Some(was) = before.targets.iter().find(|t| t.target == target.target) else {
                continue;
            };
            for figure in FIGURES {
                let (Some(b), Some(n)) = ((figure.get)(was), (figure.get)(target)) else {
                    continue;
                };
                let Some(worse_by) = figure.worse_by(b, n) else {
                    continue;
                };
                if worse_by > threshold {
                    found.push(Regression {
                        scenario: scenario.key.clone(),
                        target: target.target.clone(),
                        figure: figure.name.to_owned(),
                        baseline: b,
                        now: n,
                        worse_by,
                    });
                }
            }
        }
    }
    found
}

/// One compared figure: where it is, which way is worse, and how much change is noise.
struct Figure {
    name: &'static str,
    get: fn(&TargetResult) -> Option<f64>,
    higher_is_worse: bool,
    /// Absolute changes at or under this are ignored; it also stands in for a baseline near
    /// zero (an added latency of 10 µs that becomes 80 µs is +70 µs, not +700 %).
    noise: f64,
}

const FIGURES: &[Figure] = &[
    Figure {
        name: "per_cpu_s",
        get: |t| t.median.per_cpu_s,
        higher_is_worse: false,
        noise: 0.0,
    },
    Figure {
        name: "fraction_of_direct",
        get: |t| t.vs_direct.as_ref()?.fraction_of_direct,
        higher_is_worse: false,
        noise: 0.0,
    },
    Figure {
        name: "added_p50_us",
        get: |t| t.vs_direct.as_ref()?.added_p50_us.map(|v| v as f64),
        higher_is_worse: true,
        noise: LATENCY_NOISE_US,
    },
    Figure {
        name: "added_p99_us",
        get: |t| t.vs_direct.as_ref()?.added_p99_us.map(|v| v as f64),
        higher_is_worse: true,
        noise: LATENCY_NOISE_US,
    },
    Figure {
        name: "fault_added_p99_us",
        get: |t| t.median.fault_added_p99_us.map(|v| v as f64),
        higher_is_worse: true,
        noise: LATENCY_NOISE_US,
    },
    Figure {
        // Any new failure counts: 0 -> 1 is worse by 2 (scale 0.5).
        name: "failed_during_fault",
        get: |t| t.median.failed_during_fault.map(|v| v as f64),
        higher_is_worse: true,
        noise: 0.5,
    },
    Figure {
        name: "memory_per_conn_bytes",
        get: |t| t.median.memory_per_conn_bytes,
        higher_is_worse: true,
        noise: MEMORY_NOISE_BYTES,
    },
];

impl Figure {
    /// The relative change from `baseline` to `now`, positive when worse; `None` when the change
    /// is within noise or cannot be expressed relative to the baseline.
    fn worse_by(&self, baseline: f64, now: f64) -> Option<f64> {
        if !baseline.is_finite() || !now.is_finite() {
            return None;
        }
        let worse = if self.higher_is_worse {
            now - baseline
        } else {
            baseline - now
        };
        if worse.abs() <= self.noise {
            return None;
        }
        let scale = baseline.abs().max(self.noise);
        (scale > 0.0).then(|| worse / scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::goals::sample;

    fn target<'a>(r: &'a mut CompareReport, scenario: &str, target: &str) -> &'a mut TargetResult {
        r.scenarios
            .iter_mut()
            .find(|s| s.key == scenario)
            .and_then(|s| s.targets.iter_mut().find(|t| t.target == target))
            .unwrap_or_else(|| panic!("sample has no {scenario}/{target}"))
    }

    #[test]
    fn flags_a_40_percent_drop_in_per_cpu_s_but_not_a_10_percent_one() {
        let baseline = sample::report();
        let mut now = sample::report();
        let inbound = target(&mut now, "keepalive", "meshguard-inbound");
        inbound.median.per_cpu_s = inbound.median.per_cpu_s.map(|v| v * 0.6);
        let nginx = target(&mut now, "keepalive", "nginx");
        nginx.median.per_cpu_s = nginx.median.per_cpu_s.map(|v| v * 0.9);

        let found = regressions(&baseline, &now, 0.25);
        assert_eq!(found.len(), 1, "{found:?}");
        let r = &found[0];
        assert_eq!(
            (r.scenario.as_str(), r.target.as_str()),
            ("keepalive", "meshguard-inbound")
        );
        assert_eq!(r.figure, "per_cpu_s");
        assert!((r.worse_by - 0.4).abs() < 1e-9, "{}", r.worse_by);
        assert!(r.now < r.baseline);
    }

    #[test]
    fn an_improvement_or_an_identical_run_is_no_regression() {
        let baseline = sample::report();
        assert!(regressions(&baseline, &baseline, 0.25).is_empty());
        let mut now = sample::report();
        let bulk = target(&mut now, "bulk", "meshguard-pair");
        bulk.vs_direct = Some(crate::compare::model::VsDirect {
            fraction_of_direct: Some(0.9),
            ..Default::default()
        });
        assert!(regressions(&baseline, &now, 0.25).is_empty());
    }

    #[test]
    fn latency_within_50_us_is_noise_beyond_it_is_flagged() {
        let baseline = sample::report();
        let mut now = sample::report();
        // meshguard-inbound added p50 60 µs -> 90 µs: +50 % but only 30 µs.
        let vs = target(&mut now, "latency-1000", "meshguard-inbound")
            .vs_direct
            .as_mut();
        vs.expect("sample has vs_direct").added_p50_us = Some(90);
        assert!(regressions(&baseline, &now, 0.25).is_empty());

        // meshguard-pair added p99 320 µs -> 520 µs: 200 µs and 62.5 % worse.
        let vs = target(&mut now, "latency-1000", "meshguard-pair")
            .vs_direct
            .as_mut();
        vs.expect("sample has vs_direct").added_p99_us = Some(520);
        let found = regressions(&baseline, &now, 0.25);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].figure, "added_p99_us");
        assert!((found[0].worse_by - 0.625).abs() < 1e-9);
    }

    #[test]
    fn memory_under_1_kb_is_noise_and_missing_figures_are_skipped() {
        let baseline = sample::report();
        let mut now = sample::report();
        // 7 KB -> 7.9 KB: +13 %, under 1 KB.
        target(&mut now, "idle", "meshguard-inbound")
            .median
            .memory_per_conn_bytes = Some(8_090.0);
        // A figure absent now, and a whole scenario absent from the baseline.
        target(&mut now, "handshake", "nginx").median.per_cpu_s = None;
        let mut old = baseline.clone();
        old.scenarios.retain(|s| s.key != "keepalive");
        let inbound = target(&mut now, "keepalive", "meshguard-inbound");
        inbound.median.per_cpu_s = Some(1.0);
        assert!(regressions(&old, &now, 0.25).is_empty());

        // 7 KB -> 14 KB is flagged.
        target(&mut now, "idle", "meshguard-inbound")
            .median
            .memory_per_conn_bytes = Some(14_336.0);
        let found = regressions(&old, &now, 0.25);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].figure, "memory_per_conn_bytes");
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.json");
        let report = sample::report();
        let json = serde_json::to_string_pretty(&report).expect("encode");
        std::fs::write(&path, json).expect("write");
        let back = load(&path).expect("load");
        assert_eq!(
            serde_json::to_value(&back).expect("encode"),
            serde_json::to_value(&report).expect("encode")
        );
        assert!(regressions(&back, &report, 0.25).is_empty());
    }

    #[test]
    fn a_bad_field_or_a_missing_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old-report.json");
        let mut json = serde_json::to_value(sample::report()).expect("encode");
        json["meta"]["settings"]["rounds"] = "three".into();
        std::fs::write(&path, json.to_string()).expect("write");
        let err = format!(
            "{:#}",
            load(&path).expect_err("a string for rounds is rejected")
        );
        assert!(err.contains("old-report.json"), "{err}");
        assert!(
            err.contains("rounds") || err.contains("invalid type"),
            "{err}"
        );

        let missing = dir.path().join("nope.json");
        let err = format!("{:#}", load(&missing).expect_err("no such file"));
        assert!(err.contains("nope.json"), "{err}");
    }
}
