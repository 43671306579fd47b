//! UTC timestamps as the shim writes them, without a date-time crate: RFC 3339 with nanoseconds
//! for CRI log lines and state files (`2023-11-20T15:04:05.123456789Z`, always nine fraction
//! digits, as containerd wrote them before it switched to Go's trimmed `RFC3339Nano`; kubelet
//! parses both), and the kubelet's rotated-log suffix (`20231120-150405`).
//!
//! Days since the epoch become a civil date with Howard Hinnant's `civil_from_days` algorithm
//! (proleptic Gregorian calendar). Times before 1970 are clamped to the epoch: the clock of a
//! running node is never there.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an RFC 3339 timestamp with nanoseconds and `Z`, such as
/// `2023-11-20T15:04:05.123456789Z`.
pub const RFC3339_NANO_LEN: usize = 30;

/// A point in time split into UTC calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
}

impl Civil {
    fn from_system_time(time: SystemTime) -> Civil {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX / 2);
        let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        // secs_of_day < 86_400, so the casts below cannot truncate.
        let secs_of_day = secs_of_day as u32;
        Civil {
            year,
            month,
            day,
            hour: secs_of_day / 3600,
            minute: secs_of_day / 60 % 60,
            second: secs_of_day % 60,
            nanos: since.subsec_nanos(),
        }
    }
}

/// Converts days since 1970-01-01 to a (year, month 1-12, day 1-31) date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Fills `out` with the low decimal digits of `value`, zero-padded.
fn put_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Formats `time` as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` into a fixed buffer (no allocation; the
/// log writer calls it once per line).
pub fn write_rfc3339_nano(time: SystemTime, out: &mut [u8; RFC3339_NANO_LEN]) {
    let c = Civil::from_system_time(time);
    *out = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut out[0..4], c.year.clamp(0, 9999) as u64);
    put_digits(&mut out[5..7], c.month.into());
    put_digits(&mut out[8..10], c.day.into());
    put_digits(&mut out[11..13], c.hour.into());
    put_digits(&mut out[14..16], c.minute.into());
    put_digits(&mut out[17..19], c.second.into());
    put_digits(&mut out[20..29], c.nanos.into());
}

/// `time` as an RFC 3339 UTC string with nanoseconds: `2023-11-20T15:04:05.123456789Z`.
pub fn rfc3339_nano(time: SystemTime) -> String {
    let mut buf = [0u8; RFC3339_NANO_LEN];
    write_rfc3339_nano(time, &mut buf);
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&buf).into_owned()
}

/// `time` as the kubelet's rotated-log suffix, `YYYYMMDD-HHMMSS` in UTC (kubelet's container
/// log manager formats Go's `20060102-150405`).
pub fn rotation_suffix(time: SystemTime) -> String {
    let c = Civil::from_system_time(time);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        c.year.clamp(0, 9999),
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second
    )
}

/// Whether `s` has the shape of a [`rotation_suffix`] (`8 digits - 6 digits`).
pub fn is_rotation_suffix(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 15
        && b[8] == b'-'
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[9..].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_nano(at(0, 0)), "1970-01-01T00:00:00.000000000Z");
        // date -u -d @1700492645 → Mon Nov 20 15:04:05 UTC 2023
        assert_eq!(
            rfc3339_nano(at(1_700_492_645, 123_456_789)),
            "2023-11-20T15:04:05.123456789Z"
        );
        assert_eq!(rotation_suffix(at(1_700_492_645, 999)), "20231120-150405");
        // Leap day and the last second of a year.
        assert_eq!(
            rfc3339_nano(at(951_782_400, 1)),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339_nano(at(1_735_689_599, 0)),
            "2024-12-31T23:59:59.000000000Z"
        );
    }

    #[test]
    fn civil_dates_match_a_day_by_day_walk() {
        // Walk forward one day at a time from 1970-01-01 for 200 years with a naive calendar.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..(200 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn times_before_the_epoch_clamp_to_it() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339_nano(before), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn recognises_rotation_suffixes() {
        assert!(is_rotation_suffix("20231120-150405"));
        assert!(!is_rotation_suffix("20231120-15040"));
        assert!(!is_rotation_suffix("20231120_150405"));
        assert!(!is_rotation_suffix("2023112a-150405"));
        assert!(!is_rotation_suffix("20231120-150405.gz"));
    }
}
