//! Phase *reserve* (SPEC §4.3(1–2)): hold the request's upper bound on the payer's wallet
//! before anything is sent upstream. A refusal is 402 `insufficient_credits` saying what the
//! hold needed, what was available, and — when some output would fit — the largest
//! `max_tokens` that would (`error.max_affordable_tokens`).

use crate::app::SharedState;
use crate::auth::Principal;
use crate::error::{internal, ApiError};
use quota_core::billing::Charge;
use quota_core::hold::{can_hold, hold_amount, max_affordable_output_tokens, HoldBound};
use quota_core::{AccountId, Credits, Model};
use quota_store::ledger::Hold;
use quota_store::LedgerError;

/// Hold the most this request can cost: base + markup in user mode. In the sandbox the
/// developer's wallet holds the base only; with a user token the user's wallet must still be
/// able to cover base + markup (SPEC §4.4), which is checked but not held: the user's money is
/// never spent in the sandbox.
pub async fn reserve(
    state: &SharedState,
    principal: &Principal,
    model: &Model,
    bound: &HoldBound,
) -> Result<Hold, ApiError> {
    let held = hold_amount(model, bound, principal.margin);
    if principal.sandbox() {
        if let Some(user) = &principal.user_id {
            let wallet = AccountId::wallet(user);
            let (balance, on_hold) = state.ledger.balance_and_held(&wallet).await.map_err(internal("reserve"))?;
            let available = Credits::new(balance.get() - on_hold.get());
            if !can_hold(balance, on_hold, held.total()) {
                return Err(refusal(state, model, bound, principal, available, held.total(), Charge::total)
                    .with_hint("the user's wallet could not pay for this request in production (sandbox check)"));
            }
        }
    }
    let (amount, amount_of): (Credits, fn(&Charge) -> Credits) =
        if principal.sandbox() { (held.base, |c| c.base) } else { (held.total(), Charge::total) };
    match state.ledger.hold(&principal.payer, amount).await {
        Ok(h) => {
            metrics::counter!("quota_reservations_total", "outcome" => "held").increment(1);
            Ok(h)
        }
        Err(LedgerError::Insufficient { available, needed }) => {
            metrics::counter!("quota_reservations_total", "outcome" => "insufficient").increment(1);
            Err(refusal(state, model, bound, principal, available, needed, amount_of))
        }
        Err(e) => Err(internal("reserve")(e)),
    }
}

/// The 402 for a hold of `needed` against `available`, with the `max_tokens` that would fit.
fn refusal(
    state: &SharedState,
    model: &Model,
    bound: &HoldBound,
    principal: &Principal,
    available: Credits,
    needed: Credits,
    amount_of: impl Fn(&Charge) -> Credits,
) -> ApiError {
    let available = Credits::new(available.get().max(0));
    let topup = format!("{}/dashboard/wallet", state.config.public_url.as_deref().unwrap_or("").trim_end_matches('/'));
    let error = ApiError::insufficient_credits(available.get(), needed.get());
    match max_affordable_output_tokens(
        model,
        bound.prompt_tokens_max,
        bound.choices,
        available,
        principal.margin,
        amount_of,
    ) {
        Some(tokens) => error.with_field("max_affordable_tokens", tokens).with_hint(format!(
            "the available balance covers this prompt with max_tokens up to {tokens} \
             (error.max_affordable_tokens); send a lower max_tokens, or top up at {topup}"
        )),
        None => error.with_hint(format!(
            "the available balance does not cover this prompt even with max_tokens = 1; top up at {topup}"
        )),
    }
}
