//! The hold (SPEC §4.3(1–2), DESIGN §3): the most a request can cost, computed from its parsed
//! parts, and the rule that decides whether a wallet can reserve it.
//!
//! A hold is an **upper bound**, never an estimate: settlement is capped at it (see
//! [`crate::transfers::usage_charge`]), so a bound that a provider can beat is money the
//! platform loses. Each route walks its own parsed request and feeds a [`PromptBound`]:
//!
//! - text (and anything rendered into the prompt as text: tool calls, tool definitions, JSON
//!   schemas) at one token per UTF-8 byte — byte-level BPE tokenizers never produce more
//!   tokens than bytes — plus a fixed framing allowance per message and per request;
//! - an inline image at the model's documented per-image maximum;
//! - anything the gateway cannot measure (media by URL or file id, inline audio, video or
//!   documents, cached content, a part type it does not know) at the model's whole context
//!   window: the provider refuses a longer prompt, so that bound cannot be beaten.
//!
//! The prompt bound never exceeds the context window. Where a long-context tier exists and the
//! bound can cross its threshold, the whole hold is priced at the tier (`Price::rates_for`).
//! Because the bound comes from parsed values, whitespace and key order in the client's JSON
//! do not change it.

use crate::billing::Charge;
use crate::catalog::Model;
use crate::credits::Credits;
use crate::markup::Margin;
use crate::price::Usage;

/// Tokens a request can cost beyond its messages' content: the reply primer and framing.
pub const REQUEST_OVERHEAD_TOKENS: u64 = 16;
/// Tokens one message (or turn, or content block) can cost beyond its text: role markers and
/// separators (OpenAI documents 3–4 per message; 8 leaves room).
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 8;
/// Tokens one tool definition can cost beyond its JSON: the provider's rendering of it.
pub const TOOL_OVERHEAD_TOKENS: u64 = 16;

/// The input side of a hold, accumulated part by part from a parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptBound {
    /// Tokens from text, framing and exact counts.
    tokens: u64,
    /// Inline images, each bounded by the model's per-image maximum.
    images: u64,
    /// Some part cannot be measured: the bound is the whole context window.
    unmeasurable: bool,
}

impl Default for PromptBound {
    fn default() -> Self {
        PromptBound::new()
    }
}

impl PromptBound {
    /// An empty request: its framing allowance only.
    pub fn new() -> PromptBound {
        PromptBound { tokens: REQUEST_OVERHEAD_TOKENS, images: 0, unmeasurable: false }
    }

    /// Text the provider tokenizes: at most one token per UTF-8 byte.
    pub fn text(&mut self, text: &str) {
        self.add(text.len() as u64);
    }

    /// A JSON value rendered into the prompt (tool arguments, a schema): its compact text, one
    /// token per byte, whatever whitespace or key order the client used.
    pub fn json(&mut self, value: &serde_json::Value) {
        self.add(compact_json_len(value));
    }

    /// A JSON object rendered into the prompt (see [`PromptBound::json`]).
    pub fn json_map(&mut self, map: &serde_json::Map<String, serde_json::Value>) {
        self.add(compact_json_len(map));
    }

    /// Tokens known exactly (a count the gateway made) or a fixed allowance.
    pub fn add(&mut self, tokens: u64) {
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// One message, turn or content block's framing.
    pub fn message(&mut self) {
        self.add(MESSAGE_OVERHEAD_TOKENS);
    }

    /// One tool definition's framing (its JSON goes through [`PromptBound::json`]).
    pub fn tool(&mut self) {
        self.add(TOOL_OVERHEAD_TOKENS);
    }

    /// An inline image (base64 data in the request).
    pub fn image(&mut self) {
        self.images = self.images.saturating_add(1);
    }

    /// A part the gateway cannot measure: media by URL or file id, inline audio, video or
    /// documents, provider-side cached content, an unknown part type.
    pub fn unmeasurable(&mut self) {
        self.unmeasurable = true;
    }

    pub fn is_unmeasurable(&self) -> bool {
        self.unmeasurable
    }

    /// The most prompt tokens the request can be billed for on `model`: never above its
    /// context window.
    pub fn tokens_max(&self, model: &Model) -> u64 {
        if self.unmeasurable {
            return model.context_window;
        }
        self.tokens.saturating_add(self.images.saturating_mul(model.image_part_tokens_max)).min(model.context_window)
    }
}

/// Length of `value`'s compact JSON text, without building it.
fn compact_json_len(value: &impl serde::Serialize) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// What a request can use at most: the two numbers a hold is priced from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldBound {
    /// The most prompt tokens (already clamped to the context window).
    pub prompt_tokens_max: u64,
    /// The most output tokens, all choices together.
    pub output_tokens_max: u64,
    /// How many choices (candidates) the output is for: `max_tokens` applies to each.
    pub choices: u64,
}

impl HoldBound {
    /// The bound of a request on `model` whose prompt is bounded by `prompt`, asking for
    /// `requested_max` output tokens per choice (`None`: the model's maximum), `choices` times.
    pub fn new(model: &Model, prompt: &PromptBound, requested_max: Option<u64>, choices: u64) -> HoldBound {
        HoldBound::counted(model, prompt.tokens_max(model), requested_max, choices)
    }

    /// The same prompt with a known exact count (the sandbox counts its own tokens).
    pub fn counted(model: &Model, prompt_tokens: u64, requested_max: Option<u64>, choices: u64) -> HoldBound {
        HoldBound {
            prompt_tokens_max: prompt_tokens.min(model.context_window),
            output_tokens_max: output_tokens_to_reserve(model, requested_max).saturating_mul(choices.max(1)),
            choices: choices.max(1),
        }
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

/// The most a request within `bound` can cost (SPEC §4.3(1)): every prompt token at the
/// dearest input rate (so cache writes cannot exceed it), the tier's prices when the prompt
/// bound crosses its threshold, the output at its maximum, with markup.
pub fn hold_amount(model: &Model, bound: &HoldBound, margin: Margin) -> Charge {
    let prompt = bound.prompt_tokens_max.min(model.context_window);
    let mut price = model.price;
    // Price the whole prompt at the dearest input rate of whichever tier applies.
    price.base.input = price.base.prompt_rate_max();
    if let Some(tier) = price.long_context.as_mut() {
        tier.rates.input = tier.rates.prompt_rate_max();
    }
    let usage = Usage { input_tokens: prompt, output_tokens: bound.output_tokens_max, ..Default::default() };
    let base = price.cost(&usage);
    Charge { base, markup: margin.markup_on(base) }
}

/// Whether an account with `balance` and `held` already reserved can reserve `amount` more
/// (SPEC §4.3(2), §4.5): the available balance covers it, and the balance is not a debt (a
/// wallet below zero from a refund reversal starts no request).
pub fn can_hold(balance: Credits, held: Credits, amount: Credits) -> bool {
    debug_assert!(held.0 >= 0 && amount.0 >= 0, "holds are never negative");
    balance.0 >= 0 && i128::from(balance.0) - i128::from(held.0) >= i128::from(amount.0)
}

/// The largest `max_tokens` (per choice) whose hold `available` covers, for a request with this
/// prompt bound and `choices` choices (SPEC §4.3(2)'s `max_affordable_tokens`); `None` when not
/// even one output token fits. `amount_of` says what is held of a [`Charge`] (the total, or
/// the base alone in the sandbox).
pub fn max_affordable_output_tokens(
    model: &Model,
    prompt_tokens_max: u64,
    choices: u64,
    available: Credits,
    margin: Margin,
    amount_of: impl Fn(&Charge) -> Credits,
) -> Option<u64> {
    let choices = choices.max(1);
    let fits = |per_choice: u64| {
        let bound = HoldBound { prompt_tokens_max, output_tokens_max: per_choice.saturating_mul(choices), choices };
        amount_of(&hold_amount(model, &bound, margin)) <= available
    };
    if !fits(1) {
        return None;
    }
    // The hold grows with the output, so the answer is found by bisection: `lo` fits, `hi` not.
    let (mut lo, mut hi) = (1u64, model.max_output_tokens.saturating_add(1));
    if fits(model.max_output_tokens) {
        return Some(model.max_output_tokens);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use proptest::prelude::*;

    fn model(id: &str) -> Model {
        (**Catalog::builtin().get(id).unwrap()).clone()
    }

    #[test]
    fn hold_for_gpt4o_mini_is_exact() {
        let m = model("gpt-4o-mini");
        let bound = HoldBound { prompt_tokens_max: 1000, output_tokens_max: 100, choices: 1 };
        // 1000 prompt × 0.15 + 100 output × 0.6 = 150 + 60.
        assert_eq!(hold_amount(&m, &bound, Margin::ZERO), Charge { base: Credits(210), markup: Credits(0) });
        let quarter = Margin::from_bps(2500).unwrap();
        assert_eq!(hold_amount(&m, &bound, quarter).total(), Credits(263));
    }

    #[test]
    fn output_reservation_is_clamped_to_the_model() {
        let m = model("gpt-4o");
        assert_eq!(output_tokens_to_reserve(&m, None), 16_384);
        assert_eq!(output_tokens_to_reserve(&m, Some(10)), 10);
        assert_eq!(output_tokens_to_reserve(&m, Some(1_000_000)), 16_384);
    }

    #[test]
    fn an_unmeasurable_part_bounds_the_prompt_by_the_context_window() {
        let m = model("google/gemini-2.5-flash");
        let mut p = PromptBound::new();
        p.text("Describe this video.");
        assert!(p.tokens_max(&m) < 100);
        p.unmeasurable();
        assert_eq!(p.tokens_max(&m), m.context_window);
    }

    #[test]
    fn images_add_the_models_per_image_maximum_and_never_pass_the_window() {
        let m = model("gpt-4o-mini");
        let mut p = PromptBound::new();
        p.image();
        p.image();
        assert_eq!(p.tokens_max(&m), REQUEST_OVERHEAD_TOKENS + 2 * m.image_part_tokens_max);
        for _ in 0..10_000 {
            p.image();
        }
        assert_eq!(p.tokens_max(&m), m.context_window);
    }

    #[test]
    fn a_bound_that_can_cross_the_long_context_threshold_is_priced_at_the_tier() {
        let m = model("google/gemini-2.5-pro");
        let tier = m.price.long_context.unwrap();
        let bound = HoldBound { prompt_tokens_max: tier.threshold_tokens + 1, output_tokens_max: 0, choices: 1 };
        let expected = (u128::from(tier.threshold_tokens + 1)
            * u128::from(tier.rates.input.max(tier.rates.cache_write)))
        .div_ceil(1_000_000);
        assert_eq!(hold_amount(&m, &bound, Margin::ZERO).base.0 as u128, expected);
        // A URL part bounds the prompt by the whole window, far past the threshold.
        let mut p = PromptBound::new();
        p.unmeasurable();
        assert!(p.tokens_max(&m) > tier.threshold_tokens);
    }

    #[test]
    fn json_is_counted_compactly_whatever_the_spacing_or_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b": 1,   "a": [1, 2]}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":[1,2],"b":1}"#).unwrap();
        let (mut x, mut y) = (PromptBound::new(), PromptBound::new());
        x.json(&a);
        y.json(&b);
        assert_eq!(x, y);
        assert_eq!(compact_json_len(&b), r#"{"a":[1,2],"b":1}"#.len() as u64);
    }

    #[test]
    fn a_debt_holds_nothing_and_available_must_cover_the_amount() {
        assert!(can_hold(Credits(100), Credits(40), Credits(60)));
        assert!(!can_hold(Credits(100), Credits(40), Credits(61)));
        assert!(!can_hold(Credits(-1), Credits(0), Credits(0)));
        assert!(can_hold(Credits(0), Credits(0), Credits(0)));
    }

    #[test]
    fn max_affordable_tokens_for_sonnet_from_fifty_cents() {
        // A Claude Sonnet request without max_tokens from a $0.50 wallet (issue 21's example):
        // 64,000 output tokens at $15/M is $0.96, so the answer names what fits.
        let m = model("anthropic/claude-sonnet-4.5");
        let prompt = 1_000;
        let available = Credits(500_000);
        let n = max_affordable_output_tokens(&m, prompt, 1, available, Margin::ZERO, Charge::total).unwrap();
        let fits = |out| {
            hold_amount(&m, &HoldBound { prompt_tokens_max: prompt, output_tokens_max: out, choices: 1 }, Margin::ZERO)
        };
        assert!(fits(n).total() <= available);
        assert!(fits(n + 1).total() > available);
        assert!(n < m.max_output_tokens);
        assert_eq!(max_affordable_output_tokens(&m, prompt, 1, Credits(1), Margin::ZERO, Charge::total), None);
    }

    proptest! {
        /// Whatever the request actually uses within its bounds, the charge fits the hold.
        #[test]
        fn any_usage_within_bounds_fits_the_hold(
            model_idx in 0usize..64, prompt_max in 0u64..2_000_000, out_max in 0u64..200_000,
            cached_frac in 0u64..=100, write_frac in 0u64..=100, write_1h_frac in 0u64..=100,
            out_frac in 0u64..=100, bps in 0u32..=100_000,
        ) {
            let c = Catalog::builtin();
            let m = c.iter().nth(model_idx % c.len()).unwrap().clone();
            let margin = Margin::from_bps(bps).unwrap();
            let bound = HoldBound::counted(&m, prompt_max, Some(out_max), 1);
            let held = hold_amount(&m, &bound, margin);
            let prompt = bound.prompt_tokens_max;
            let cached = prompt * cached_frac / 100;
            let write = (prompt - cached) * write_frac / 100;
            let write_1h = (prompt - cached - write) * write_1h_frac / 100;
            let usage = Usage {
                input_tokens: prompt - cached - write - write_1h, cached_tokens: cached, cache_write_tokens: write,
                cache_write_1h_tokens: write_1h, output_tokens: bound.output_tokens_max * out_frac / 100,
            };
            let charged = Charge::for_usage(&m, &usage, margin);
            prop_assert!(charged.total() <= held.total(), "charged {:?} held {:?}", charged, held);
            prop_assert!(charged.base <= held.base);
        }

        /// `max_affordable_output_tokens` is the largest output that fits, never one that doesn't.
        #[test]
        fn max_affordable_is_the_largest_that_fits(
            model_idx in 0usize..64, prompt in 0u64..300_000, available in 0i64..5_000_000, bps in 0u32..=30_000, n in 1u64..4,
        ) {
            let c = Catalog::builtin();
            let m = c.iter().nth(model_idx % c.len()).unwrap().clone();
            let margin = Margin::from_bps(bps).unwrap();
            let held = |per: u64| hold_amount(&m, &HoldBound { prompt_tokens_max: prompt, output_tokens_max: per * n, choices: n }, margin).total();
            match max_affordable_output_tokens(&m, prompt, n, Credits(available), margin, Charge::total) {
                Some(t) => {
                    prop_assert!(t >= 1 && t <= m.max_output_tokens);
                    prop_assert!(held(t).0 <= available);
                    prop_assert!(t == m.max_output_tokens || held(t + 1).0 > available);
                }
                None => prop_assert!(held(1).0 > available),
            }
        }
    }
}
