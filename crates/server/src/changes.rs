//! Changes made on one instance reaching every instance's caches (several `quota serve`
//! processes on one PostgreSQL). The instance that commits a change evicts its own caches and
//! announces it (`Store::announce`, a PostgreSQL `NOTIFY` after the commit); every instance
//! listens and evicts the same entries, so a revoked key or token, a changed rate limit or
//! markup, or an edited webhook endpoint takes effect everywhere within milliseconds. If the
//! listening connection drops, changes may have been missed: every cache is emptied (entries
//! reload from the database on next use). On SQLite there is one instance and nothing to hear.

use crate::app::SharedState;
use quota_store::Change;
use std::sync::Arc;

/// What an announcement names.
pub fn key(key_id: &str) -> String {
    format!("key:{key_id}")
}
pub fn grant(grant_id: &str) -> String {
    format!("grant:{grant_id}")
}
pub fn connection(user_id: &str, app_id: &str) -> String {
    format!("connection:{user_id}:{app_id}")
}
pub fn app(app_id: &str) -> String {
    format!("app:{app_id}")
}
pub const WEBHOOKS: &str = "webhooks";

/// Tell the other instances; a failure only delays them until their caches reload.
pub async fn announce(state: &SharedState, what: &str) {
    if let Err(e) = state.store.announce(what).await {
        tracing::warn!(error = %e, what, "could not announce a change to other instances");
    }
}

/// Listen for other instances' changes (PostgreSQL only); listening has started on return.
pub async fn spawn_listener(state: &SharedState) -> anyhow::Result<()> {
    let Some(mut changes) = state.store.changes().await? else { return Ok(()) };
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            let change = changes.next().await;
            let Some(state) = weak.upgrade() else { break };
            apply(&state, change).await;
        }
    });
    Ok(())
}

async fn apply(state: &SharedState, change: Change) {
    let what = match change {
        Change::Changed(what) => what,
        Change::Lost => {
            state.keys.clear();
            state.oauth.tokens.clear();
            reload_webhooks(state).await;
            return;
        }
    };
    match what.split_once(':') {
        Some(("key", id)) => state.keys.evict_id(id),
        Some(("grant", id)) => state.oauth.tokens.evict_grant(id),
        Some(("app", id)) => state.oauth.tokens.evict_app(id),
        Some(("connection", rest)) => {
            if let Some((user, app)) = rest.split_once(':') {
                state.oauth.tokens.evict_connection(user, app);
            }
        }
        _ if what == WEBHOOKS => reload_webhooks(state).await,
        _ => tracing::debug!(what, "unknown change announced"),
    }
}

async fn reload_webhooks(state: &SharedState) {
    if let Err(e) = state.webhooks.reload(&state.store).await {
        tracing::warn!(error = %e, "webhook directory reload failed");
    }
}
