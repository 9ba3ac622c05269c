//! How fast to send: a fixed rate (open loop, every request has an intended send time) or `max`
//! (closed loop, each connection sends its next request as soon as the previous one completes).
//! Also the small duration syntax the command line takes (`500ms`, `10s`, `2m`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The request rate a run aims for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Open loop: this many requests per second in total, whatever the target does.
    PerSecond(f64),
    /// Closed loop: as fast as the connections allow. Latency is then service time.
    Max,
}

impl Rate {
    /// The target rate for reports: `None` for a closed loop.
    pub fn target(self) -> Option<f64> {
        match self {
            Rate::PerSecond(r) => Some(r),
            Rate::Max => None,
        }
    }

    /// The time between two consecutive intended send times.
    pub fn interval(self) -> Option<Duration> {
        self.target().map(|r| Duration::from_secs_f64(1.0 / r))
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            // Above a million per second the interval drops under a microsecond, below what the
            // pacer can keep; saying so beats silently sending slower.
            Ok(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Ok(Rate::PerSecond(r)),
            _ => Err(format!(
                "rate {s:?} is not valid: give requests per second (a number above 0 and at most \
                 1000000) or `max` for a closed loop"
            )),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::PerSecond(r) => write!(f, "{r}/s"),
            Rate::Max => f.write_str("max"),
        }
    }
}

/// Parses `250ms`, `10s`, `1.5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    let value = number.parse::<f64>().map(|n| n * scale);
    match value {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "duration {s:?} is not valid: write a positive number with a unit, e.g. `500ms`, `10s` or `2m`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("MAX".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("1000".parse::<Rate>(), Ok(Rate::PerSecond(1000.0)));
        assert_eq!("0.5".parse::<Rate>(), Ok(Rate::PerSecond(0.5)));
        for bad in ["0", "-3", "NaN", "inf", "fast", "", "2000000"] {
            let err = bad.parse::<Rate>().unwrap_err();
            assert!(err.contains("requests per second"), "{bad}: {err}");
        }
    }

    #[test]
    fn interval_is_reciprocal_of_rate() {
        assert_eq!(
            Rate::PerSecond(1000.0).interval(),
            Some(Duration::from_millis(1))
        );
        assert_eq!(Rate::Max.interval(), None);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "0s", "ten", "5 parsecs", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
