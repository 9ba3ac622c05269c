//! Time windows: `hours = { days = "Mon-Fri", from = "09:00", to = "17:00", tz = "Europe/London" }`.
//! The window is read on the local wall clock of the IANA zone (jiff's bundled tzdb), so it follows
//! DST changes; `days` names the day a window starts on, so `from = "22:00", to = "06:00"` runs
//! overnight.

use std::fmt;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;

/// The TOML form, validated into [`Hours`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HoursSpec {
    #[serde(default)]
    days: Option<String>,
    from: String,
    to: String,
    #[serde(default)]
    tz: Option<String>,
}

/// A compiled window: a weekday set, a half-open minute range `[from, to)` and a time zone.
#[derive(Clone)]
pub struct Hours {
    /// Bit 0 = Monday ... bit 6 = Sunday.
    days: u8,
    from: u16,
    to: u16,
    tz: TimeZone,
    text: Box<str>,
}

const ALL_DAYS: u8 = 0b111_1111;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Hours {
    /// Builds a window from its parts; `tz` is an IANA name such as `Europe/London` or `UTC`.
    pub fn new(days: Option<&str>, from: &str, to: &str, tz: Option<&str>) -> Result<Self, String> {
        let day_mask = match days {
            None => ALL_DAYS,
            Some(text) => parse_days(text)?,
        };
        let from_min = parse_clock(from, false)?;
        let to_min = parse_clock(to, true)?;
        if from_min == to_min {
            return Err(format!(
                "hours from {from:?} to {to:?} is an empty window; use from = \"00:00\", to = \"24:00\" for all day"
            ));
        }
        let tz_name = tz.unwrap_or("UTC");
        let zone = TimeZone::get(tz_name).map_err(|e| {
            format!(
                "unknown time zone {tz_name:?} ({e}); use an IANA name such as \"Europe/London\""
            )
        })?;
        let text = format!("{} {from}-{to} {tz_name}", days.unwrap_or("daily"));
        Ok(Self {
            days: day_mask,
            from: from_min,
            to: to_min,
            tz: zone,
            text: text.into(),
        })
    }

    /// Whether `time` falls in the window, on the zone's wall clock.
    pub fn contains(&self, time: Timestamp) -> bool {
        let local = self.tz.to_datetime(time);
        let day = local.weekday().to_monday_zero_offset();
        let minute =
            u16::from(local.hour().unsigned_abs()) * 60 + u16::from(local.minute().unsigned_abs());
        let on = |d: i8| self.days & (1 << d) != 0;
        if self.from < self.to {
            on(day) && (self.from..self.to).contains(&minute)
        } else {
            // Overnight: the evening part belongs to today, the morning part to yesterday's window.
            (on(day) && minute >= self.from) || (on((day + 6) % 7) && minute < self.to)
        }
    }
}

impl TryFrom<HoursSpec> for Hours {
    type Error = String;

    fn try_from(spec: HoursSpec) -> Result<Self, String> {
        Self::new(
            spec.days.as_deref(),
            &spec.from,
            &spec.to,
            spec.tz.as_deref(),
        )
    }
}

impl fmt::Debug for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hours({})", self.text)
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `"Mon-Fri"`, `"Mon,Wed,Fri"`, `"Fri-Mon"` (wraps), `"Sat-Sun, Wed"`, `"*"`.
fn parse_days(text: &str) -> Result<u8, String> {
    if text.trim() == "*" {
        return Ok(ALL_DAYS);
    }
    let day = |name: &str| {
        let lower = name.trim().to_ascii_lowercase();
        DAY_NAMES.iter().position(|d| *d == lower).ok_or_else(|| {
            format!("unknown day {name:?} in {text:?}; use Mon, Tue, Wed, Thu, Fri, Sat, Sun")
        })
    };
    let mut mask = 0u8;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (mut d, end) = (day(a)?, day(b)?);
                loop {
                    mask |= 1 << d;
                    if d == end {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day(part)?,
        }
    }
    Ok(mask)
}

/// `"HH:MM"` in minutes since midnight; `"24:00"` is accepted as an end.
fn parse_clock(text: &str, is_end: bool) -> Result<u16, String> {
    let bad = || format!("time {text:?} must be \"HH:MM\" on a 24-hour clock, e.g. \"09:00\"");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    // `u16::from_str` accepts a sign (`"+9"`): require the digits themselves.
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if (h == 24 && m == 0 && is_end) || (h < 24 && m < 60) {
        Ok(h * 60 + m)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn business_hours_in_london_follow_dst() {
        let h = Hours::new(Some("Mon-Fri"), "09:00", "17:00", Some("Europe/London")).unwrap();
        // Winter (GMT): 09:00 local is 09:00Z.
        assert!(h.contains(ts("2026-11-23T09:00:00Z")));
        assert!(!h.contains(ts("2026-11-23T08:59:59Z")));
        assert!(!h.contains(ts("2026-11-23T17:00:00Z")));
        // Summer (BST): 09:00 local is 08:00Z.
        assert!(h.contains(ts("2026-07-06T08:00:00Z")));
        assert!(!h.contains(ts("2026-07-06T16:00:00Z")));
        // Saturday.
        assert!(!h.contains(ts("2026-11-28T12:00:00Z")));
    }

    #[test]
    fn dst_change_days() {
        // 2026-03-29: London springs forward at 01:00Z (01:00 GMT -> 02:00 BST).
        let h = Hours::new(None, "01:30", "02:30", Some("Europe/London")).unwrap();
        assert!(!h.contains(ts("2026-03-29T00:45:00Z"))); // 00:45 GMT
        assert!(h.contains(ts("2026-03-29T01:15:00Z"))); // 02:15 BST
        assert!(!h.contains(ts("2026-03-29T01:30:00Z"))); // 02:30 BST
        // 2026-10-25: falls back at 01:00Z (02:00 BST -> 01:00 GMT): 01:30 local happens twice.
        assert!(h.contains(ts("2026-10-25T00:30:00Z"))); // 01:30 BST
        assert!(h.contains(ts("2026-10-25T01:30:00Z"))); // 01:30 GMT
        assert!(!h.contains(ts("2026-10-25T02:30:00Z"))); // 02:30 GMT
    }

    #[test]
    fn other_zones_and_overnight() {
        let ny = Hours::new(Some("Mon-Fri"), "09:00", "17:00", Some("America/New_York")).unwrap();
        assert!(ny.contains(ts("2026-11-23T14:00:00Z"))); // 09:00 EST
        assert!(!ny.contains(ts("2026-11-23T13:59:00Z")));
        let night = Hours::new(Some("Fri"), "22:00", "06:00", Some("UTC")).unwrap();
        assert!(night.contains(ts("2026-11-27T23:00:00Z"))); // Friday night
        assert!(night.contains(ts("2026-11-28T05:59:00Z"))); // Saturday morning, Friday's window
        assert!(!night.contains(ts("2026-11-28T23:00:00Z"))); // Saturday night
        assert!(!night.contains(ts("2026-11-27T05:00:00Z"))); // Friday morning, Thursday's window
    }

    #[test]
    fn day_lists_and_errors() {
        assert_eq!(parse_days("Mon-Fri").unwrap(), 0b001_1111);
        assert_eq!(parse_days("Fri-Mon").unwrap(), 0b111_0001);
        assert_eq!(parse_days("sat, sun").unwrap(), 0b110_0000);
        assert!(parse_days("Mon-Funday").is_err());
        assert!(Hours::new(None, "9:00", "17:00", None).is_err());
        for bad in ["+9:00", "-9:00", "0x:00", "09:+5", " 9:00", "09: 5"] {
            assert!(Hours::new(None, bad, "17:00", None).is_err(), "{bad}");
        }
        assert!(Hours::new(None, "09:00", "24:00", None).is_ok());
        assert!(Hours::new(None, "24:00", "09:00", None).is_err());
        assert!(Hours::new(None, "09:00", "09:00", None).is_err());
        assert!(Hours::new(None, "09:00", "10:00", Some("Mars/Olympus")).is_err());
    }
}
