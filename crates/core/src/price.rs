//! Prices and cost (SPEC §4.1): credits per 1M tokens per token class, an optional long-context
//! tier, and the one function that turns metered usage into a base cost.

use crate::credits::{div_ceil_u128, Credits};
use serde::{Deserialize, Serialize};

/// Tokens in the price unit ("per 1M tokens").
pub const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// What a request used, in the classes that are priced differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens billed at the full input price: excludes cached and cache-write tokens.
    pub input_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Input tokens written to the provider's prompt cache for 5 minutes (Anthropic bills them
    /// at a premium, 1.25× input).
    pub cache_write_tokens: u64,
    /// Input tokens written to the prompt cache for 1 hour (Anthropic's
    /// `cache_creation.ephemeral_1h_input_tokens`, 2× input).
    #[serde(default)]
    pub cache_write_1h_tokens: u64,
    /// Output tokens, reasoning/thinking tokens included.
    pub output_tokens: u64,
}

impl Usage {
    /// Every prompt-side token: what long-context thresholds are compared against.
    pub fn prompt_tokens_total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cached_tokens)
            .saturating_add(self.cache_write_tokens)
            .saturating_add(self.cache_write_1h_tokens)
    }

    /// Every cache write, whatever its lifetime (what usage records store).
    pub fn cache_writes_total(&self) -> u64 {
        self.cache_write_tokens.saturating_add(self.cache_write_1h_tokens)
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens_total().saturating_add(self.output_tokens)
    }
}

/// Credits per 1M tokens for each token class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rates {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    /// 1-hour cache writes (Anthropic: 2× input; 0 where the provider has none).
    #[serde(default)]
    pub cache_write_1h: u64,
    pub output: u64,
}

impl Rates {
    /// The dearest rate any prompt token can be billed at (the hold prices every prompt token
    /// at it, so no mix of cache reads and writes can exceed the hold).
    pub fn prompt_rate_max(&self) -> u64 {
        self.input.max(self.cached_input).max(self.cache_write).max(self.cache_write_1h)
    }
}

/// A model's price: base rates, and an optional tier that applies to the whole request once the
/// prompt exceeds `threshold_tokens` (input and output both, as the providers bill it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub base: Rates,
    pub long_context: Option<LongContextTier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongContextTier {
    pub threshold_tokens: u64,
    pub rates: Rates,
}

impl Price {
    /// The rates that apply to a request with this many prompt tokens.
    pub fn rates_for(&self, prompt_tokens: u64) -> &Rates {
        match &self.long_context {
            Some(tier) if prompt_tokens > tier.threshold_tokens => &tier.rates,
            _ => &self.base,
        }
    }

    /// Base cost: `ceil(Σ tokens × rate / 1M)`, all in 128-bit integers. Saturates at
    /// `i64::MAX` credits, which no real request approaches (it is $9.2 trillion).
    pub fn cost(&self, usage: &Usage) -> Credits {
        let r = self.rates_for(usage.prompt_tokens_total());
        let micro_sum: u128 = u128::from(usage.input_tokens) * u128::from(r.input)
            + u128::from(usage.cached_tokens) * u128::from(r.cached_input)
            + u128::from(usage.cache_write_tokens) * u128::from(r.cache_write)
            + u128::from(usage.cache_write_1h_tokens) * u128::from(r.cache_write_1h)
            + u128::from(usage.output_tokens) * u128::from(r.output);
        let cost = div_ceil_u128(micro_sum, TOKENS_PER_PRICE_UNIT);
        Credits(i64::try_from(cost).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_hour_cache_write_costs_twice_the_input_and_a_five_minute_one_one_and_a_quarter() {
        // Sonnet 4.5: $3 input, $3.75 5-minute writes, $6 1-hour writes, $15 output per 1M.
        let rates = Rates {
            input: 3_000_000,
            cached_input: 300_000,
            cache_write: 3_750_000,
            cache_write_1h: 6_000_000,
            output: 15_000_000,
        };
        let price = Price { base: rates, long_context: None };
        let usage = Usage {
            input_tokens: 100,
            cache_write_tokens: 1_000,
            cache_write_1h_tokens: 10_000,
            output_tokens: 50,
            ..Default::default()
        };
        // 100×3 + 1,000×3.75 + 10,000×6 + 50×15 = 300 + 3,750 + 60,000 + 750 = 64,800 credits.
        assert_eq!(price.cost(&usage), Credits(64_800));
        assert_eq!(usage.prompt_tokens_total(), 11_100);
    }
    use proptest::prelude::*;

    fn gpt4o_mini() -> Price {
        Price {
            base: Rates { input: 150_000, cached_input: 75_000, cache_write: 0, output: 600_000, ..Default::default() },
            long_context: None,
        }
    }

    fn sonnet() -> Price {
        Price {
            base: Rates {
                input: 3_000_000,
                cached_input: 300_000,
                cache_write: 3_750_000,
                output: 15_000_000,
                ..Default::default()
            },
            long_context: Some(LongContextTier {
                threshold_tokens: 200_000,
                rates: Rates {
                    input: 6_000_000,
                    cached_input: 600_000,
                    cache_write: 7_500_000,
                    output: 22_500_000,
                    ..Default::default()
                },
            }),
        }
    }

    #[test]
    fn cost_of_a_small_gpt4o_mini_request_rounds_up() {
        // 10 input × 0.15 + 5 output × 0.6 = 1.5 + 3.0 = 4.5 credits → 5.
        let u = Usage { input_tokens: 10, output_tokens: 5, ..Default::default() };
        assert_eq!(gpt4o_mini().cost(&u), Credits(5));
    }

    #[test]
    fn cached_tokens_use_their_own_rate() {
        let u = Usage { input_tokens: 1_000_000, cached_tokens: 1_000_000, ..Default::default() };
        assert_eq!(gpt4o_mini().cost(&u), Credits(225_000));
    }

    #[test]
    fn long_context_tier_applies_to_the_whole_request() {
        let below = Usage { input_tokens: 200_000, output_tokens: 1_000, ..Default::default() };
        let above = Usage { input_tokens: 200_001, output_tokens: 1_000, ..Default::default() };
        assert_eq!(sonnet().cost(&below), Credits(600_000 + 15_000));
        // 200,001 × 6 + 1,000 × 22.5 = 1,200,006 + 22,500.
        assert_eq!(sonnet().cost(&above), Credits(1_200_006 + 22_500));
        // Cached and cache-write tokens count toward the threshold.
        let cached = Usage { input_tokens: 100_000, cached_tokens: 100_001, ..Default::default() };
        assert_eq!(sonnet().cost(&cached), Credits(600_000 + 60_001));
    }

    #[test]
    fn zero_usage_costs_nothing() {
        assert_eq!(sonnet().cost(&Usage::default()), Credits(0));
    }

    proptest! {
        #[test]
        fn cost_is_the_ceiling_of_the_exact_sum(
            i in 0u64..10_000_000, c in 0u64..10_000_000, w in 0u64..10_000_000, o in 0u64..10_000_000,
            ri in 0u64..100_000_000, rc in 0u64..100_000_000, rw in 0u64..100_000_000, ro in 0u64..100_000_000,
        ) {
            let p = Price { base: Rates { input: ri, cached_input: rc, cache_write: rw, output: ro, ..Default::default() }, long_context: None };
            let u = Usage { input_tokens: i, cached_tokens: c, cache_write_tokens: w, output_tokens: o, ..Default::default() };
            let exact = i as u128 * ri as u128 + c as u128 * rc as u128 + w as u128 * rw as u128 + o as u128 * ro as u128;
            let cost = p.cost(&u).0 as u128;
            prop_assert!(cost * 1_000_000 >= exact);
            prop_assert!(cost == 0 || (cost - 1) * 1_000_000 < exact);
        }

        #[test]
        fn cost_is_monotonic_in_every_token_class(i in 0u64..1_000_000, o in 0u64..1_000_000, extra in 1u64..1000) {
            let p = sonnet();
            let u = Usage { input_tokens: i, output_tokens: o, ..Default::default() };
            let more_in = Usage { input_tokens: i + extra, ..u };
            let more_out = Usage { output_tokens: o + extra, ..u };
            prop_assert!(p.cost(&more_in) >= p.cost(&u));
            prop_assert!(p.cost(&more_out) >= p.cost(&u));
        }

        #[test]
        fn cost_never_panics_at_extremes(i in any::<u64>(), o in any::<u64>()) {
            let u = Usage { input_tokens: i, output_tokens: o, ..Default::default() };
            let c = sonnet().cost(&u);
            prop_assert!(c.0 >= 0);
        }
    }
}
