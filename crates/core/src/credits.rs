//! `Credits`: the one money type. 1,000,000 credits = $1.00 (micro-dollars), a signed 64-bit
//! integer; intermediate products are computed in 128 bits by the modules that multiply.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Credits per US dollar.
pub const CREDITS_PER_USD: i64 = 1_000_000;

/// An amount of money in credits (micro-dollars). Signed because platform accounts in a
/// double-entry ledger carry negative balances and a wallet may overshoot once (SPEC §4.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credits(pub(crate) i64);

impl Credits {
    pub const ZERO: Credits = Credits(0);

    /// An amount of `credits` (micro-dollars). The one way in from a raw integer: rows read
    /// from the database, amounts parsed from requests, test fixtures.
    pub const fn new(credits: i64) -> Credits {
        Credits(credits)
    }

    /// The raw integer, for storage and wire formats.
    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// Parse an amount given by a person (CLI, admin): a positive integer of credits no larger
    /// than `max`. Rejects zero, negatives, decimals and overflow with a message to show.
    pub fn parse_positive(text: &str, max: Credits) -> Result<Credits, String> {
        let trimmed = text.trim();
        let value: i64 = trimmed.parse().map_err(|_| format!("`{trimmed}` is not a whole number of credits"))?;
        if value <= 0 {
            return Err(format!("amount must be positive, got {value}"));
        }
        if value > max.0 {
            return Err(format!("amount {value} exceeds the maximum of {}", max.0));
        }
        Ok(Credits(value))
    }

    /// Dollars for people (pages, the dashboard): at least two decimals, at most six, no
    /// trailing zeros beyond two (`$0.15`, `$0.000450` → `$0.00045`), a minus sign (−) for
    /// debts. Never used for arithmetic.
    pub fn to_usd_display(self) -> String {
        let s = Credits(self.0.saturating_abs()).to_usd_string();
        let sign = if self.0 < 0 { "−" } else { "" };
        match s.split_once('.') {
            Some((int, frac)) => format!("{sign}{int}.{:0<2}", frac.trim_end_matches('0')),
            None => format!("{sign}{s}"),
        }
    }

    /// Dollars with six decimals, for people (dashboards, logs). Never used for arithmetic.
    pub fn to_usd_string(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        format!("{sign}${}.{:06}", abs / 1_000_000, abs % 1_000_000)
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A price in US cents for people (`1234` → `$12.34`): top-up packages are priced in cents.
pub fn cents_to_usd(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}${}.{:02}", abs / 100, abs % 100)
}

/// `ceil(numerator / denominator)` for non-negative 128-bit values.
pub fn div_ceil_u128(numerator: u128, denominator: u128) -> u128 {
    assert!(denominator > 0, "division by zero in money arithmetic");
    numerator.div_ceil(denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_positive_rejects_bad_amounts() {
        let max = Credits(1_000_000_000);
        assert!(Credits::parse_positive("0", max).is_err());
        assert!(Credits::parse_positive("-5", max).is_err());
        assert!(Credits::parse_positive("1.5", max).is_err());
        assert!(Credits::parse_positive("99999999999999999999999", max).is_err());
        assert!(Credits::parse_positive("1000000001", max).is_err());
        assert_eq!(Credits::parse_positive(" 42 ", max), Ok(Credits(42)));
    }

    #[test]
    fn cents_read_as_dollars() {
        assert_eq!(cents_to_usd(1234), "$12.34");
        assert_eq!(cents_to_usd(5), "$0.05");
        assert_eq!(cents_to_usd(-250), "-$2.50");
    }

    #[test]
    fn usd_string_is_exact() {
        assert_eq!(Credits(1_500_001).to_usd_string(), "$1.500001");
        assert_eq!(Credits(-5).to_usd_string(), "-$0.000005");
    }
}
