//! Payments and payouts as use cases (SPEC §10): start a checkout for a package, credit a paid
//! Stripe Checkout Session once, the dev provider's checkout, Stripe Connect onboarding, a
//! developer's earnings and payout history. Who pays is the caller's to decide (a session, a
//! user token with `account.write`, an API key). Not here: the providers themselves and the
//! top-up transfer (`crate::payments`), the payout batch (`crate::payments::payouts`), JSON.

use crate::app::SharedState;
use crate::error::{internal, ApiError};
use crate::payments::payouts::{EARNINGS_HOLD_MS, PAYOUT_MINIMUM};
use crate::payments::stripe::CheckoutRequest;
use crate::payments::{apply_topup, new_session, package, provider, stripe_error, ConfirmedTopup, Provider};
use axum::http::StatusCode;
use quota_core::{AccountId, Credits, TransferKind};
use quota_store::payments::{CheckoutSession, Payout};
use serde_json::Value;

const URL_MAX_CHARS: usize = 2048;

/// A checkout to start: which wallet, which package, where the payer comes back to.
pub struct CheckoutStart<'a> {
    pub user_id: &'a str,
    pub package_id: &'a str,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    /// This server's public base URL (the dev provider's page is under it).
    pub base_url: &'a str,
}

/// A checkout session at the provider: where to send the payer.
pub struct Checkout {
    pub session_id: String,
    pub checkout_url: String,
}

/// A Connect account and the link to its onboarding.
pub struct Onboarding {
    pub url: String,
    pub stripe_account_id: String,
}

/// A developer's earnings, in credits, straight from the ledger (SPEC §10.2).
pub struct Earnings {
    pub total_earned: i64,
    pub pending: i64,
    /// Pending older than the hold: paid by the next batch.
    pub pending_eligible: i64,
    pub available: i64,
    pub reserve: i64,
    pub in_transit: i64,
    pub paid: i64,
    pub minimum_payout: Credits,
    pub stripe_account_id: Option<String>,
}

fn check_return_url(name: &str, value: &str) -> Result<(), ApiError> {
    let ok = value.chars().count() <= URL_MAX_CHARS
        && url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{name} must be an http(s) URL of at most {URL_MAX_CHARS} characters")))
    }
}

/// Start a checkout; the wallet is credited only when the provider confirms payment.
pub async fn checkout(state: &SharedState, c: CheckoutStart<'_>) -> Result<Checkout, ApiError> {
    let provider = provider(state)?;
    let package = package(&state.config, c.package_id).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no package `{}`", c.package_id))
            .with_hint("GET /v1/packages lists the packages")
    })?;
    check_return_url("success_url", c.success_url)?;
    check_return_url("cancel_url", c.cancel_url)?;
    let (session_id, checkout_url) = match provider {
        Provider::Stripe { client, .. } => {
            let key = quota_core::ids::new_id("quota-checkout-");
            let request = CheckoutRequest {
                user_id: c.user_id,
                package_id: &package.id,
                package_name: &package.name,
                price_cents: package.price_cents,
                credits: package.credits,
                success_url: c.success_url,
                cancel_url: c.cancel_url,
                idempotency_key: &key,
            };
            client.create_checkout_session(&request).await.map_err(stripe_error)?
        }
        Provider::Dev => {
            let id = quota_core::ids::new_secret("cs_dev_");
            let url = format!("{}/payments/dev/checkout/{id}", c.base_url);
            (id, url)
        }
    };
    let now = state.clock.now_ms();
    let session = new_session(session_id.clone(), provider, c.user_id, package, c.success_url, c.cancel_url, now);
    state.store.insert_checkout_session(&session).await.map_err(internal("checkout session"))?;
    Ok(Checkout { session_id, checkout_url })
}

/// What a verified Stripe event did.
pub enum StripeOutcome {
    /// Seen before: nothing done.
    Duplicate,
    /// Recorded; whether it credited a wallet.
    Applied(bool),
}

/// Apply a verified Stripe event (its signature checked by the caller) at most once.
pub async fn stripe_event(state: &SharedState, event: &Value) -> Result<StripeOutcome, ApiError> {
    let (Some(event_id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
        return Err(ApiError::bad_request("event without id or type"));
    };
    if state.store.stripe_event_seen(event_id).await.map_err(internal("stripe event"))? {
        return Ok(StripeOutcome::Duplicate);
    }
    let object = &event["data"]["object"];
    let applied = match kind {
        // Card payments are paid when the session completes; delayed methods (bank debits)
        // complete unpaid and confirm with `async_payment_succeeded`.
        "checkout.session.completed" | "checkout.session.async_payment_succeeded"
            if object["payment_status"].as_str() == Some("paid") =>
        {
            credit_session(state, object, event_id).await?
        }
        _ => false,
    };
    // Recorded after applying: a crash in between means Stripe's retry applies it again,
    // which the session-derived transfer id makes a no-op.
    state.store.record_stripe_event(event_id, kind, state.clock.now_ms()).await.map_err(internal("stripe event"))?;
    Ok(StripeOutcome::Applied(applied))
}

/// The user, package and credits of a paid session we have no record of (created before a
/// restore, say), from the metadata Quota put on it, which Stripe's signature vouches for.
async fn from_metadata(state: &SharedState, object: &Value) -> Result<Option<(String, String, i64)>, ApiError> {
    let session_id = object["id"].as_str().unwrap_or_default();
    let m = &object["metadata"];
    let parsed = (
        m["quota_user_id"].as_str(),
        m["quota_package_id"].as_str(),
        m["quota_credits"].as_str().and_then(|c| c.parse::<i64>().ok()).filter(|c| *c > 0),
    );
    let (Some(u), Some(p), Some(c)) = parsed else {
        tracing::warn!(session = %session_id, "paid checkout session that is not Quota's; ignored");
        return Ok(None);
    };
    if state.store.user_by_id(u).await.map_err(internal("topup user"))?.is_none() {
        tracing::warn!(session = %session_id, "paid checkout session for an unknown user; ignored");
        return Ok(None);
    }
    Ok(Some((u.to_string(), p.to_string(), c)))
}

/// Credit the session a paid Checkout Session object names. Our own record of the session
/// decides the amount.
async fn credit_session(state: &SharedState, object: &Value, event_id: &str) -> Result<bool, ApiError> {
    let Some(session_id) = object["id"].as_str() else {
        return Err(ApiError::bad_request("checkout session without id"));
    };
    let stored = state.store.checkout_session(session_id).await.map_err(internal("checkout session"))?;
    let (user_id, package_id, credits) = match stored {
        Some(s) => (s.user_id, s.package_id, s.credits),
        None => match from_metadata(state, object).await? {
            Some(found) => found,
            None => return Ok(false),
        },
    };
    let topup = ConfirmedTopup {
        session_id,
        user_id: &user_id,
        package_id: &package_id,
        credits: Credits::new(credits),
        cause: event_id,
    };
    apply_topup(state, topup).await.map_err(internal("topup"))
}

/// An open session of the dev provider (404 otherwise, and with any other provider).
pub async fn dev_session(state: &SharedState, id: &str) -> Result<CheckoutSession, ApiError> {
    if !matches!(state.payments, Some(Provider::Dev)) {
        return Err(ApiError::not_found("checkout session"));
    }
    state
        .store
        .checkout_session(id)
        .await
        .map_err(internal("checkout session"))?
        .filter(|s| s.provider == "dev")
        .ok_or_else(|| ApiError::not_found("checkout session"))
}

/// "Pay" a dev checkout at once; the session (its success URL is where the payer goes next).
pub async fn dev_pay(state: &SharedState, id: &str) -> Result<CheckoutSession, ApiError> {
    let s = dev_session(state, id).await?;
    let topup = ConfirmedTopup {
        session_id: &s.id,
        user_id: &s.user_id,
        package_id: &s.package_id,
        credits: Credits::new(s.credits),
        cause: &format!("dev_checkout:{}", s.id),
    };
    apply_topup(state, topup).await.map_err(internal("dev topup"))?;
    Ok(s)
}

async fn onboarding_link(state: &SharedState, base_url: &str, account: &str) -> Result<String, ApiError> {
    let refresh_url = format!("{base_url}/dashboard/payouts?connect=refresh");
    let return_url = format!("{base_url}/dashboard/payouts?connect=return");
    match provider(state)? {
        Provider::Stripe { client, .. } => {
            client.create_account_link(account, &refresh_url, &return_url).await.map_err(stripe_error)
        }
        Provider::Dev => Ok(return_url),
    }
}

/// The developer's Connect account (created on first use) and an onboarding link for it.
pub async fn connect_onboard(
    state: &SharedState,
    developer: &str,
    email: &str,
    base_url: &str,
) -> Result<Onboarding, ApiError> {
    let account = match state.store.connect_account(developer).await.map_err(internal("connect account"))? {
        Some(a) => a,
        None => {
            let created = match provider(state)? {
                Provider::Stripe { client, .. } => {
                    client.create_express_account(developer, email).await.map_err(stripe_error)?
                }
                Provider::Dev => quota_core::ids::new_id("acct_dev_"),
            };
            let now = state.clock.now_ms();
            state.store.insert_connect_account(developer, &created, now).await.map_err(internal("connect account"))?
        }
    };
    let url = onboarding_link(state, base_url, &account).await?;
    Ok(Onboarding { url, stripe_account_id: account })
}

/// A new onboarding link for the developer's existing Connect account.
pub async fn connect_refresh(state: &SharedState, developer: &str, base_url: &str) -> Result<Onboarding, ApiError> {
    let account =
        state.store.connect_account(developer).await.map_err(internal("connect account"))?.ok_or_else(|| {
            ApiError::not_found("Connect account").with_hint("POST /developers/connect/onboard first")
        })?;
    let url = onboarding_link(state, base_url, &account).await?;
    Ok(Onboarding { url, stripe_account_id: account })
}

/// The developer's earnings accounts, after the ledger has written what it holds.
pub async fn earnings(state: &SharedState, developer: &str) -> Result<Earnings, ApiError> {
    let dev = developer.to_string();
    let balance = |a: AccountId| async move { state.ledger.balance(&a).await.map(|c| c.get()) };
    let pending = AccountId::EarningsPending(dev.clone());
    let in_transit = AccountId::PayoutInTransit(dev.clone());
    let now = state.clock.now_ms();
    state.ledger.flush().await.map_err(internal("earnings"))?;
    let store = &state.store;
    let sums = async {
        let eligible = store.sum_transfers_to(TransferKind::Markup, &pending, now - EARNINGS_HOLD_MS).await?;
        let released = store.sum_transfers_from(TransferKind::EarningsRelease, &pending).await?;
        let total = store.sum_transfers_to(TransferKind::Markup, &pending, i64::MAX).await?;
        let paid = store.sum_transfers_from(TransferKind::Payout, &in_transit).await?;
        let onboarded = store.connect_account(&dev).await?;
        Ok::<_, quota_store::StoreError>((eligible, released, total, paid, onboarded))
    };
    let (eligible, released, total, paid, onboarded) = sums.await.map_err(internal("earnings"))?;
    let balance_failed = || internal("earnings balance");
    Ok(Earnings {
        total_earned: total,
        pending: balance(pending.clone()).await.map_err(balance_failed())?,
        pending_eligible: (eligible - released).max(0),
        available: balance(AccountId::EarningsAvailable(dev.clone())).await.map_err(balance_failed())?,
        reserve: balance(AccountId::PayoutReserve(dev.clone())).await.map_err(balance_failed())?,
        in_transit: balance(in_transit.clone()).await.map_err(balance_failed())?,
        paid,
        minimum_payout: PAYOUT_MINIMUM,
        stripe_account_id: onboarded,
    })
}

/// The developer's payouts, newest first.
pub async fn payouts(state: &SharedState, developer: &str) -> Result<Vec<Payout>, ApiError> {
    state.store.payouts_of(developer).await.map_err(internal("payouts"))
}
