//! Markup (SPEC §4.2): an app's `profit_margin` is a fraction 0 ≤ m ≤ 10 stored exactly as basis
//! points; a user pays `base + ceil(base × m)`.

use crate::credits::{div_ceil_u128, Credits};
use serde::{Deserialize, Serialize};

/// Basis points in 1.0.
pub const BPS_PER_UNIT: u32 = 10_000;
/// The largest margin allowed: 10 (1000%).
pub const MARGIN_MAX_BPS: u32 = 10 * BPS_PER_UNIT;

/// A profit margin in basis points (1 bp = 0.0001). Only constructible in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Margin(u32);

impl Margin {
    pub const ZERO: Margin = Margin(0);

    pub fn from_bps(bps: u32) -> Result<Margin, String> {
        if bps > MARGIN_MAX_BPS {
            return Err(format!("profit_margin must be between 0 and 10, got {bps} bps"));
        }
        Ok(Margin(bps))
    }

    /// Parse a JSON number like `0.25` exactly into basis points. Accepts at most four decimal
    /// places so the stored value is exactly what was asked for.
    pub fn parse_decimal(text: &str) -> Result<Margin, String> {
        let t = text.trim();
        let err = || format!("profit_margin must be a number between 0 and 10 with at most 4 decimals, got `{t}`");
        let (int_part, frac_part) = match t.split_once('.') {
            Some((i, f)) => (i, f),
            None => (t, ""),
        };
        if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) || int_part.len() > 2 {
            return Err(err());
        }
        if frac_part.len() > 4 || !frac_part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let int: u32 = int_part.parse().map_err(|_| err())?;
        let mut frac: u32 = 0;
        for (i, b) in frac_part.bytes().enumerate() {
            frac += u32::from(b - b'0') * 10u32.pow(3 - i as u32);
        }
        Margin::from_bps(int * BPS_PER_UNIT + frac).map_err(|_| err())
    }

    pub fn bps(self) -> u32 {
        self.0
    }

    /// The margin as a percentage for people (`0.25` → `25%`, `0.105` → `10.5%`).
    pub fn to_percent_string(self) -> String {
        format!("{}%", self.to_percent_number())
    }

    /// The percentage without its sign (`0.105` → `10.5`), for a form field people edit.
    pub fn to_percent_number(self) -> String {
        let (int, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            int.to_string()
        } else {
            format!("{int}.{}", format!("{frac:02}").trim_end_matches('0'))
        }
    }

    /// What a user pays for `base`: the base plus its markup.
    pub fn with_markup(self, base: Credits) -> Credits {
        Credits(base.0.saturating_add(self.markup_on(base).0))
    }

    /// `ceil(base × m)`, in 128 bits. `base` must be ≥ 0.
    pub fn markup_on(self, base: Credits) -> Credits {
        assert!(base.0 >= 0, "markup on a negative base");
        let m = div_ceil_u128(base.0 as u128 * u128::from(self.0), u128::from(BPS_PER_UNIT));
        Credits(i64::try_from(m).expect("markup fits in i64: base ≤ i64::MAX and m ≤ 10 is checked by callers"))
    }

    /// The margin as a decimal string (`"0.25"`), for JSON.
    pub fn to_decimal_string(self) -> String {
        let int = self.0 / BPS_PER_UNIT;
        let frac = self.0 % BPS_PER_UNIT;
        if frac == 0 {
            return int.to_string();
        }
        let s = format!("{int}.{frac:04}");
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_decimal_is_exact() {
        assert_eq!(Margin::parse_decimal("0.25").unwrap().bps(), 2500);
        assert_eq!(Margin::parse_decimal("10").unwrap().bps(), 100_000);
        assert_eq!(Margin::parse_decimal("0.0001").unwrap().bps(), 1);
        assert!(Margin::parse_decimal("10.0001").is_err());
        assert!(Margin::parse_decimal("-1").is_err());
        assert!(Margin::parse_decimal("0.00001").is_err());
        assert!(Margin::parse_decimal("abc").is_err());
        assert_eq!(Margin::parse_decimal("1.5").unwrap().to_decimal_string(), "1.5");
    }

    #[test]
    fn markup_rounds_up() {
        let m = Margin::from_bps(2500).unwrap();
        assert_eq!(m.markup_on(Credits(1)), Credits(1));
        assert_eq!(m.markup_on(Credits(4)), Credits(1));
        assert_eq!(m.markup_on(Credits(5)), Credits(2));
        assert_eq!(Margin::ZERO.markup_on(Credits(12345)), Credits(0));
    }

    proptest! {
        #[test]
        fn markup_is_the_least_integer_not_below_the_exact_product(base in 0i64..=1_000_000_000_000_000, bps in 0u32..=MARGIN_MAX_BPS) {
            let m = Margin::from_bps(bps).unwrap().markup_on(Credits(base)).0 as i128;
            let exact_times_10k = base as i128 * bps as i128;
            prop_assert!(m * 10_000 >= exact_times_10k);
            prop_assert!((m - 1) * 10_000 < exact_times_10k || m == 0);
        }

        #[test]
        fn decimal_round_trips(bps in 0u32..=MARGIN_MAX_BPS) {
            let m = Margin::from_bps(bps).unwrap();
            prop_assert_eq!(Margin::parse_decimal(&m.to_decimal_string()).unwrap(), m);
        }
    }
}
