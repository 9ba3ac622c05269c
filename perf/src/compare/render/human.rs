//! Numbers for people: thousands separators, µs/ms, KB/MB (1,024-based, for memory), MB/s
//! (10⁶-based, for throughput). Used by the report, the goals and the charts alike, so one figure
//! reads the same everywhere. A figure that is not finite prints as `—`.

/// `12,345` (rounded to an integer).
pub(crate) fn int(x: f64) -> String {
    use thousands::Separable as _;
    if !x.is_finite() {
        return "—".to_owned();
    }
    // `+ 0.0` turns a negative zero (from rounding -0.3) into `0`, not `-0`.
    format!("{:.0}", x.round() + 0.0).separate_with_commas()
}

/// `1,000`.
pub(crate) fn count(n: u64) -> String {
    int(n as f64)
}

/// A rate or ratio-like figure: integers from 100 up, one decimal from 10, two below.
pub(crate) fn rate(x: f64) -> String {
    match x.abs() {
        v if !v.is_finite() => "—".to_owned(),
        v if v >= 100.0 => int(x),
        v if v >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

/// `850 µs`, `1.23 ms`, `12.3 ms`, `123 ms`, `1.23 s`.
pub(crate) fn latency_us(us: f64) -> String {
    match us.abs() {
        v if !v.is_finite() => "—".to_owned(),
        v if v < 1_000.0 => format!("{us:.0} µs"),
        v if v < 10_000.0 => format!("{:.2} ms", us / 1e3),
        v if v < 100_000.0 => format!("{:.1} ms", us / 1e3),
        v if v < 1_000_000.0 => format!("{:.0} ms", us / 1e3),
        _ => format!("{:.2} s", us / 1e6),
    }
}

/// Added latency with its sign: `+130 µs`, `-20 µs`, `+1.20 ms`.
pub(crate) fn added_us(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "+" };
    format!("{sign}{}", latency_us(us.unsigned_abs() as f64))
}

/// Added latency in milliseconds, the unit the published figures use: `+0.13 ms`.
pub(crate) fn added_ms(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "+" };
    format!("{sign}{:.2} ms", us.unsigned_abs() as f64 / 1e3)
}

/// Memory: `812 B`, `7.0 KB`, `16.2 MB`, `1.20 GB`.
pub(crate) fn bytes(b: f64) -> String {
    const K: f64 = 1024.0;
    match b.abs() {
        v if !v.is_finite() => "—".to_owned(),
        v if v < K => format!("{b:.0} B"),
        v if v < K * K => format!("{:.1} KB", b / K),
        v if v < K * K * K => format!("{:.1} MB", b / (K * K)),
        _ => format!("{:.2} GB", b / (K * K * K)),
    }
}

/// Throughput in decimal megabytes per second: `1,900 MB/s`, `12.5 MB/s`.
pub(crate) fn bytes_per_s(b: f64) -> String {
    format!("{} MB/s", rate(b / 1e6))
}

/// CPU time: `9.52 s`, `12.1 s`, `0.04 s`.
pub(crate) fn seconds(s: f64) -> String {
    format!("{} s", rate(s))
}

/// A fraction as a percentage: `59.4 %`.
pub(crate) fn percent(f: f64) -> String {
    if !f.is_finite() {
        return "—".to_owned();
    }
    format!("{:.1} %", f * 100.0)
}

/// A ratio: `0.43×`, `3.37×`.
pub(crate) fn times(f: f64) -> String {
    if !f.is_finite() {
        return "—".to_owned();
    }
    format!("{f:.2}×")
}

/// A regression figure by its name (`per_cpu_s`, `added_p99_us`, ...), in its unit.
pub(crate) fn figure(name: &str, value: f64) -> String {
    match name {
        n if n.ends_with("_us") => added_us(value.round() as i64),
        n if n.ends_with("_bytes") => bytes(value),
        "fraction_of_direct" => percent(value),
        _ => rate(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.4), "999");
        assert_eq!(int(1_000.0), "1,000");
        assert_eq!(int(62_400.0), "62,400");
        assert_eq!(int(1_234_567.0), "1,234,567");
        assert_eq!(int(-12_345.0), "-12,345");
        assert_eq!(int(-0.3), "0");
        assert_eq!(int(f64::NAN), "—");
        assert_eq!(rate(3.456), "3.46");
        assert_eq!(rate(45.67), "45.7");
        assert_eq!(rate(3_200.0), "3,200");
    }

    #[test]
    fn picks_readable_units() {
        assert_eq!(latency_us(850.0), "850 µs");
        assert_eq!(latency_us(1_234.0), "1.23 ms");
        assert_eq!(latency_us(12_345.0), "12.3 ms");
        assert_eq!(latency_us(123_456.0), "123 ms");
        assert_eq!(latency_us(1_234_567.0), "1.23 s");
        assert_eq!(added_us(130), "+130 µs");
        assert_eq!(added_us(-20), "-20 µs");
        assert_eq!(added_ms(230), "+0.23 ms");
        assert_eq!(bytes(812.0), "812 B");
        assert_eq!(bytes(7_168.0), "7.0 KB");
        assert_eq!(bytes(9.0 * 1_048_576.0), "9.0 MB");
        assert_eq!(bytes_per_s(1.9e9), "1,900 MB/s");
        assert_eq!(percent(0.594), "59.4 %");
        assert_eq!(times(0.43), "0.43×");
        assert_eq!(figure("added_p99_us", 420.0), "+420 µs");
        assert_eq!(figure("memory_per_conn_bytes", 10_240.0), "10.0 KB");
    }
}
