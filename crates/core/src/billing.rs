//! Who pays (SPEC §2, §4.2): billing modes, and a request's price split into base and markup.
//! How much to hold is [`crate::hold`]; how a charge becomes transfers, [`crate::transfers`].

use crate::catalog::Model;
use crate::credits::Credits;
use crate::markup::Margin;
use crate::price::Usage;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a request is billed. `Test` is the wire value of sandbox mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BillingMode {
    Developer,
    User,
    Test,
}

impl BillingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingMode::Developer => "developer",
            BillingMode::User => "user",
            BillingMode::Test => "test",
        }
    }
}

impl fmt::Display for BillingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BillingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "developer" => Ok(BillingMode::Developer),
            "user" => Ok(BillingMode::User),
            "test" => Ok(BillingMode::Test),
            other => Err(format!("billing_mode must be one of developer, user, test; got `{other}`")),
        }
    }
}

/// A request's price split: what the payer is charged in total, and how it divides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Charge {
    pub base: Credits,
    pub markup: Credits,
}

impl Charge {
    /// Base from usage, markup on top (`Margin::ZERO` outside user mode).
    pub fn for_usage(model: &Model, usage: &Usage, margin: Margin) -> Charge {
        let base = model.price.cost(usage);
        Charge { base, markup: margin.markup_on(base) }
    }

    pub fn total(&self) -> Credits {
        Credits(self.base.0.saturating_add(self.markup.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use proptest::prelude::*;

    #[test]
    fn billing_modes_parse_strictly() {
        assert_eq!("test".parse::<BillingMode>(), Ok(BillingMode::Test));
        assert!("sandbox".parse::<BillingMode>().is_err());
        assert!("Developer".parse::<BillingMode>().is_err());
    }

    proptest! {
        /// A user-mode charge (SPEC §4.2): the user pays base + ceil(base × m); the base (to the
        /// platform) and the markup (to the developer) add up to exactly what the user pays;
        /// the markup never undercharges and overcharges by less than one credit; a larger
        /// margin or a larger base never yields a smaller markup.
        #[test]
        fn user_charges_split_exactly_and_round_up(
            model_idx in 0usize..20, input in 0u64..5_000_000, output in 0u64..500_000, bps in 0u32..=100_000, extra_bps in 0u32..=1000,
        ) {
            let c = Catalog::builtin();
            let m = c.iter().nth(model_idx % c.len()).unwrap().clone();
            let usage = Usage { input_tokens: input, output_tokens: output, ..Default::default() };
            let margin = Margin::from_bps(bps).unwrap();
            let charge = Charge::for_usage(&m, &usage, margin);
            prop_assert_eq!(charge.base, m.price.cost(&usage));
            prop_assert_eq!(charge.total().0, charge.base.0 + charge.markup.0);
            let exact_times_10k = i128::from(charge.base.0) * i128::from(bps);
            prop_assert!(i128::from(charge.markup.0) * 10_000 >= exact_times_10k);
            prop_assert!(i128::from(charge.markup.0) * 10_000 < exact_times_10k + 10_000);
            let more = Margin::from_bps((bps + extra_bps).min(crate::markup::MARGIN_MAX_BPS)).unwrap();
            prop_assert!(more.markup_on(charge.base) >= charge.markup);
            prop_assert!(margin.markup_on(Credits(charge.base.0 + 1)) >= charge.markup);
            prop_assert_eq!(Charge::for_usage(&m, &usage, Margin::ZERO).markup, Credits(0));
        }
    }
}
