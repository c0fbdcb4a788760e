//! Proleptic Gregorian calendar arithmetic in days since 1970-01-01 (Howard Hinnant's
//! algorithms): the one place Quota turns dates into numbers and back (catalog price dates,
//! RFC 3339 output, analytics buckets, payout dates).

/// Days since 1970-01-01 → (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01: the inverse of [`civil_from_days`].
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` → days since 1970-01-01, for a date that exists (leap years included).
pub fn parse_date(s: &str) -> Option<i64> {
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    // A day past the month's end rolls into the next month: refuse it.
    (civil_from_days(days) == (y, m, d)).then_some(days)
}

/// An RFC 3339 date-time (`2024-03-03T23:59:59Z`, `2024-03-03T23:59:59.5+02:00`, lower-case `t`
/// and `z` too) → Unix milliseconds. Fractions beyond milliseconds are truncated; a leap second
/// (`:60`) counts as the next second's start, as Unix time does.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    const MINUTE_MS: i64 = 60_000;
    let (date, rest) = (s.get(..10)?, s.get(10..)?);
    let days = parse_date(date)?;
    let rest = rest.strip_prefix(['T', 't'])?;
    let two = |t: &str| -> Option<i64> { t.bytes().all(|b| b.is_ascii_digit()).then(|| t.parse().ok())? };
    let (h, m, sec) = (two(rest.get(0..2)?)?, two(rest.get(3..5)?)?, two(rest.get(6..8)?)?);
    if rest.get(2..3)? != ":" || rest.get(5..6)? != ":" || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let mut rest = &rest[8..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms: String = frac[..digits].chars().chain("00".chars()).take(3).collect();
        millis = ms.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let (oh, om) = (two(rest.get(1..3)?)?, two(rest.get(4..6)?)?);
            if rest.len() != 6 || rest.get(3..4)? != ":" || oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 60 + om)
        }
    };
    let local_ms = days * 86_400_000 + (h * 3600 + m * 60 + sec) * 1000 + millis;
    Some(local_ms - offset_minutes * MINUTE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc3339_accepts_z_and_numeric_offsets() {
        let utc = 1_709_510_399_000; // 2024-03-03T23:59:59Z
        assert_eq!(parse_rfc3339("2024-03-03T23:59:59Z"), Some(utc));
        assert_eq!(parse_rfc3339("2024-03-03t23:59:59z"), Some(utc));
        assert_eq!(parse_rfc3339("2024-03-03T23:59:59+00:00"), Some(utc));
        assert_eq!(parse_rfc3339("2024-03-03T23:59:59-00:00"), Some(utc));
        assert_eq!(parse_rfc3339("2024-03-04T01:59:59+02:00"), Some(utc));
        assert_eq!(parse_rfc3339("2024-03-03T18:29:59-05:30"), Some(utc));
        assert_eq!(parse_rfc3339("2024-03-03T23:59:59.5Z"), Some(utc + 500));
        assert_eq!(parse_rfc3339("2024-03-03T23:59:59.123456+00:00"), Some(utc + 123));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    }

    #[test]
    fn rfc3339_refuses_what_is_not_rfc3339() {
        for bad in [
            "2024-03-03",
            "2024-03-03T23:59:59",
            "2024-03-03T23:59Z",
            "2024-03-03T24:00:00Z",
            "2024-03-03T23:60:00Z",
            "2024-03-03T23:59:59.Z",
            "2024-03-03T23:59:59+2:00",
            "2024-03-03T23:59:59+02",
            "2024-03-03T23:59:59+02:00:00",
            "2024-03-03T23:59:59+24:00",
            "2024-03-03T+1:59:59Z",
            "2024-02-30T00:00:00Z",
            "2024-03-03 23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_real_dates_only() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2025-11-01"), Some(20_393));
        assert_eq!(parse_date("2000-02-29"), Some(11_016));
        assert_eq!(parse_date("2001-02-29"), None);
        assert_eq!(parse_date("2025-13-01"), None);
        assert_eq!(parse_date("2025-1-01"), None);
        assert_eq!(parse_date("nope"), None);
    }

    proptest! {
        #[test]
        fn days_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
