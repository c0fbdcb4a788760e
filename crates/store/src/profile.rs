//! An account's profile (SPEC §14): the display name, avatar URL and free-form metadata that
//! `GET /account` shows, `PATCH /account` sets and `/oauth/userinfo` reads (`name`,
//! `picture`). Kept apart from [`crate::User`], which every sign-in reads. Not here: the rules
//! on what a profile may hold (the server's accounts service).

use crate::db::DbRow;
use crate::{on_pool, StoreError};

/// What an account says about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub name: Option<String>,
    pub avatar_url: Option<String>,
    /// A JSON object, as text.
    pub user_metadata: String,
}

/// A change to a profile: `None` leaves a field as it is; `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ProfileChange {
    pub name: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub user_metadata: Option<String>,
}

impl crate::Store {
    /// The account's profile (`None`: no such account).
    pub async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row = sqlx::query("SELECT name, avatar_url, user_metadata FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(p)
                .await?;
            Ok(row.map(|r| Profile {
                name: r.get("name"),
                avatar_url: r.get("avatar_url"),
                user_metadata: r.get("user_metadata"),
            }))
        })
    }

    /// Apply `change` to the account's profile; the profile after.
    pub async fn update_profile(&self, user_id: &str, change: &ProfileChange) -> Result<Option<Profile>, StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query(
                "UPDATE users SET \
                 name = CASE WHEN $1 THEN $2 ELSE name END, \
                 avatar_url = CASE WHEN $3 THEN $4 ELSE avatar_url END, \
                 user_metadata = COALESCE($5, user_metadata) WHERE id = $6",
            )
            .bind(change.name.is_some())
            .bind(change.name.clone().flatten())
            .bind(change.avatar_url.is_some())
            .bind(change.avatar_url.clone().flatten())
            .bind(change.user_metadata.clone())
            .bind(user_id)
            .execute(p)
            .await?;
            Ok::<(), StoreError>(())
        })?;
        self.profile(user_id).await
    }

    /// Whether the account ever completed a checkout (a paid top-up): its `plan` is `paid` and
    /// it has a payment method on file (SPEC §14).
    pub async fn has_completed_checkout(&self, user_id: &str) -> Result<bool, StoreError> {
        on_pool!(self.pool(), |p| {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM checkout_sessions WHERE user_id = $1 AND status = 'completed'",
            )
            .bind(user_id)
            .fetch_one(p)
            .await?;
            Ok(n > 0)
        })
    }
}
