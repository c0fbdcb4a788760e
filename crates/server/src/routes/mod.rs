//! HTTP handlers, thin: extract the caller, parse the body into a service's typed input,
//! call the service (`crate::services`), shape the JSON answer.

pub mod account;
pub mod accounts;
pub mod apps;
pub mod connections;
pub mod docs;
pub mod funding;
pub mod keys;
pub mod oauth;
pub mod ops;
pub mod payments;
pub mod reporting;
pub mod v1;
pub mod webhooks;

use crate::app::SharedState;
use axum::routing::{get, patch, post};
use axum::Router;

/// User billing via OAuth (SPEC §5, §6): apps, the authorization server, connections, funding.
pub fn user_billing_router() -> Router<SharedState> {
    Router::new()
        .route("/developers/apps", post(apps::create).get(apps::list))
        .route("/developers/apps/{id}", get(apps::get).patch(apps::update).delete(apps::delete))
        .route("/developers/apps/{id}/settings", patch(apps::settings))
        .route("/developers/apps/{id}/users", get(apps::users))
        .route("/.well-known/openid-configuration", get(oauth::discovery))
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route("/oauth/authorize", get(oauth::authorize_get).post(oauth::authorize_post))
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/userinfo", get(oauth::userinfo).post(oauth::userinfo))
        .route("/oauth/revoke", post(oauth::revoke))
        .route("/account/connections", get(connections::list))
        .route("/account/connections/{app_id}", axum::routing::delete(connections::disconnect))
        .route("/v1/funding/oauth_user", post(funding::fund_oauth_user))
}

/// What clients written against Quota's public documentation call (SPEC §14): the errors page,
/// `/v1/me`, `/account`, `/v1/funding/credit`.
pub fn compat_router() -> Router<SharedState> {
    Router::new()
        .route(crate::error_catalog::PAGE_PATH, get(docs::errors))
        .route("/account", get(account::get).patch(account::patch))
        .route("/v1/me", get(account::me))
        .route("/v1/funding/credit", post(funding::fund_credit))
}

/// Webhooks (SPEC §8), usage, ledger and analytics (SPEC §9).
pub fn reporting_router() -> Router<SharedState> {
    Router::new()
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/{id}", get(webhooks::get).patch(webhooks::update).delete(webhooks::delete))
        .route("/v1/webhooks/{id}/rotate-secret", post(webhooks::rotate_secret))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}/replay", post(webhooks::replay))
        .route("/v1/webhooks/{id}/test", post(webhooks::test))
        .route("/v1/usage", get(reporting::usage))
        .route("/v1/ledger", get(reporting::ledger))
        .route("/developers/analytics/summary", get(reporting::summary))
        .route("/developers/analytics/timeseries", get(reporting::timeseries))
        .route("/developers/analytics/breakdown", get(reporting::breakdown))
}

pub use crate::services::cursor_at;

/// A keyset cursor: the position `(created_at, id)` of the last item of a page, opaque to clients.
pub fn keyset_cursor(created_at: i64, id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("k:{created_at}:{id}"))
}

/// The position in a cursor from [`keyset_cursor`]; `None` for any other cursor (an offset
/// cursor from [`cursor_at`], still accepted where it was, or garbage).
pub fn parse_keyset_cursor(cursor: &str) -> Option<(i64, String)> {
    use base64::Engine;
    let text = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (at, id) = text.strip_prefix("k:")?.split_once(':')?;
    Some((at.parse().ok()?, id.to_string()))
}

/// Payments and payouts (SPEC §10).
pub fn payments_router() -> Router<SharedState> {
    Router::new()
        .route("/v1/packages", get(payments::packages))
        .route("/api/payments/checkout", post(payments::checkout))
        .route("/webhooks/stripe", post(payments::stripe_webhook))
        .route("/payments/dev/checkout/{id}", get(payments::dev_checkout_page).post(payments::dev_checkout_pay))
        .route("/developers/connect/onboard", post(payments::connect_onboard))
        .route("/developers/connect/refresh", post(payments::connect_refresh))
        .route("/developers/earnings", get(payments::earnings))
        .route("/developers/payouts", get(payments::payouts))
}

/// `?limit=&cursor=` (SPEC §0).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

pub const PAGE_DEFAULT: usize = 50;
pub const PAGE_MAX: usize = 500;

impl PageQuery {
    /// (offset, limit), validated. The cursor is opaque to clients.
    pub fn parse(&self) -> Result<(usize, usize), crate::error::ApiError> {
        use base64::Engine;
        let limit = match &self.limit {
            None => PAGE_DEFAULT,
            Some(l) => l.parse::<usize>().ok().filter(|l| (1..=PAGE_MAX).contains(l)).ok_or_else(|| {
                crate::error::ApiError::bad_request(format!("limit must be between 1 and {PAGE_MAX}"))
            })?,
        };
        let offset = match &self.cursor {
            None => 0,
            Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse().ok()))
                .ok_or_else(|| crate::error::ApiError::bad_request("invalid cursor"))?,
        };
        Ok((offset, limit))
    }

    /// The validated page as the services take it.
    pub fn paging(&self) -> Result<crate::services::Paging, crate::error::ApiError> {
        let (offset, limit) = self.parse()?;
        Ok(crate::services::Paging { offset, limit })
    }

    /// A page of `items` as `{"data": [...], "next_cursor": ...}` (SPEC §0).
    pub fn json<T>(
        &self,
        items: Vec<T>,
        to_json: impl Fn(&T) -> serde_json::Value,
    ) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
        let (page, next) = self.page(items)?;
        let data: Vec<serde_json::Value> = page.iter().map(to_json).collect();
        Ok(axum::Json(serde_json::json!({"data": data, "next_cursor": next})))
    }

    /// Page `items` and make the next cursor.
    pub fn page<T>(&self, items: Vec<T>) -> Result<(Vec<T>, Option<String>), crate::error::ApiError> {
        let (offset, limit) = self.parse()?;
        let total = items.len();
        let page: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
        let next = (offset + limit < total).then(|| cursor_at(offset + limit));
        Ok((page, next))
    }
}
