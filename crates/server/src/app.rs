//! The application: shared state and the router, with the cross-cutting layers (request id,
//! metrics, trace span and access log, body limit) composed once here.

use crate::auth::KeyCache;
use crate::config::Config;
use crate::routes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::Router;
use quota_core::{Catalog, Model, Provider};
use quota_providers::anthropic::{AnthropicAdapter, MessagesRequest};
use quota_providers::count_tokens::TokenCounter;
use quota_providers::embeddings::EmbedRequest;
use quota_providers::google::{GenerateRequest, GoogleAdapter};
use quota_providers::http::UpstreamConfig;
use quota_providers::openai::responses::ResponsesRequest;
use quota_providers::openai::OpenAiAdapter;
use quota_providers::sandbox::Sandbox;
use quota_providers::{ChatProvider, NativeProvider};
use quota_store::{Ledger, LedgerConfig, Store, StoreConfig};
use std::sync::Arc;

pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub ledger: Ledger,
    pub catalog: Catalog,
    pub keys: KeyCache,
    pub limiter: crate::limit::RateLimiter,
    /// `trusted_proxies`, parsed: who the client is (SPEC §7).
    pub proxies: crate::client_ip::TrustedProxies,
    /// The authorization server's caches and keys (SPEC §5).
    pub oauth: crate::oauth::OAuthState,
    /// Time for expiry and refill decisions (tests move it).
    pub clock: Arc<crate::clock::Clock>,
    /// Live webhook endpoints by developer, for the request path (SPEC §8).
    pub webhooks: crate::webhooks::Directory,
    /// Encrypts the OIDC signing key and webhook secrets at rest (SPEC §12).
    pub master_key: crate::secrets::at_rest::MasterKey,
    /// Where webhook hosts are looked up (checked against SSRF at every delivery).
    pub webhook_resolver: Arc<dyn crate::webhooks::ssrf::Resolve>,
    /// The payment provider (SPEC §10), if configured.
    pub payments: Option<crate::payments::Provider>,
    /// Seams a test can turn on to observe a request mid-life (off in production).
    pub test_hooks: crate::test_hooks::TestHooks,
    openai: Arc<OpenAiAdapter>,
    anthropic: Arc<AnthropicAdapter>,
    google: Arc<GoogleAdapter>,
    sandbox: Arc<Sandbox>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Open the database (migrating it), start the ledger, build the adapters.
    pub async fn start(config: Config) -> anyhow::Result<SharedState> {
        AppState::start_with_clock(config, Arc::new(crate::clock::Clock::system())).await
    }

    /// As `start`, with the clock injected (tests move it without sleeping).
    pub async fn start_with_clock(config: Config, clock: Arc<crate::clock::Clock>) -> anyhow::Result<SharedState> {
        AppState::start_with_parts(config, clock, Arc::new(crate::webhooks::ssrf::SystemResolver)).await
    }

    /// As `start`, with the clock and the webhook resolver injected (tests script DNS).
    pub async fn start_with_parts(
        config: Config,
        clock: Arc<crate::clock::Clock>,
        webhook_resolver: Arc<dyn crate::webhooks::ssrf::Resolve>,
    ) -> anyhow::Result<SharedState> {
        config.validate().map_err(anyhow::Error::msg)?;
        crate::metrics::handle();
        let store_config = StoreConfig {
            database_url: config.database_url.clone(),
            synchronous: config.sqlite_synchronous.parse().map_err(anyhow::Error::msg)?,
            ..Default::default()
        };
        let sqlite_file = crate::files::sqlite_file(&config.database_url);
        if let Some(file) = &sqlite_file {
            crate::files::prepare_sqlite_file(file)
                .map_err(|e| anyhow::anyhow!("preparing the database file {}: {e}", file.display()))?;
        }
        let store = Store::open_and_migrate(&store_config).await?;
        let master_key = crate::secrets::at_rest::unlock(
            config.secret_key.as_deref(),
            &store,
            sqlite_file.as_deref(),
            clock.now_ms(),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let ledger_config =
            LedgerConfig { batch_max: config.ledger_batch_max, hold_ttl: config.hold_ttl(), ..Default::default() };
        let ledger = Ledger::start(store.clone(), ledger_config).await?;
        let mut catalog = Catalog::builtin();
        if let Some(path) = &config.catalog_path {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("catalog_path {path}: {e}"))?;
            catalog.merge(Catalog::from_toml(&text).map_err(anyhow::Error::msg)?);
        }
        let upstream = |base_url: &str, api_key: &Option<String>| UpstreamConfig {
            base_url: base_url.to_string(),
            api_key: api_key.clone(),
            first_byte_timeout: config.upstream_first_byte_timeout(),
            total_timeout: config.upstream_timeout(),
        };
        let openai = OpenAiAdapter::new(upstream(&config.openai_base_url, &config.openai_api_key));
        let anthropic = AnthropicAdapter::new(upstream(&config.anthropic_base_url, &config.anthropic_api_key));
        let google = GoogleAdapter::new(upstream(&config.google_base_url, &config.gemini_api_key));
        let limiter = match &config.redis_url {
            Some(url) => crate::limit::RateLimiter::with_redis(url, clock.clone()).map_err(anyhow::Error::msg)?,
            None => crate::limit::RateLimiter::local(clock.clone()),
        };
        let webhooks = crate::webhooks::Directory::default();
        webhooks.reload(&store).await?;
        let payments = crate::payments::Provider::from_config(&config).map_err(anyhow::Error::msg)?;
        let proxies = crate::client_ip::TrustedProxies::parse(&config.trusted_proxies).map_err(anyhow::Error::msg)?;
        let state = Arc::new(AppState {
            payments,
            limiter,
            proxies,
            webhook_resolver,
            master_key,
            webhooks,
            oauth: crate::oauth::OAuthState::default(),
            clock,
            openai: Arc::new(openai.map_err(anyhow::Error::msg)?),
            anthropic: Arc::new(anthropic.map_err(anyhow::Error::msg)?),
            google: Arc::new(google.map_err(anyhow::Error::msg)?),
            sandbox: Arc::new(Sandbox),
            config,
            store,
            ledger,
            catalog,
            keys: KeyCache::default(),
            test_hooks: Default::default(),
        });
        crate::changes::spawn_listener(&state).await?;
        crate::webhooks::spawn_worker(&state).await;
        if state.payments.is_some() && state.config.payouts_schedule {
            crate::payments::payouts::spawn_schedule(&state);
        }
        Ok(state)
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

    /// The adapter behind `POST /v1/messages`: Anthropic, or the sandbox.
    pub fn messages_provider(&self, sandbox: bool) -> Arc<dyn NativeProvider<MessagesRequest>> {
        if sandbox {
            self.sandbox.clone()
        } else {
            self.anthropic.clone()
        }
    }

    /// The adapter behind the embeddings routes: the model's provider, or the sandbox.
    pub fn embeddings_provider(&self, model: &Model, sandbox: bool) -> Arc<dyn NativeProvider<EmbedRequest>> {
        match (sandbox, model.provider) {
            (true, _) => self.sandbox.clone(),
            (false, Provider::Google) => self.google.clone(),
            (false, _) => self.openai.clone(),
        }
    }

    /// Who counts `POST /v1/messages/count_tokens`: Anthropic, or the sandbox.
    pub fn messages_counter(&self, sandbox: bool) -> Arc<dyn TokenCounter<MessagesRequest>> {
        if sandbox {
            self.sandbox.clone()
        } else {
            self.anthropic.clone()
        }
    }

    /// Who counts Gemini's `:countTokens`: Google, or the sandbox.
    pub fn gemini_counter(&self, sandbox: bool) -> Arc<dyn TokenCounter<GenerateRequest>> {
        if sandbox {
            self.sandbox.clone()
        } else {
            self.google.clone()
        }
    }

    /// The adapter behind `POST /v1/responses`: OpenAI, or the sandbox.
    pub fn responses_provider(&self, sandbox: bool) -> Arc<dyn NativeProvider<ResponsesRequest>> {
        if sandbox {
            self.sandbox.clone()
        } else {
            self.openai.clone()
        }
    }

    /// The adapter behind `POST /v1beta/models/{model}:generateContent`: Google, or the sandbox.
    pub fn gemini_provider(&self, sandbox: bool) -> Arc<dyn NativeProvider<GenerateRequest>> {
        if sandbox {
            self.sandbox.clone()
        } else {
            self.google.clone()
        }
    }
}

pub fn build_router(state: SharedState) -> Router {
    let body_limit = state.config.body_limit_bytes;
    crate::error_catalog::set_public_base(state.config.public_url.as_deref());
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
        .route("/v1/chat/completions", post(crate::gateway::routes::chat::chat_completions))
        .merge(routes::user_billing_router())
        .merge(routes::reporting_router())
        .merge(routes::payments_router())
        .merge(routes::compat_router())
        .merge(crate::dashboard::router())
        .route("/v1/messages", post(crate::gateway::routes::messages::messages))
        .route("/v1/messages/count_tokens", post(crate::gateway::count_tokens::messages))
        .route("/v1/responses", post(crate::gateway::routes::responses::responses))
        .route("/v1/embeddings", post(crate::gateway::routes::embeddings::embeddings))
        // Gemini's API version is v1beta; the Google GenAI SDK's default is v1: both work.
        .route("/v1beta/models/{*model_action}", post(crate::gateway::routes::gemini::generate_content))
        .route("/v1/models/{*model_action}", post(crate::gateway::routes::gemini::generate_content))
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(crate::error::json_rejections))
        .layer(axum::middleware::from_fn(crate::telemetry::layer))
        .layer(axum::middleware::from_fn(crate::metrics::layer))
        .layer(axum::middleware::from_fn(crate::request_id::layer))
        .with_state(state)
}
