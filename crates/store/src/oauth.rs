//! Persistence for user billing via OAuth (SPEC §5): apps, connections, authorization codes,
//! grants, access and refresh tokens, and the id_token signing key.
//!
//! Secrets arrive here already hashed; nothing in this module sees a client secret, code or
//! token in clear. Times are passed in by the caller (the server's clock), so expiry can be
//! tested without sleeping. Rules about *when* a code or token is valid live in the server's
//! `oauth` module; the statements here make the state changes atomic (a code is used once, a
//! refresh token rotates once) and write each change's outbox events in the same transaction.

use crate::db::{DbRow, Tx};
use crate::events::{insert_events, OutboxEvent};
use crate::store::{Store, StoreError};
use crate::{on_pool, on_tx};

/// An OAuth client as its developer configured it.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub developer_id: String,
    pub name: String,
    pub client_id: String,
    /// `None` for public clients (`token_endpoint_auth_method: none`).
    pub client_secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    pub allowed_scopes: String,
    pub profit_margin_bps: u32,
    pub welcome_credits: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl App {
    pub fn is_public(&self) -> bool {
        self.client_secret_hash.is_none()
    }

    pub fn token_endpoint_auth_method(&self) -> &'static str {
        if self.is_public() {
            "none"
        } else {
            "client_secret_post"
        }
    }
}

/// A user × app connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub user_id: String,
    pub app_id: String,
    pub app_name: String,
    pub developer_id: String,
    pub scopes: String,
    pub created_at: i64,
    /// Credits this user paid through this app (base + markup of user-mode requests).
    pub spend: i64,
}

/// A connected user as the app's developer sees them.
#[derive(Debug, Clone)]
pub struct AppUser {
    pub user_id: String,
    pub email: String,
    pub balance: i64,
    pub spend: i64,
    pub scopes: String,
    pub connected_at: i64,
}

/// An authorization code (stored by hash).
#[derive(Debug, Clone)]
pub struct AuthCode {
    pub code_hash: String,
    pub app_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub scopes: String,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub nonce: Option<String>,
    pub auth_time: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub grant_id: Option<String>,
}

/// A new grant: what a code exchange creates.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub id: String,
    pub app_id: String,
    pub user_id: String,
    pub scopes: String,
    pub nonce: Option<String>,
    pub auth_time: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }
}

/// A token to store (by hash).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub token_hash: String,
    pub kind: TokenKind,
    pub expires_at: i64,
    /// Narrower scopes than the grant's (a refresh that asked for less, RFC 6749 §6); `None`:
    /// the grant's (or the rotated refresh token's).
    pub scopes: Option<String>,
}

/// A stored token with its grant's state.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub kind: TokenKind,
    pub grant_id: String,
    pub app_id: String,
    pub user_id: String,
    pub scopes: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub grant_revoked_at: Option<i64>,
    pub grant_nonce: Option<String>,
    pub grant_auth_time: i64,
}

/// A live access token joined with what admission needs: the app's owner, and the markup the
/// user pays — the app's, or the one they consented to if that is lower (SPEC §5: a raise
/// waits for the user's approval, a lowering applies at once).
#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub grant_id: String,
    pub app_id: String,
    pub developer_id: String,
    pub user_id: String,
    pub scopes: String,
    pub expires_at: i64,
    pub profit_margin_bps: u32,
}

/// Why a code exchange or refresh rotation did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum ExchangeError {
    /// The code or refresh token was already used (a concurrent or replayed request).
    AlreadyUsed,
    /// The user × app connection is no longer active.
    NotConnected,
}

const APP_COLUMNS: &str = "id, developer_id, name, client_id, client_secret_hash, redirect_uris, allowed_scopes, \
     profit_margin_bps, welcome_credits, created_at, updated_at";

fn app_from_row(r: &impl DbRow) -> Result<App, StoreError> {
    let uris: String = r.get("redirect_uris");
    let bps: i64 = r.get("profit_margin_bps");
    Ok(App {
        id: r.get("id"),
        developer_id: r.get("developer_id"),
        name: r.get("name"),
        client_id: r.get("client_id"),
        client_secret_hash: r.get("client_secret_hash"),
        redirect_uris: serde_json::from_str(&uris).map_err(|e| StoreError::Corrupt(format!("redirect_uris: {e}")))?,
        allowed_scopes: r.get("allowed_scopes"),
        profit_margin_bps: u32::try_from(bps).map_err(|_| StoreError::Corrupt("profit_margin_bps".into()))?,
        welcome_credits: r.get("welcome_credits"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

fn token_kind(text: &str) -> Result<TokenKind, StoreError> {
    match text {
        "access" => Ok(TokenKind::Access),
        "refresh" => Ok(TokenKind::Refresh),
        other => Err(StoreError::Corrupt(format!("token kind `{other}`"))),
    }
}

async fn insert_token(tx: &mut Tx, t: &NewToken, grant: &NewGrantRef<'_>, now: i64) -> Result<(), StoreError> {
    on_tx!(tx, |conn| sqlx::query(
        "INSERT INTO oauth_tokens (token_hash, kind, grant_id, app_id, user_id, scopes, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&t.token_hash)
    .bind(t.kind.as_str())
    .bind(grant.id)
    .bind(grant.app_id)
    .bind(grant.user_id)
    .bind(t.scopes.as_deref().unwrap_or(grant.scopes))
    .bind(now)
    .bind(t.expires_at)
    .execute(&mut *conn)
    .await?
    .rows_affected());
    Ok(())
}

struct NewGrantRef<'a> {
    id: &'a str,
    app_id: &'a str,
    user_id: &'a str,
    scopes: &'a str,
}

async fn connection_active(tx: &mut Tx, user_id: &str, app_id: &str) -> Result<bool, StoreError> {
    Ok(on_tx!(tx, |conn| sqlx::query(
        "SELECT 1 FROM connections WHERE user_id = $1 AND app_id = $2 AND revoked_at IS NULL"
    )
    .bind(user_id)
    .bind(app_id)
    .fetch_optional(&mut *conn)
    .await?
    .is_some()))
}

/// Revoke every grant, token and unexchanged code of `user_id` × `app_id` (or of the whole app
/// if `user_id` is `None`) inside the caller's transaction.
async fn revoke_all(tx: &mut Tx, app_id: &str, user_id: Option<&str>, now: i64) -> Result<(), StoreError> {
    let user_filter = if user_id.is_some() { " AND user_id = $3" } else { "" };
    // Codes not yet exchanged die too (marked used: exchanging one finds it spent).
    for (table, column) in [("oauth_grants", "revoked_at"), ("oauth_tokens", "revoked_at"), ("oauth_codes", "used_at")]
    {
        let sql = format!("UPDATE {table} SET {column} = $1 WHERE app_id = $2{user_filter} AND {column} IS NULL");
        on_tx!(tx, |conn| {
            let mut q = sqlx::query(&sql).bind(now).bind(app_id);
            if let Some(u) = user_id {
                q = q.bind(u);
            }
            q.execute(&mut *conn).await?.rows_affected()
        });
    }
    Ok(())
}

impl Store {
    // ---- apps --------------------------------------------------------------------------

    pub async fn create_app(&self, app: &App) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            let uris = serde_json::to_string(&app.redirect_uris).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO apps (id, developer_id, name, client_id, client_secret_hash, token_endpoint_auth_method, \
                 redirect_uris, allowed_scopes, profit_margin_bps, welcome_credits, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&app.id)
            .bind(&app.developer_id)
            .bind(&app.name)
            .bind(&app.client_id)
            .bind(&app.client_secret_hash)
            .bind(app.token_endpoint_auth_method())
            .bind(uris)
            .bind(&app.allowed_scopes)
            .bind(i64::from(app.profit_margin_bps))
            .bind(app.welcome_credits)
            .bind(app.created_at)
            .bind(app.updated_at)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// A developer's live apps, newest first.
    pub async fn apps_of(&self, developer_id: &str) -> Result<Vec<App>, StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query(&format!(
                "SELECT {APP_COLUMNS} FROM apps WHERE developer_id = $1 AND deleted_at IS NULL ORDER BY created_at DESC, id"
            ))
            .bind(developer_id)
            .fetch_all(p)
            .await?;
            rows.iter().map(app_from_row).collect()
        })
    }

    /// A live app of this developer.
    pub async fn app_of(&self, developer_id: &str, app_id: &str) -> Result<Option<App>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row = sqlx::query(&format!(
                "SELECT {APP_COLUMNS} FROM apps WHERE developer_id = $1 AND id = $2 AND deleted_at IS NULL"
            ))
            .bind(developer_id)
            .bind(app_id)
            .fetch_optional(p)
            .await?;
            row.as_ref().map(app_from_row).transpose()
        })
    }

    /// A live app by id, whoever owns it.
    pub async fn app(&self, app_id: &str) -> Result<Option<App>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row = sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1 AND deleted_at IS NULL"))
                .bind(app_id)
                .fetch_optional(p)
                .await?;
            row.as_ref().map(app_from_row).transpose()
        })
    }

    /// A live app by its public client id.
    pub async fn app_by_client_id(&self, client_id: &str) -> Result<Option<App>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row =
                sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE client_id = $1 AND deleted_at IS NULL"))
                    .bind(client_id)
                    .fetch_optional(p)
                    .await?;
            row.as_ref().map(app_from_row).transpose()
        })
    }

    /// Write an app's editable fields (name, redirect URIs, scopes, margin, welcome credits).
    pub async fn update_app(&self, app: &App) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            let uris = serde_json::to_string(&app.redirect_uris).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let res = sqlx::query(
                "UPDATE apps SET name = $1, redirect_uris = $2, allowed_scopes = $3, profit_margin_bps = $4, welcome_credits = $5, \
                 updated_at = $6 WHERE id = $7 AND developer_id = $8 AND deleted_at IS NULL",
            )
            .bind(&app.name)
            .bind(uris)
            .bind(&app.allowed_scopes)
            .bind(i64::from(app.profit_margin_bps))
            .bind(app.welcome_credits)
            .bind(app.updated_at)
            .bind(&app.id)
            .bind(&app.developer_id)
            .execute(p)
            .await?;
            if res.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            // A lower margin applies to every connection at once and becomes what they
            // consented to, so raising it again needs each user's approval (SPEC §5).
            sqlx::query("UPDATE connections SET profit_margin_bps = $1 WHERE app_id = $2 AND profit_margin_bps > $1")
                .bind(i64::from(app.profit_margin_bps))
                .bind(&app.id)
                .execute(p)
                .await?;
            Ok(())
        })
    }

    /// The markup (basis points) the user last consented to for an app, if connected.
    pub async fn consented_margin(&self, user_id: &str, app_id: &str) -> Result<Option<u32>, StoreError> {
        on_pool!(self.pool(), |p| {
            let bps: Option<Option<i64>> = sqlx::query_scalar(
                "SELECT profit_margin_bps FROM connections WHERE user_id = $1 AND app_id = $2 AND revoked_at IS NULL",
            )
            .bind(user_id)
            .bind(app_id)
            .fetch_optional(p)
            .await?;
            Ok(bps.flatten().and_then(|b| u32::try_from(b).ok()))
        })
    }

    /// Delete an app: it stops existing for OAuth, every token and connection under it ends,
    /// and `user.disconnected` is recorded for each connected user (made by `event`).
    /// Returns the users who were connected.
    pub async fn delete_app(
        &self,
        developer_id: &str,
        app_id: &str,
        now: i64,
        event: impl Fn(&str) -> OutboxEvent,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool().begin_write().await?;
        let res = on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE apps SET deleted_at = $1 WHERE id = $2 AND developer_id = $3 AND deleted_at IS NULL"
        )
        .bind(now)
        .bind(app_id)
        .bind(developer_id)
        .execute(&mut *c)
        .await?
        .rows_affected());
        if res == 0 {
            return Err(StoreError::NotFound);
        }
        let users: Vec<String> = on_tx!(&mut tx, |c| {
            sqlx::query_scalar(
            "UPDATE connections SET revoked_at = $1, updated_at = $2 WHERE app_id = $3 AND revoked_at IS NULL RETURNING user_id",
        )
        .bind(now)
        .bind(now)
        .bind(app_id)
        .fetch_all(&mut *c)
        .await?
        });
        revoke_all(&mut tx, app_id, None, now).await?;
        let events: Vec<OutboxEvent> = users.iter().map(|u| event(u)).collect();
        insert_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(users)
    }

    /// The users connected to an app, with their balance and what they spent through it.
    pub async fn app_users(&self, app_id: &str) -> Result<Vec<AppUser>, StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query(
                "SELECT c.user_id, u.email, c.scopes, c.created_at, COALESCE(a.balance, 0) AS balance, \
                   CAST(COALESCE((SELECT SUM(total) FROM usage_records r WHERE r.app_id = c.app_id \
                     AND r.payer_account = 'wallet:' || c.user_id AND r.billing_mode = 'user'), 0) AS BIGINT) AS spend \
                 FROM connections c JOIN users u ON u.id = c.user_id LEFT JOIN accounts a ON a.id = 'wallet:' || c.user_id \
                 WHERE c.app_id = $1 AND c.revoked_at IS NULL ORDER BY c.created_at, c.user_id",
            )
            .bind(app_id)
            .fetch_all(p)
            .await?;
            Ok(rows
                .iter()
                .map(|r| AppUser {
                    user_id: r.get("user_id"),
                    email: r.get("email"),
                    balance: r.get("balance"),
                    spend: r.get("spend"),
                    scopes: r.get("scopes"),
                    connected_at: r.get("created_at"),
                })
                .collect())
        })
    }

    // ---- connections -------------------------------------------------------------------

    /// Record consent: create (or re-activate) the user × app connection with these scopes.
    /// When the connection is new or was revoked, `event` (`user.connected`) is written in the
    /// same transaction and `true` is returned.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        &self,
        user_id: &str,
        app_id: &str,
        scopes: &str,
        consented_margin_bps: u32,
        now: i64,
        event: OutboxEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin_write().await?;
        let active = connection_active(&mut tx, user_id, app_id).await?;
        on_tx!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO connections (user_id, app_id, scopes, created_at, updated_at, profit_margin_bps) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id, app_id) DO UPDATE SET scopes = excluded.scopes, updated_at = excluded.updated_at, \
             profit_margin_bps = excluded.profit_margin_bps, \
             created_at = CASE WHEN connections.revoked_at IS NULL THEN connections.created_at ELSE excluded.created_at END, \
             revoked_at = NULL",
        )
        .bind(user_id)
        .bind(app_id)
        .bind(scopes)
        .bind(now)
        .bind(now)
        .bind(i64::from(consented_margin_bps))
        .execute(&mut *c).await?.rows_affected()
        });
        if !active {
            insert_events(&mut tx, std::slice::from_ref(&event)).await?;
        }
        tx.commit().await?;
        Ok(!active)
    }

    /// End a connection: every grant and token under it is revoked and `event`
    /// (`user.disconnected`) is written, in one transaction. `false` if it was not active.
    pub async fn disconnect(
        &self,
        user_id: &str,
        app_id: &str,
        now: i64,
        event: OutboxEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin_write().await?;
        let res = on_tx!(&mut tx, |c| {
            sqlx::query(
            "UPDATE connections SET revoked_at = $1, updated_at = $2 WHERE user_id = $3 AND app_id = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(now)
        .bind(user_id)
        .bind(app_id)
        .execute(&mut *c).await?.rows_affected()
        });
        if res == 0 {
            return Ok(false);
        }
        revoke_all(&mut tx, app_id, Some(user_id), now).await?;
        insert_events(&mut tx, std::slice::from_ref(&event)).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A user's active connections to live apps, newest first.
    pub async fn connections_of(&self, user_id: &str) -> Result<Vec<Connection>, StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query(
                "SELECT c.user_id, c.app_id, a.name, a.developer_id, c.scopes, c.created_at, \
                   CAST(COALESCE((SELECT SUM(total) FROM usage_records r WHERE r.app_id = c.app_id \
                     AND r.payer_account = 'wallet:' || c.user_id AND r.billing_mode = 'user'), 0) AS BIGINT) AS spend \
                 FROM connections c JOIN apps a ON a.id = c.app_id \
                 WHERE c.user_id = $1 AND c.revoked_at IS NULL AND a.deleted_at IS NULL ORDER BY c.created_at DESC, c.app_id",
            )
            .bind(user_id)
            .fetch_all(p)
            .await?;
            Ok(rows
                .iter()
                .map(|r| Connection {
                    user_id: r.get("user_id"),
                    app_id: r.get("app_id"),
                    app_name: r.get("name"),
                    developer_id: r.get("developer_id"),
                    scopes: r.get("scopes"),
                    created_at: r.get("created_at"),
                    spend: r.get("spend"),
                })
                .collect())
        })
    }

    /// Whether `user_id` is connected to any live app of `developer_id` (SPEC §6 funding).
    pub async fn connected_to_developer(&self, user_id: &str, developer_id: &str) -> Result<bool, StoreError> {
        on_pool!(self.pool(), |p| {
            Ok(sqlx::query(
                "SELECT 1 FROM connections c JOIN apps a ON a.id = c.app_id \
                 WHERE c.user_id = $1 AND a.developer_id = $2 AND c.revoked_at IS NULL AND a.deleted_at IS NULL LIMIT 1",
            )
            .bind(user_id)
            .bind(developer_id)
            .fetch_optional(p)
            .await?
            .is_some())
        })
    }

    // ---- codes, grants, tokens ---------------------------------------------------------

    pub async fn insert_code(&self, code: &AuthCode) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query(
                "INSERT INTO oauth_codes (code_hash, app_id, user_id, redirect_uri, scopes, code_challenge, \
                 code_challenge_method, nonce, auth_time, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&code.code_hash)
            .bind(&code.app_id)
            .bind(&code.user_id)
            .bind(&code.redirect_uri)
            .bind(&code.scopes)
            .bind(&code.code_challenge)
            .bind(&code.code_challenge_method)
            .bind(&code.nonce)
            .bind(code.auth_time)
            .bind(code.created_at)
            .bind(code.expires_at)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    pub async fn code(&self, code_hash: &str) -> Result<Option<AuthCode>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row = sqlx::query(
                "SELECT code_hash, app_id, user_id, redirect_uri, scopes, code_challenge, code_challenge_method, nonce, \
                 auth_time, created_at, expires_at, used_at, grant_id FROM oauth_codes WHERE code_hash = $1",
            )
            .bind(code_hash)
            .fetch_optional(p)
            .await?;
            Ok(row.map(|r| AuthCode {
                code_hash: r.get("code_hash"),
                app_id: r.get("app_id"),
                user_id: r.get("user_id"),
                redirect_uri: r.get("redirect_uri"),
                scopes: r.get("scopes"),
                code_challenge: r.get("code_challenge"),
                code_challenge_method: r.get("code_challenge_method"),
                nonce: r.get("nonce"),
                auth_time: r.get("auth_time"),
                created_at: r.get("created_at"),
                expires_at: r.get("expires_at"),
                used_at: r.get("used_at"),
                grant_id: r.get("grant_id"),
            }))
        })
    }

    /// Use a code once: mark it used, create its grant and tokens, in one transaction.
    pub async fn exchange_code(
        &self,
        code_hash: &str,
        grant: &NewGrant,
        tokens: &[NewToken],
        now: i64,
    ) -> Result<Result<(), ExchangeError>, StoreError> {
        let mut tx = self.pool().begin_write().await?;
        if !connection_active(&mut tx, &grant.user_id, &grant.app_id).await? {
            return Ok(Err(ExchangeError::NotConnected));
        }
        let res = on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE oauth_codes SET used_at = $1, grant_id = $2 WHERE code_hash = $3 AND used_at IS NULL"
        )
        .bind(now)
        .bind(&grant.id)
        .bind(code_hash)
        .execute(&mut *c)
        .await?
        .rows_affected());
        if res == 0 {
            return Ok(Err(ExchangeError::AlreadyUsed));
        }
        on_tx!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO oauth_grants (id, app_id, user_id, scopes, nonce, auth_time, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&grant.id)
        .bind(&grant.app_id)
        .bind(&grant.user_id)
        .bind(&grant.scopes)
        .bind(&grant.nonce)
        .bind(grant.auth_time)
        .bind(now)
        .execute(&mut *c).await?.rows_affected()
        });
        let g = NewGrantRef { id: &grant.id, app_id: &grant.app_id, user_id: &grant.user_id, scopes: &grant.scopes };
        for t in tokens {
            insert_token(&mut tx, t, &g, now).await?;
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// A token by hash, whatever its state, with its grant's state.
    pub async fn token(&self, token_hash: &str) -> Result<Option<TokenRow>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row = sqlx::query(
                "SELECT t.kind, t.grant_id, t.app_id, t.user_id, t.scopes, t.expires_at, t.used_at, t.revoked_at, \
                 g.revoked_at AS grant_revoked_at, g.nonce, g.auth_time \
                 FROM oauth_tokens t JOIN oauth_grants g ON g.id = t.grant_id WHERE t.token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(p)
            .await?;
            row.map(|r| {
                Ok(TokenRow {
                    kind: token_kind(&r.get::<String>("kind"))?,
                    grant_id: r.get("grant_id"),
                    app_id: r.get("app_id"),
                    user_id: r.get("user_id"),
                    scopes: r.get("scopes"),
                    expires_at: r.get("expires_at"),
                    used_at: r.get("used_at"),
                    revoked_at: r.get("revoked_at"),
                    grant_revoked_at: r.get("grant_revoked_at"),
                    grant_nonce: r.get("nonce"),
                    grant_auth_time: r.get("auth_time"),
                })
            })
            .transpose()
        })
    }

    /// A live access token (unrevoked, unexpired at `now`, its grant and connection active, its
    /// app not deleted), with its app's owner and markup.
    pub async fn live_access_token(&self, token_hash: &str, now: i64) -> Result<Option<AccessGrant>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row = sqlx::query(
                "SELECT t.grant_id, t.app_id, a.developer_id, t.user_id, t.scopes, t.expires_at, \
                 CASE WHEN c.profit_margin_bps IS NOT NULL AND c.profit_margin_bps < a.profit_margin_bps \
                   THEN c.profit_margin_bps ELSE a.profit_margin_bps END AS profit_margin_bps \
                 FROM oauth_tokens t JOIN oauth_grants g ON g.id = t.grant_id JOIN apps a ON a.id = t.app_id \
                 JOIN connections c ON c.user_id = t.user_id AND c.app_id = t.app_id \
                 WHERE t.token_hash = $1 AND t.kind = 'access' AND t.revoked_at IS NULL AND g.revoked_at IS NULL \
                 AND c.revoked_at IS NULL AND a.deleted_at IS NULL AND t.expires_at > $2",
            )
            .bind(token_hash)
            .bind(now)
            .fetch_optional(p)
            .await?;
            row.map(|r| {
                let bps: i64 = r.get("profit_margin_bps");
                Ok(AccessGrant {
                    grant_id: r.get("grant_id"),
                    app_id: r.get("app_id"),
                    developer_id: r.get("developer_id"),
                    user_id: r.get("user_id"),
                    scopes: r.get("scopes"),
                    expires_at: r.get("expires_at"),
                    profit_margin_bps: u32::try_from(bps)
                        .map_err(|_| StoreError::Corrupt("profit_margin_bps".into()))?,
                })
            })
            .transpose()
        })
    }

    /// Rotate a refresh token: mark it used and store the grant's new tokens, in one
    /// transaction. `AlreadyUsed` when another request rotated it first.
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        grant_id: &str,
        tokens: &[NewToken],
        now: i64,
    ) -> Result<Result<(), ExchangeError>, StoreError> {
        let mut tx = self.pool().begin_write().await?;
        let row: Option<(String, String, String)> = on_tx!(&mut tx, |c| sqlx::query_as(
            "UPDATE oauth_tokens SET used_at = $1 WHERE token_hash = $2 AND kind = 'refresh' AND used_at IS NULL \
             AND revoked_at IS NULL RETURNING app_id, user_id, scopes",
        )
        .bind(now)
        .bind(old_hash)
        .fetch_optional(&mut *c)
        .await?);
        let Some((app_id, user_id, scopes)) = row else {
            return Ok(Err(ExchangeError::AlreadyUsed));
        };
        if !connection_active(&mut tx, &user_id, &app_id).await? {
            return Ok(Err(ExchangeError::NotConnected));
        }
        let g = NewGrantRef { id: grant_id, app_id: &app_id, user_id: &user_id, scopes: &scopes };
        for t in tokens {
            insert_token(&mut tx, t, &g, now).await?;
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Revoke a grant and all its tokens (code reuse, refresh-token reuse).
    pub async fn revoke_grant(&self, grant_id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.pool().begin_write().await?;
        for table in ["oauth_grants", "oauth_tokens"] {
            let column = if table == "oauth_grants" { "id" } else { "grant_id" };
            on_tx!(&mut tx, |c| sqlx::query(&format!(
                "UPDATE {table} SET revoked_at = $1 WHERE {column} = $2 AND revoked_at IS NULL"
            ))
            .bind(now)
            .bind(grant_id)
            .execute(&mut *c)
            .await?
            .rows_affected());
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- signing key -------------------------------------------------------------------

    /// The id_token signing key: (kid, PKCS#1 DER), the oldest if several were stored.
    pub async fn signing_key(&self) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row =
                sqlx::query("SELECT kid, private_key_der FROM oauth_signing_keys ORDER BY created_at, kid LIMIT 1")
                    .fetch_optional(p)
                    .await?;
            Ok(row.map(|r| (r.get("kid"), r.get("private_key_der"))))
        })
    }

    /// Store a signing key unless one exists; returns the key in force afterwards (another
    /// process may have stored one first).
    pub async fn store_signing_key(&self, kid: &str, der: &[u8], now: i64) -> Result<(String, Vec<u8>), StoreError> {
        let mut tx = self.pool().begin_write().await?;
        let existing: Option<(String, Vec<u8>)> = on_tx!(&mut tx, |c| sqlx::query_as(
            "SELECT kid, private_key_der FROM oauth_signing_keys ORDER BY created_at, kid LIMIT 1"
        )
        .fetch_optional(&mut *c)
        .await?);
        if let Some(k) = existing {
            return Ok(k);
        }
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO oauth_signing_keys (kid, private_key_der, created_at) VALUES ($1, $2, $3)"
        )
        .bind(kid)
        .bind(der)
        .bind(now)
        .execute(&mut *c)
        .await?
        .rows_affected());
        tx.commit().await?;
        Ok((kid.to_string(), der.to_vec()))
    }
}
