//! Money in and out (SPEC §10): top-up packages bought through a payment provider, and the
//! developers' earnings paid out through Stripe Connect.
//!
//! * **Top-ups** — a checkout session is created at the provider; the wallet is credited only
//!   when the provider confirms payment (a signed Stripe webhook, or the dev provider's page),
//!   by one ledger transfer `payments_clearing → wallet` whose id is derived from the session, so
//!   replays and duplicate events never credit twice. `topup.succeeded` is written with it.
//! * **Payouts** — see [`payouts`].
//!
//! Providers: `stripe` (the real API; base URL configurable so tests use a fake) and `dev` (a
//! local page that pays at once and a Connect stand-in that succeeds at once), each enabled only
//! by configuration. With neither, every payment route answers 503 `provider_unavailable`.

pub mod payouts;
pub mod stripe;

use crate::app::SharedState;
use crate::config::{Config, PackageConfig};
use crate::error::ApiError;
use crate::webhooks::EventKind;
use axum::http::StatusCode;
use quota_core::Credits;
use quota_store::payments::CheckoutSession;
use quota_store::{LedgerError, OutboxEvent};
use serde_json::json;
use stripe::{StripeClient, StripeError};

/// Which payment provider is configured.
pub enum Provider {
    Stripe { client: StripeClient, webhook_secret: String },
    Dev,
}

impl Provider {
    /// The provider `config` enables, if any.
    pub fn from_config(config: &Config) -> Result<Option<Provider>, String> {
        Ok(match config.payments_provider.as_deref().filter(|p| !p.is_empty()) {
            None => None,
            Some("dev") => Some(Provider::Dev),
            Some("stripe") => {
                let secret = config.stripe_secret_key.as_deref().unwrap_or_default();
                let client = StripeClient::new(
                    &config.stripe_api_base,
                    secret,
                    std::time::Duration::from_secs(config.stripe_timeout_secs),
                )?;
                Some(Provider::Stripe {
                    client,
                    webhook_secret: config.stripe_webhook_secret.clone().unwrap_or_default(),
                })
            }
            Some(other) => return Err(format!("unknown payments_provider `{other}`")),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Provider::Stripe { .. } => "stripe",
            Provider::Dev => "dev",
        }
    }
}

/// The configured provider, or 503 `provider_unavailable`.
pub fn provider(state: &SharedState) -> Result<&Provider, ApiError> {
    state.payments.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            "payments are not configured on this server",
        )
        .with_hint("set payments_provider = \"stripe\" (or \"dev\" for local use)")
    })
}

/// A package by id.
pub fn package<'a>(config: &'a Config, id: &str) -> Option<&'a PackageConfig> {
    config.packages.iter().find(|p| p.id == id)
}

/// A Stripe failure as the API shows it: 502, with Stripe's message (never the key).
pub fn stripe_error(e: StripeError) -> ApiError {
    tracing::warn!(error = %e, "stripe call failed");
    ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", format!("payment provider error: {e}"))
}

/// What a confirmed payment credits.
pub struct ConfirmedTopup<'a> {
    pub session_id: &'a str,
    pub user_id: &'a str,
    pub package_id: &'a str,
    pub credits: Credits,
    /// The provider event (or dev page action) that confirmed it.
    pub cause: &'a str,
}

/// Credit a confirmed top-up: one transfer `payments_clearing → wallet`, id derived from the
/// session, with `topup.succeeded` in the same commit; then mark the session completed.
/// Returns whether money moved (false: this session was credited before).
pub async fn apply_topup(state: &SharedState, t: ConfirmedTopup<'_>) -> Result<bool, LedgerError> {
    let now = state.clock.now_ms();
    let transfer_id = format!("ledg_topup_{}", t.session_id);
    let event = OutboxEvent::new(
        EventKind::TopupSucceeded.as_str(),
        t.user_id,
        json!({
            "session_id": t.session_id,
            "user_id": t.user_id,
            "package_id": t.package_id,
            "amount": t.credits,
            "ledger_id": transfer_id,
        }),
        now,
    );
    let committed = state
        .ledger
        .transfer_with_events(
            quota_core::transfers::topup(transfer_id, t.user_id, t.credits, t.cause, now),
            vec![event],
        )
        .await?;
    state.store.complete_checkout_session(t.session_id, t.cause, now).await?;
    Ok(committed.duplicates == 0)
}

/// The checkout session row for a new session.
pub fn new_session(
    id: String,
    provider: &Provider,
    user_id: &str,
    package: &PackageConfig,
    success_url: &str,
    cancel_url: &str,
    now_ms: i64,
) -> CheckoutSession {
    CheckoutSession {
        id,
        provider: provider.name().to_string(),
        user_id: user_id.to_string(),
        package_id: package.id.clone(),
        price_cents: package.price_cents,
        credits: package.credits,
        status: "open".into(),
        success_url: success_url.to_string(),
        cancel_url: cancel_url.to_string(),
        created_at: now_ms,
        completed_at: None,
    }
}
