//! Counts behind the per-account caps (SPEC §1: at most 100 active API keys, 20 apps and 20
//! webhook endpoints by default). The server compares them with its configuration and answers
//! 403 `limit_reached`; the check and the insert are two statements, so a burst of parallel
//! creations can pass the cap by the few requests in flight (a cap on abuse, not an invariant).

use crate::on_pool;
use crate::store::{Store, StoreError};

/// What a cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capped {
    /// Unrevoked API keys.
    ApiKeys,
    /// Apps not deleted.
    Apps,
    /// Webhook endpoints not deleted (disabled ones count: they can be enabled again).
    WebhookEndpoints,
}

impl Store {
    /// How many of `what` the account `user_id` has.
    pub async fn count_owned(&self, what: Capped, user_id: &str) -> Result<i64, StoreError> {
        let sql = match what {
            Capped::ApiKeys => "SELECT COUNT(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL",
            Capped::Apps => "SELECT COUNT(*) FROM apps WHERE developer_id = $1 AND deleted_at IS NULL",
            Capped::WebhookEndpoints => {
                "SELECT COUNT(*) FROM webhook_endpoints WHERE developer_id = $1 AND deleted_at IS NULL"
            }
        };
        on_pool!(self.pool(), |p| Ok(sqlx::query_scalar::<_, i64>(sql).bind(user_id).fetch_one(p).await?))
    }
}
