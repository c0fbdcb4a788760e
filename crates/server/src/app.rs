//! The application: shared state and the router, with the cross-cutting layers (request id,
//! body limit, tracing) composed once here.

use crate::auth::KeyCache;
use crate::config::Config;
use crate::routes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::Router;
use quota_core::{Catalog, Model, Provider};
use quota_providers::openai::{OpenAiAdapter, OpenAiConfig};
use quota_providers::sandbox::Sandbox;
use quota_providers::{ChatCall, ChatProvider, ChatResponse, UpstreamError};
use quota_store::{Ledger, LedgerConfig, Store, StoreConfig};
use std::sync::Arc;

pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub ledger: Ledger,
    pub catalog: Catalog,
    pub keys: KeyCache,
    pub limiter: crate::limit::RateLimiter,
    /// The authorization server's caches and keys (SPEC §5).
    pub oauth: crate::oauth::OAuthState,
    /// Time for expiry and refill decisions (tests move it).
    pub clock: Arc<crate::clock::Clock>,
    openai: Arc<dyn ChatProvider>,
    anthropic: Arc<dyn ChatProvider>,
    google: Arc<dyn ChatProvider>,
    sandbox: Arc<dyn ChatProvider>,
}

pub type SharedState = Arc<AppState>;

/// A provider this build cannot reach: every call is 503 `provider_unavailable`.
struct Unavailable(&'static str);

#[async_trait::async_trait]
impl ChatProvider for Unavailable {
    fn prompt_tokens_max(&self, call: &ChatCall<'_>) -> u64 {
        quota_core::tokens::prompt_upper_bound(call.raw)
    }
    async fn chat(&self, _call: ChatCall<'_>) -> Result<ChatResponse, UpstreamError> {
        Err(UpstreamError::NotConfigured(self.0))
    }
}

impl AppState {
    /// Open the database (migrating it), start the ledger, build the adapters.
    pub async fn start(config: Config) -> anyhow::Result<SharedState> {
        AppState::start_with_clock(config, Arc::new(crate::clock::Clock::system())).await
    }

    /// As `start`, with the clock injected (tests move it without sleeping).
    pub async fn start_with_clock(config: Config, clock: Arc<crate::clock::Clock>) -> anyhow::Result<SharedState> {
        crate::metrics::handle();
        let store_config = StoreConfig {
            database_url: config.database_url.clone(),
            synchronous: config.sqlite_synchronous.parse().map_err(anyhow::Error::msg)?,
            ..Default::default()
        };
        let store = Store::open_and_migrate(&store_config).await?;
        let ledger_config = LedgerConfig {
            batch_max: config.ledger_batch_max,
            hold_ttl: config.upstream_timeout() + std::time::Duration::from_secs(60),
            ..Default::default()
        };
        let ledger = Ledger::start(store.clone(), ledger_config).await?;
        let mut catalog = Catalog::builtin();
        if let Some(path) = &config.catalog_path {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("catalog_path {path}: {e}"))?;
            catalog.merge(Catalog::from_toml(&text).map_err(anyhow::Error::msg)?);
        }
        let openai = OpenAiAdapter::new(OpenAiConfig {
            base_url: config.openai_base_url.clone(),
            api_key: config.openai_api_key.clone(),
            first_byte_timeout: config.upstream_first_byte_timeout(),
            total_timeout: config.upstream_timeout(),
        })
        .map_err(anyhow::Error::msg)?;
        let limiter = match &config.redis_url {
            Some(url) => crate::limit::RateLimiter::with_redis(url, clock.clone()).map_err(anyhow::Error::msg)?,
            None => crate::limit::RateLimiter::local(clock.clone()),
        };
        Ok(Arc::new(AppState {
            limiter,
            config,
            store,
            ledger,
            catalog,
            keys: KeyCache::default(),
            oauth: crate::oauth::OAuthState::default(),
            clock,
            openai: Arc::new(openai),
            anthropic: Arc::new(Unavailable("anthropic")),
            google: Arc::new(Unavailable("google")),
            sandbox: Arc::new(Sandbox),
        }))
    }

    /// Phase *route*'s provider choice: the sandbox for sandbox principals, else the model's.
    pub fn chat_provider(&self, model: &Model, sandbox: bool) -> Arc<dyn ChatProvider> {
        if sandbox {
            return self.sandbox.clone();
        }
        match model.provider {
            Provider::Openai => self.openai.clone(),
            Provider::Anthropic => self.anthropic.clone(),
            Provider::Google => self.google.clone(),
        }
    }
}

pub fn build_router(state: SharedState) -> Router {
    let body_limit = state.config.body_limit_bytes;
    Router::new()
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/openapi.json", get(routes::ops::openapi))
        .route("/metrics", get(crate::metrics::render))
        .route("/auth/register", post(routes::accounts::register))
        .route("/auth/login", post(routes::accounts::login))
        .route("/auth/me", get(routes::accounts::me))
        .route("/auth/logout", post(routes::accounts::logout))
        .route("/developers/keys", post(routes::keys::create).get(routes::keys::list))
        .route("/developers/keys/{id}", patch(routes::keys::update).delete(routes::keys::revoke))
        .route("/developers/keys/{id}/rotate", post(routes::keys::rotate))
        .route("/v1/models", get(routes::v1::models))
        .route("/v1/balance", get(routes::v1::balance))
        .route("/v1/chat/completions", post(routes::chat::chat_completions))
        .merge(routes::user_billing_router())
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(crate::metrics::layer))
        .layer(axum::middleware::from_fn(crate::request_id::layer))
        .with_state(state)
}
