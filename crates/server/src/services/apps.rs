//! A developer's OAuth apps (SPEC §5) and a user's connections to apps: create (the client
//! secret comes back once, in [`CreatedApp`]), list, read, update, settings (markup and
//! welcome credits), connected users with what their owner may see of them, delete (every
//! connection and token under the app ends at once); a user's connections, and disconnect.
//! Not here: the authorization server (`crate::oauth`), JSON or HTML.

use crate::account_caps::{ensure_room, Capped};
use crate::app::SharedState;
use crate::error::{internal, ApiError};
use crate::oauth::{redirect, tokens::connection_event, Scope, Scopes, CLIENT_ID_PREFIX, CLIENT_SECRET_PREFIX};
use crate::secrets::hash_token;
use crate::services::Name;
use crate::webhooks::EventKind;
use quota_core::Margin;
use quota_store::oauth::{App, AppUser, Connection};
use quota_store::StoreError;

/// Largest per-app welcome grant: $1,000.
const WELCOME_CREDITS_MAX: i64 = 1_000_000_000;
/// Scopes an app gets when it does not say.
const DEFAULT_SCOPES: &str = "openid profile email credits.read credits.spend";

/// 1 to `REDIRECT_URIS_MAX` registrable redirect URIs.
#[derive(Debug, Clone)]
pub struct RedirectUris(Vec<String>);

impl RedirectUris {
    pub fn parse(uris: Vec<String>) -> Result<RedirectUris, ApiError> {
        if uris.is_empty() || uris.len() > redirect::REDIRECT_URIS_MAX {
            return Err(ApiError::bad_request(format!(
                "redirect_uris must list 1 to {} URIs",
                redirect::REDIRECT_URIS_MAX
            )));
        }
        for uri in &uris {
            redirect::check_registrable(uri).map_err(ApiError::bad_request)?;
        }
        Ok(RedirectUris(uris))
    }
}

/// The scopes an app may ask for: one or more known scopes, one per string.
#[derive(Debug, Clone)]
pub struct AllowedScopes(String);

impl AllowedScopes {
    pub fn parse(scopes: &[String]) -> Result<AllowedScopes, ApiError> {
        let set =
            Scopes::parse(&scopes.join(" ")).map_err(|e| ApiError::bad_request(format!("allowed_scopes: {e}")))?;
        if set.is_empty() || scopes.iter().any(|s| s.contains(' ')) {
            return Err(ApiError::bad_request("allowed_scopes must list one or more scopes, one per string"));
        }
        Ok(AllowedScopes(set.to_string()))
    }
}

/// Credits granted once to each user who connects: 0 to $1,000.
#[derive(Debug, Clone, Copy)]
pub struct WelcomeCredits(i64);

impl WelcomeCredits {
    pub fn parse(credits: i64) -> Result<WelcomeCredits, ApiError> {
        if !(0..=WELCOME_CREDITS_MAX).contains(&credits) {
            return Err(ApiError::bad_request(format!("welcome_credits must be between 0 and {WELCOME_CREDITS_MAX}")));
        }
        Ok(WelcomeCredits(credits))
    }
}

/// An app to create. `allowed_scopes` `None` is the default set.
pub struct NewApp {
    pub name: Name,
    pub redirect_uris: RedirectUris,
    pub allowed_scopes: Option<AllowedScopes>,
    /// A public client (PKCE, no secret).
    pub public: bool,
    pub margin: Margin,
    pub welcome_credits: WelcomeCredits,
}

/// What may change on an app; `None` leaves a field as it is.
#[derive(Default)]
pub struct AppPatch {
    pub name: Option<Name>,
    pub redirect_uris: Option<RedirectUris>,
    pub allowed_scopes: Option<AllowedScopes>,
}

/// The money settings; `None` leaves a field as it is.
#[derive(Default)]
pub struct AppSettings {
    pub margin: Option<Margin>,
    pub welcome_credits: Option<WelcomeCredits>,
}

/// An app and its client secret (a confidential client's), shown this once.
pub struct CreatedApp {
    pub app: App,
    pub client_secret: Option<String>,
}

/// A deleted app: how many users it disconnected.
pub struct DeletedApp {
    pub app_id: String,
    pub disconnected_users: usize,
}

pub async fn create(state: &SharedState, developer: &str, new: NewApp) -> Result<CreatedApp, ApiError> {
    ensure_room(state, Capped::Apps, developer).await?;
    let secret = (!new.public).then(|| quota_core::ids::new_secret(CLIENT_SECRET_PREFIX));
    let now = state.clock.now_ms();
    let app = App {
        id: quota_core::ids::new_id("app_"),
        developer_id: developer.to_string(),
        name: new.name.into_string(),
        client_id: quota_core::ids::new_id(CLIENT_ID_PREFIX),
        client_secret_hash: secret.as_deref().map(hash_token),
        redirect_uris: new.redirect_uris.0,
        allowed_scopes: new.allowed_scopes.map(|s| s.0).unwrap_or_else(|| DEFAULT_SCOPES.to_string()),
        profit_margin_bps: new.margin.bps(),
        welcome_credits: new.welcome_credits.0,
        created_at: now,
        updated_at: now,
    };
    state.store.create_app(&app).await.map_err(internal("create app"))?;
    tracing::info!(app = %app.id, developer = %app.developer_id, "app created");
    Ok(CreatedApp { app, client_secret: secret })
}

/// The developer's apps, newest first.
pub async fn list(state: &SharedState, developer: &str) -> Result<Vec<App>, ApiError> {
    state.store.apps_of(developer).await.map_err(internal("list apps"))
}

/// One of the developer's apps (404 for anyone else's).
pub async fn get(state: &SharedState, developer: &str, id: &str) -> Result<App, ApiError> {
    state.store.app_of(developer, id).await.map_err(internal("read app"))?.ok_or_else(|| ApiError::not_found("app"))
}

async fn save(state: &SharedState, mut app: App) -> Result<App, ApiError> {
    app.updated_at = state.clock.now_ms();
    match state.store.update_app(&app).await {
        Ok(()) => {}
        Err(StoreError::NotFound) => return Err(ApiError::not_found("app")),
        Err(e) => return Err(internal("update app")(e)),
    }
    // Cached tokens carry the app's markup: the next request reads the new one.
    state.oauth.tokens.evict_app(&app.id);
    crate::changes::announce(state, &crate::changes::app(&app.id)).await;
    Ok(app)
}

pub async fn update(state: &SharedState, developer: &str, id: &str, patch: AppPatch) -> Result<App, ApiError> {
    let mut app = get(state, developer, id).await?;
    if let Some(name) = patch.name {
        app.name = name.into_string();
    }
    if let Some(uris) = patch.redirect_uris {
        app.redirect_uris = uris.0;
    }
    if let Some(scopes) = patch.allowed_scopes {
        app.allowed_scopes = scopes.0;
    }
    save(state, app).await
}

pub async fn settings(state: &SharedState, developer: &str, id: &str, s: AppSettings) -> Result<App, ApiError> {
    let mut app = get(state, developer, id).await?;
    if let Some(m) = s.margin {
        app.profit_margin_bps = m.bps();
    }
    if let Some(w) = s.welcome_credits {
        app.welcome_credits = w.0;
    }
    save(state, app).await
}

/// The users connected to one of the developer's apps.
pub async fn users(state: &SharedState, developer: &str, id: &str) -> Result<Vec<AppUser>, ApiError> {
    let app = get(state, developer, id).await?;
    state.store.app_users(&app.id).await.map_err(internal("app users"))
}

/// What an app's owner sees of a connected user (SPEC §5): the email only if the user granted
/// `email`, the balance only with `credits.read` (else `None`); spend through the app always.
pub fn visible(u: &AppUser) -> (Option<&str>, Option<i64>) {
    let scopes = Scopes::parse(&u.scopes).unwrap_or_default();
    (
        scopes.contains(Scope::Email).then_some(u.email.as_str()),
        scopes.contains(Scope::CreditsRead).then_some(u.balance),
    )
}

/// Delete an app: its users are disconnected (a `user.disconnected` event each) and its tokens
/// stop working at once.
pub async fn delete(state: &SharedState, developer: &str, id: &str) -> Result<DeletedApp, ApiError> {
    let app = get(state, developer, id).await?;
    let now = state.clock.now_ms();
    let event = |user: &str| connection_event(EventKind::UserDisconnected, &app, user, now);
    let disconnected = match state.store.delete_app(developer, &app.id, now, event).await {
        Ok(users) => users,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("app")),
        Err(e) => return Err(internal("delete app")(e)),
    };
    state.oauth.tokens.evict_app(&app.id);
    crate::changes::announce(state, &crate::changes::app(&app.id)).await;
    tracing::info!(app = %app.id, users = disconnected.len(), "app deleted");
    Ok(DeletedApp { app_id: app.id, disconnected_users: disconnected.len() })
}

/// The apps a user has connected to their wallet.
pub async fn connections(state: &SharedState, user: &str) -> Result<Vec<Connection>, ApiError> {
    state.store.connections_of(user).await.map_err(internal("list connections"))
}

/// End a user's connection to an app (its tokens stop working at once); the app's id.
pub async fn disconnect(state: &SharedState, user: &str, app_id: &str) -> Result<String, ApiError> {
    let app = state
        .store
        .app(app_id)
        .await
        .map_err(internal("read app"))?
        .ok_or_else(|| ApiError::not_found("connection"))?;
    let ended = crate::oauth::tokens::disconnect(state, &app, user).await.map_err(internal("disconnect"))?;
    if !ended {
        return Err(ApiError::not_found("connection"));
    }
    Ok(app.id)
}
