//! Who pays and how much to hold (SPEC §2, §4.2, §4.3): billing modes and reservation arithmetic.

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

/// The output tokens to reserve for: what the request asks for, clamped to the model's maximum;
/// the model's maximum when it asks for nothing.
pub fn output_tokens_to_reserve(model: &Model, requested_max: Option<u64>) -> u64 {
    match requested_max {
        Some(n) => n.min(model.max_output_tokens),
        None => model.max_output_tokens,
    }
}

/// The most a request can cost (SPEC §4.3.1): every prompt token at the dearest input rate (so
/// cache writes cannot exceed it), the prompt clamped to the context window (the provider refuses
/// longer ones), the output at its maximum, with markup.
pub fn reservation(model: &Model, prompt_tokens_max: u64, output_tokens_max: u64, margin: Margin) -> Charge {
    let prompt = prompt_tokens_max.min(model.context_window);
    let rates = model.price.rates_for(prompt);
    let dearest_input = rates.input.max(rates.cached_input).max(rates.cache_write);
    let mut price = model.price;
    // Price the whole prompt at the dearest input rate of whichever tier applies.
    price.base.input = price.base.input.max(price.base.cached_input).max(price.base.cache_write);
    if let Some(tier) = price.long_context.as_mut() {
        tier.rates.input = tier.rates.input.max(tier.rates.cached_input).max(tier.rates.cache_write);
    }
    debug_assert!(price.rates_for(prompt).input >= dearest_input);
    let usage = Usage { input_tokens: prompt, output_tokens: output_tokens_max, ..Default::default() };
    let base = price.cost(&usage);
    Charge { base, markup: margin.markup_on(base) }
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

    #[test]
    fn reservation_for_gpt4o_mini_is_exact() {
        let c = Catalog::builtin();
        let m = c.get("gpt-4o-mini").unwrap();
        // 1000 prompt × 0.15 + 100 output × 0.6 = 150 + 60.
        assert_eq!(reservation(m, 1000, 100, Margin::ZERO), Charge { base: Credits(210), markup: Credits(0) });
        let quarter = Margin::from_bps(2500).unwrap();
        assert_eq!(reservation(m, 1000, 100, quarter).total(), Credits(263));
    }

    #[test]
    fn output_reservation_is_clamped_to_the_model() {
        let c = Catalog::builtin();
        let m = c.get("gpt-4o").unwrap();
        assert_eq!(output_tokens_to_reserve(m, None), 16_384);
        assert_eq!(output_tokens_to_reserve(m, Some(10)), 10);
        assert_eq!(output_tokens_to_reserve(m, Some(1_000_000)), 16_384);
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

        /// Whatever the request actually uses within its bounds, the charge fits the hold.
        #[test]
        fn any_usage_within_bounds_fits_the_reservation(
            model_idx in 0usize..20, prompt_max in 0u64..2_000_000, out_max in 0u64..200_000,
            cached_frac in 0u64..=100, write_frac in 0u64..=100, out_frac in 0u64..=100, bps in 0u32..=100_000,
        ) {
            let c = Catalog::builtin();
            let m = c.iter().nth(model_idx % c.len()).unwrap().clone();
            let margin = Margin::from_bps(bps).unwrap();
            let held = reservation(&m, prompt_max, output_tokens_to_reserve(&m, Some(out_max)), margin);
            let prompt = prompt_max.min(m.context_window);
            let cached = prompt * cached_frac / 100;
            let write = (prompt - cached) * write_frac / 100;
            let usage = Usage {
                input_tokens: prompt - cached - write, cached_tokens: cached, cache_write_tokens: write,
                output_tokens: output_tokens_to_reserve(&m, Some(out_max)) * out_frac / 100,
            };
            let charged = Charge::for_usage(&m, &usage, margin);
            prop_assert!(charged.total() <= held.total(), "charged {:?} held {:?}", charged, held);
            prop_assert!(charged.base <= held.base);
        }
    }
}
