//! Times as admins type them (`--at`, `--expunged-between`) and as every command prints them:
//! Unix seconds, or a UTC calendar date and time. No time zone database: a restore point is an
//! instant, and UTC names it without ambiguity.

use crate::error::{Error, Result};

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `1763779200`, `2026-11-22`, `2026-11-22T13:05`, `2026-11-22T13:05:09`,
/// `2026-11-22 13:05:09`, each optionally ending in `Z`, all UTC. A date alone is that day's
/// first second, so `--at 2026-11-22` restores what the last backup before that day recorded.
pub fn parse_time(s: &str) -> Result<i64> {
    let bad = || {
        Error::usage(format!(
            "{s:?} is not a time: give Unix seconds or YYYY-MM-DD[THH:MM[:SS]] (UTC)"
        ))
    };
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let num = |v: &str, digits: usize| -> Result<i64> {
        if v.len() != digits || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        v.parse().map_err(|_| bad())
    };
    let mut d = date.split('-');
    let (Some(y), Some(m), Some(day), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(bad());
    };
    let (y, m, day) = (num(y, 4)?, num(m, 2)? as u32, num(day, 2)? as u32);
    if !(1..=12).contains(&m)
        || day == 0
        || civil_from_days(days_from_civil(y, m, day)) != (y, m, day)
    {
        return Err(bad());
    }
    let mut secs = 0;
    if let Some(time) = time {
        let parts: Vec<&str> = time.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let h = num(parts[0], 2)?;
        let mi = num(parts[1], 2)?;
        let se = if parts.len() == 3 {
            num(parts[2], 2)?
        } else {
            0
        };
        if h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        secs = h * 3600 + mi * 60 + se;
    }
    Ok(days_from_civil(y, m, day) * 86_400 + secs)
}

/// The calendar buckets of an instant (UTC) that retention counts in: the day, the ISO week
/// (its year and number, weeks from Monday), the month and the year.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalendarBuckets {
    pub day: i64,
    pub week: (i64, u32),
    pub month: (i64, u32),
    pub year: i64,
}

pub fn calendar_buckets(t: i64) -> CalendarBuckets {
    let day = t.div_euclid(86_400);
    let (y, m, _) = civil_from_days(day);
    // 1970-01-01 was a Thursday: Monday is 0.
    let weekday = (day + 3).rem_euclid(7);
    let thursday = day - weekday + 3;
    let (iso_year, _, _) = civil_from_days(thursday);
    let week = ((thursday - days_from_civil(iso_year, 1, 1)).div_euclid(7) + 1) as u32;
    CalendarBuckets {
        day,
        week: (iso_year, week),
        month: (y, m),
        year: y,
    }
}

/// `2026-11-22T13:05:09Z`.
pub fn format_utc(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The current time in Unix seconds (0 before 1970, which no real clock reads).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_print() {
        assert_eq!(parse_time("0").unwrap(), 0);
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400);
        assert_eq!(parse_time("2026-11-22T13:05:09Z").unwrap(), 1_795_352_709);
        assert_eq!(parse_time("2026-11-22 13:05").unwrap(), 1_795_352_700);
        assert_eq!(format_utc(1_795_352_709), "2026-11-22T13:05:09Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
        for bad in [
            "",
            "2026-02-30",
            "2026-13-01",
            "26-11-22",
            "2026-11-22T25:00",
            "yesterday",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        for t in [0, 951_782_400, 1_795_352_709, 4_102_444_800] {
            assert_eq!(parse_time(&format_utc(t)).unwrap(), t);
        }
        // ISO weeks: 2026-01-01 is a Thursday (week 1 of 2026); 2027-01-01 a Friday (week 53
        // of 2026); 2024-12-30 a Monday (week 1 of 2025).
        let w = |d: &str| calendar_buckets(parse_time(d).unwrap()).week;
        assert_eq!(w("2026-01-01"), (2026, 1));
        assert_eq!(w("2027-01-01"), (2026, 53));
        assert_eq!(w("2024-12-30"), (2025, 1));
        assert_eq!(w("2026-12-07"), (2026, 50));
        let b = calendar_buckets(parse_time("2026-12-07T23:59:59").unwrap());
        assert_eq!((b.month, b.year), ((2026, 12), 2026));
    }
}
