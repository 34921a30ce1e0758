//! Wall-clock times as the wire formats carry them: Unix nanoseconds (protobuf) and RFC 3339
//! seconds (Kubernetes JSON). Shared by every layer that stamps or renders a time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix ns of `t`; 0 for a time before the epoch, `u64::MAX` past year 2554.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 in UTC with whole seconds, as metav1.Time marshals ("2026-11-22T10:04:05Z").
pub fn rfc3339_seconds(unix_nano: u64) -> String {
    let secs = unix_nano / 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The current wall-clock time, Unix ns.
pub fn now_unix_nano() -> u64 {
    unix_nanos(SystemTime::now())
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_in_utc_seconds() {
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z, a leap day.
        assert_eq!(
            rfc3339_seconds(1_709_210_096_999_999_999),
            "2024-02-29T12:34:56Z"
        );
    }
}
