//! Phases *settle* and *record*: the hold becomes the metered charge — capped at the hold, the
//! excess booked to the platform's losses (SPEC §4.3(3), [`quota_core::transfers`]) — and the
//! usage record and webhook watches are committed with it, in one transaction; the caller
//! answers once it is durable. A request that ends without a charge still leaves a record.

use crate::app::SharedState;
use crate::auth::Principal;
use crate::error::ApiError;
use quota_core::billing::Charge;
use quota_core::transfers::{usage_charge, usage_charge_transfers, ChargeParties, SettledCharge};
use quota_core::{BillingMode, Model, Usage};
use quota_store::ledger::Hold;
use quota_store::usage::UsageRecord;
use quota_store::Settlement;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The `quota` object (SPEC §3.5).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Quota)]
pub struct QuotaObject {
    pub credits_used: i64,
    pub balance_before: i64,
    pub balance_after: i64,
    #[schema(value_type = String)]
    pub billing_mode: BillingMode,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_cost: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub markup: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<bool>,
}

impl QuotaObject {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializing the quota object cannot fail")
    }
}

/// Everything needed to settle and record one request, whichever way it ends.
pub struct Billing {
    pub state: SharedState,
    pub principal: Principal,
    pub model: Arc<Model>,
    /// Quota's `req_…` id: the usage record's key and every transfer's cause.
    pub request_id: String,
    pub client_request_id: Option<String>,
    /// The route template, for `balance.updated` (SPEC §14).
    pub endpoint: String,
    /// Prefix of this request's transfer ids: random, or derived from its Idempotency-Key so a
    /// replayed request can never be charged twice.
    pub charge_id: String,
    pub started: Instant,
    /// The request's trace span and access-log note (`telemetry`).
    pub exchange: crate::telemetry::Exchange,
}

impl Billing {
    /// The charge as the record and the `quota` object show it: what was paid, and in the
    /// sandbox the markup production would take (reported, not taken).
    fn shown(&self, settled: &SettledCharge) -> Charge {
        if self.principal.sandbox() {
            Charge { base: settled.paid.base, markup: settled.metered.markup }
        } else {
            settled.paid
        }
    }

    fn usage_record(&self, usage: &Usage, charge: &Charge, status: &str) -> UsageRecord {
        UsageRecord {
            id: self.request_id.clone(),
            client_request_id: self.client_request_id.clone(),
            created_at: self.state.clock.now_ms(),
            developer_id: self.principal.developer_id.clone(),
            key_id: self.principal.key_id.clone(),
            app_id: self.principal.app_id.clone(),
            payer_account: self.principal.payer.to_string(),
            billing_mode: self.principal.mode.as_str().to_string(),
            model: self.model.id.clone(),
            provider: self.model.provider.as_str().to_string(),
            input_tokens: usage.input_tokens as i64,
            cached_tokens: usage.cached_tokens as i64,
            cache_write_tokens: usage.cache_writes_total() as i64,
            output_tokens: usage.output_tokens as i64,
            base_cost: charge.base.get(),
            markup: charge.markup.get(),
            total: charge.total().get(),
            status: status.to_string(),
            latency_ms: self.started.elapsed().as_millis() as i64,
            pending_event: None,
            sandbox: self.principal.sandbox(),
        }
    }

    /// The metered charge, settled against the hold; a beaten hold is logged and counted.
    fn settle_charge(&self, hold: &Hold, usage: &Usage) -> SettledCharge {
        let margin = self.principal.margin;
        let settled = usage_charge(
            Charge::for_usage(&self.model, usage, margin),
            margin,
            hold.amount(),
            !self.principal.sandbox(),
        );
        if settled.lost() {
            tracing::error!(
                request_id = %self.request_id, model = %self.model.id, held = hold.amount().get(),
                metered = settled.metered.total().get(), loss = settled.loss.get(),
                "the provider billed more than the hold: the payer pays the hold, the excess is booked to platform:losses"
            );
            metrics::counter!("quota_hold_overruns_total", "provider" => self.model.provider.as_str()).increment(1);
            metrics::counter!("quota_losses_credits_total").increment(settled.loss.get().unsigned_abs());
        }
        settled
    }

    /// Charge the metered cost (at most the hold), free the rest of the hold, write the usage
    /// record, all in one commit; answer once it is durable.
    pub async fn settle(&self, hold: Hold, usage: Usage, status: &str) -> Result<QuotaObject, ApiError> {
        let settled = self.settle_charge(&hold, &usage);
        let shown = self.shown(&settled);
        let balance_before = hold.balance_at_hold();
        let mut record = self.usage_record(&usage, &shown, status);
        let low_balance = self.state.webhooks.settlement_events(&self.principal, &mut record);
        let balance_updates = match settled.paid.total().get() {
            0 => Vec::new(),
            _ => self.state.webhooks.balance_updated(&self.principal, &record, &self.endpoint).into_iter().collect(),
        };
        let parties = ChargeParties {
            charge_id: &self.charge_id,
            cause: &self.request_id,
            payer: &self.principal.payer,
            developer_id: &self.principal.developer_id,
            sandbox: self.principal.sandbox(),
            created_at_ms: self.state.clock.now_ms(),
        };
        let settlement = Settlement {
            transfers: usage_charge_transfers(&parties, &settled),
            usage: Some(record),
            idempotency: None,
            key_used: self.principal.key_id.clone(),
            events: Vec::new(),
            low_balance,
            balance_updates,
        };
        self.state.test_hooks.before_settle().await;
        let span = tracing::debug_span!(parent: self.exchange.span(), "settle", credits = settled.paid.total().get());
        let committed = self.state.ledger.settle(hold, settlement).instrument(span).await.map_err(|e| {
            tracing::error!(request_id = %self.request_id, error = %e, "settlement failed");
            ApiError::internal()
        })?;
        crate::metrics::record_usage(&self.model.id, self.principal.mode.as_str(), &usage, settled.paid.total().get());
        self.exchange.note_charge(self.principal.key_id.as_deref(), &self.model.id, settled.paid.total().get());
        let user_mode = self.principal.user_id.is_some();
        let mut quota = QuotaObject {
            credits_used: settled.paid.total().get(),
            balance_before: balance_before.get(),
            balance_after: balance_before.get() - settled.paid.total().get(),
            billing_mode: self.principal.mode,
            request_id: self.request_id.clone(),
            base_cost: user_mode.then_some(shown.base.get()),
            markup: user_mode.then_some(shown.markup.get()),
            sandbox: self.principal.sandbox().then_some(true),
        };
        if committed.duplicates > 0 {
            // Only an Idempotency-Key charge can repeat an id, and `idempotency::begin` refuses
            // those whose first attempt was charged; report the truth if it happens anyway.
            tracing::error!(request_id = %self.request_id, charge = %self.charge_id, "charge already existed; not charged again");
            let balance = self.state.ledger.balance(&self.principal.payer).await.unwrap_or(balance_before);
            quota = QuotaObject {
                credits_used: 0,
                balance_before: balance.get(),
                balance_after: balance.get(),
                base_cost: None,
                markup: None,
                ..quota
            };
            return Ok(quota);
        }
        if let Some(after) = committed.balance_of(&self.principal.payer) {
            quota.balance_after = after.get();
        } else if let Ok(after) = self.state.ledger.balance(&self.principal.payer).await {
            quota.balance_after = after.get();
        }
        Ok(quota)
    }

    /// A request that ends without a charge still leaves a usage record (SPEC §9).
    pub async fn record_failure(&self, status: &str) {
        if status != "client_disconnected" {
            metrics::counter!("quota_upstream_errors_total", "provider" => self.model.provider.as_str(), "code" => status.to_string())
                .increment(1);
        }
        self.exchange.note_charge(self.principal.key_id.as_deref(), &self.model.id, 0);
        let record = self.usage_record(&Usage::default(), &Charge::default(), status);
        if let Err(e) = self.state.ledger.record(record).await {
            tracing::error!(request_id = %self.request_id, error = %e, "could not record a failed request");
        }
    }
}

/// The usage-record status for an error.
pub fn failure_status(e: &ApiError) -> &'static str {
    e.code
}
