//! Configuration: defaults, then a TOML file (`--config`, `QUOTA_CONFIG`, or `./quota.toml` if
//! present), then `QUOTA_*` environment variables (and the providers' conventional
//! `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GEMINI_API_KEY`), then command-line flags.
//! `quota serve` with nothing set works: SQLite in the working directory, port 8080, sandbox.
//! Strict: an unknown key or `QUOTA_*` variable stops start-up naming the closest known one, and
//! every secret can come from a file (`QUOTA_<KEY>_FILE`); see `strict`.

mod strict;

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
pub use strict::masked_toml;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TCP port (0 picks a free one; the startup line says which).
    pub port: u16,
    /// Address to bind.
    pub bind: String,
    /// `sqlite://file.db` (default `sqlite://quota.db` in the working directory).
    pub database_url: String,
    /// `normal` (survives a process crash) or `full` (also power loss).
    pub sqlite_synchronous: String,
    /// Credits granted to every new account from the promotions account.
    pub welcome_credits: i64,
    /// Largest request body accepted (413 beyond).
    pub body_limit_bytes: usize,
    /// Session lifetime.
    pub session_ttl_secs: u64,
    /// Mark the session cookie `Secure` (set when Quota is served over TLS).
    pub cookie_secure: bool,
    pub openai_base_url: String,
    pub openai_api_key: Option<String>,
    pub anthropic_base_url: String,
    pub anthropic_api_key: Option<String>,
    pub google_base_url: String,
    pub gemini_api_key: Option<String>,
    /// Whole upstream request, first byte to last.
    pub upstream_timeout_secs: u64,
    /// Until the upstream's response headers arrive.
    pub upstream_first_byte_timeout_secs: u64,
    /// A catalog file whose models replace or add to the built-in ones.
    pub catalog_path: Option<String>,
    /// `text` or `json`.
    pub log_format: String,
    /// Most settlements committed in one ledger transaction.
    pub ledger_batch_max: usize,
    /// A hold not settled by then is freed (on PostgreSQL by any instance: how a crashed
    /// instance's holds come back). 0: the upstream timeout plus a minute.
    pub hold_ttl_secs: u64,
    /// Redis for rate limits shared by every instance (`redis://127.0.0.1:6379`); unset: per
    /// instance.
    pub redis_url: Option<String>,
    /// Requests per minute per API key (and per app × user) unless the key overrides it.
    pub rate_limit_per_minute: u32,
    /// Per client IP.
    pub register_rate_limit_per_minute: u32,
    pub login_rate_limit_per_minute: u32,
    /// Per OAuth client on `/oauth/token`.
    pub token_rate_limit_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs such as `10.0.0.0/8` or single
    /// addresses). The client IP is the first address, read from the right, that is not one of
    /// them; the leftmost entry is never trusted. Empty: the TCP peer is the client (SPEC §7).
    pub trusted_proxies: Vec<String>,
    /// Failed sign-ins per email within `lockout_window_secs` that lock password attempts for
    /// that email for `lockout_window_secs` (SPEC §1).
    pub lockout_failures: u32,
    pub lockout_window_secs: u64,
    /// Per-account caps (SPEC §1): more is 403 `limit_reached`.
    pub max_api_keys_per_account: u32,
    pub max_apps_per_account: u32,
    pub max_webhooks_per_account: u32,
    /// The public base URL (`https://quota.example.com`): the OAuth issuer and the endpoints in
    /// the discovery document. Unset: `http://` + the request's Host header (local use).
    pub public_url: Option<String>,
    /// Whether webhook URLs may point to private and loopback addresses (SSRF, SPEC §8). Off
    /// unless set, however Quota is bound.
    pub webhook_allow_private_urls: bool,
    /// How often the webhook worker looks for new events and due retries.
    pub webhook_poll_ms: u64,
    /// Most webhook deliveries in flight per process.
    pub webhook_concurrency: usize,
    /// The CPU priority of the webhook worker's thread: `idle` (Linux `SCHED_IDLE`: it runs
    /// when no request needs the CPU and yields the moment one does), `low` (nice 19) or
    /// `normal` (the same as requests). Deliveries are durable: a backlog built under
    /// saturation drains when load drops.
    pub webhook_priority: String,
    /// Days raw usage records are kept before being folded into daily aggregates.
    pub usage_retention_days: u32,
    /// Top-ups and payouts (SPEC §10): `stripe` (the Stripe API) or `dev` (a local checkout
    /// page that pays at once, for running without Stripe). Unset: payments are off.
    pub payments_provider: Option<String>,
    /// Stripe's API base URL (tests point it at a fake).
    pub stripe_api_base: String,
    /// `sk_live_…` / `sk_test_…`. Never logged.
    pub stripe_secret_key: Option<String>,
    /// `whsec_…`: verifies `Stripe-Signature` on `POST /webhooks/stripe`. Never logged.
    pub stripe_webhook_secret: Option<String>,
    /// How long a Stripe API call may take.
    pub stripe_timeout_secs: u64,
    /// The credit packages sold (`GET /v1/packages`).
    pub packages: Vec<PackageConfig>,
    /// Run the daily payout batch in-process (when payments are on).
    pub payouts_schedule: bool,
    /// The UTC hour of day at which the in-process batch runs.
    pub payouts_hour_utc: u32,
    /// When set, `GET /metrics` needs `Authorization: Bearer <metrics_token>`.
    pub metrics_token: Option<String>,
    /// The master key that encrypts the OIDC signing key and webhook secrets at rest: 32 bytes
    /// as 64 hex digits or base64. Unset on SQLite: a key file beside the database
    /// (`<database>.key`, created 0600 on first start). Required on PostgreSQL (every instance
    /// needs the same one).
    pub secret_key: Option<String>,
    /// An OpenTelemetry collector's OTLP/HTTP traces endpoint
    /// (`http://collector:4318/v1/traces`): each request's phases are exported as spans. Unset:
    /// no export, and no per-request cost.
    pub otlp_endpoint: Option<String>,
}

/// One top-up package: the customer pays `price_cents`, the wallet receives `credits`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PackageConfig {
    pub id: String,
    pub name: String,
    pub price_cents: i64,
    pub credits: i64,
}

/// SPEC §10.1's packages.
pub fn default_packages() -> Vec<PackageConfig> {
    let p = |id: &str, name: &str, price_cents: i64, credits: i64| PackageConfig {
        id: id.into(),
        name: name.into(),
        price_cents,
        credits,
    };
    vec![
        p("starter", "Starter", 500, 4_050_000),
        p("basic", "Basic", 1_000, 8_500_000),
        p("plus", "Plus", 2_500, 22_500_000),
        p("pro", "Pro", 5_000, 46_500_000),
    ]
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 8080,
            bind: "0.0.0.0".into(),
            database_url: "sqlite://quota.db".into(),
            sqlite_synchronous: "normal".into(),
            welcome_credits: 1_000_000,
            body_limit_bytes: 20 * 1024 * 1024,
            session_ttl_secs: 24 * 3600,
            cookie_secure: false,
            openai_base_url: "https://api.openai.com/v1".into(),
            openai_api_key: None,
            anthropic_base_url: "https://api.anthropic.com".into(),
            anthropic_api_key: None,
            google_base_url: "https://generativelanguage.googleapis.com".into(),
            gemini_api_key: None,
            upstream_timeout_secs: 600,
            upstream_first_byte_timeout_secs: 60,
            catalog_path: None,
            log_format: "text".into(),
            ledger_batch_max: 512,
            hold_ttl_secs: 0,
            redis_url: None,
            rate_limit_per_minute: 100,
            register_rate_limit_per_minute: 3,
            login_rate_limit_per_minute: 5,
            token_rate_limit_per_minute: 60,
            trusted_proxies: Vec::new(),
            lockout_failures: 10,
            lockout_window_secs: 15 * 60,
            max_api_keys_per_account: 100,
            max_apps_per_account: 20,
            max_webhooks_per_account: 20,
            public_url: None,
            webhook_allow_private_urls: false,
            webhook_poll_ms: 200,
            webhook_concurrency: 64,
            webhook_priority: "idle".into(),
            usage_retention_days: 90,
            payments_provider: None,
            stripe_api_base: "https://api.stripe.com".into(),
            stripe_secret_key: None,
            stripe_webhook_secret: None,
            stripe_timeout_secs: 30,
            packages: default_packages(),
            payouts_schedule: true,
            payouts_hour_utc: 0,
            metrics_token: None,
            secret_key: None,
            otlp_endpoint: None,
        }
    }
}

/// How an environment variable's text becomes a TOML value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Always a string, even when it looks like a number.
    Text,
    /// An integer or a boolean.
    Scalar,
    /// A comma-separated list of strings.
    List,
}

/// Every configuration key, for reading `QUOTA_<KEY>` variables (others are ignored).
const KEYS: &[(&str, Kind)] = &[
    ("port", Kind::Scalar),
    ("bind", Kind::Text),
    ("database_url", Kind::Text),
    ("sqlite_synchronous", Kind::Text),
    ("welcome_credits", Kind::Scalar),
    ("body_limit_bytes", Kind::Scalar),
    ("session_ttl_secs", Kind::Scalar),
    ("cookie_secure", Kind::Scalar),
    ("openai_base_url", Kind::Text),
    ("openai_api_key", Kind::Text),
    ("anthropic_base_url", Kind::Text),
    ("anthropic_api_key", Kind::Text),
    ("google_base_url", Kind::Text),
    ("gemini_api_key", Kind::Text),
    ("upstream_timeout_secs", Kind::Scalar),
    ("upstream_first_byte_timeout_secs", Kind::Scalar),
    ("catalog_path", Kind::Text),
    ("log_format", Kind::Text),
    ("ledger_batch_max", Kind::Scalar),
    ("hold_ttl_secs", Kind::Scalar),
    ("redis_url", Kind::Text),
    ("rate_limit_per_minute", Kind::Scalar),
    ("register_rate_limit_per_minute", Kind::Scalar),
    ("login_rate_limit_per_minute", Kind::Scalar),
    ("token_rate_limit_per_minute", Kind::Scalar),
    ("trusted_proxies", Kind::List),
    ("lockout_failures", Kind::Scalar),
    ("lockout_window_secs", Kind::Scalar),
    ("max_api_keys_per_account", Kind::Scalar),
    ("max_apps_per_account", Kind::Scalar),
    ("max_webhooks_per_account", Kind::Scalar),
    ("public_url", Kind::Text),
    ("webhook_allow_private_urls", Kind::Scalar),
    ("webhook_poll_ms", Kind::Scalar),
    ("webhook_concurrency", Kind::Scalar),
    ("webhook_priority", Kind::Text),
    ("usage_retention_days", Kind::Scalar),
    ("payments_provider", Kind::Text),
    ("stripe_api_base", Kind::Text),
    ("stripe_secret_key", Kind::Text),
    ("stripe_webhook_secret", Kind::Text),
    ("stripe_timeout_secs", Kind::Scalar),
    ("payouts_schedule", Kind::Scalar),
    ("payouts_hour_utc", Kind::Scalar),
    ("metrics_token", Kind::Text),
    ("secret_key", Kind::Text),
    ("otlp_endpoint", Kind::Text),
];

/// Keys only a TOML file can set (tables have no environment form).
const FILE_ONLY_KEYS: &[&str] = &["packages"];

impl Config {
    /// Load from `file` (if given or `./quota.toml` exists) and the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        Config::load_from(file, std::env::vars())
    }

    pub fn load_from(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, String> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.iter().find(|(k, _)| k == "QUOTA_CONFIG").map(|(_, v)| v.into()))
            .or_else(|| Path::new("quota.toml").exists().then(|| "quota.toml".into()));
        let mut table = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
                let table = text.parse::<toml::Table>().map_err(|e| format!("{}: {e}", path.display()))?;
                strict::check_file_keys(&table).map_err(|e| format!("{}: {e}", path.display()))?;
                table
            }
            None => toml::Table::new(),
        };
        // Conventional provider variables first, so QUOTA_* ones win.
        for (var, key) in [
            ("OPENAI_API_KEY", "openai_api_key"),
            ("ANTHROPIC_API_KEY", "anthropic_api_key"),
            ("GEMINI_API_KEY", "gemini_api_key"),
        ] {
            if let Some((_, v)) = env.iter().find(|(k, _)| k == var) {
                if !v.is_empty() {
                    table.insert(key.into(), toml::Value::String(v.clone()));
                }
            }
        }
        for strict::Variable { var, key, kind, value } in strict::config_variables(&env)? {
            let v = if kind == Kind::Text {
                toml::Value::String(value)
            } else if kind == Kind::List {
                let items = value.split(',').map(str::trim).filter(|v| !v.is_empty());
                toml::Value::Array(items.map(|v| toml::Value::String(v.to_string())).collect())
            } else if let Ok(i) = value.trim().parse::<i64>() {
                toml::Value::Integer(i)
            } else if let Ok(b) = value.trim().parse::<bool>() {
                toml::Value::Boolean(b)
            } else {
                return Err(format!("{var}: `{value}` is not a valid value"));
            };
            table.insert(key.to_string(), v);
        }
        let config: Config = table.try_into().map_err(|e: toml::de::Error| format!("configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Check the values (also run by `AppState::start`, so a configuration built in code is held
    /// to the same rules as one loaded from a file).
    pub fn validate(&self) -> Result<(), String> {
        if self.welcome_credits < 0 {
            return Err("welcome_credits must not be negative".into());
        }
        if self.body_limit_bytes == 0 {
            return Err("body_limit_bytes must be positive".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err("log_format must be `text` or `json`".into());
        }
        self.sqlite_synchronous.parse::<quota_store::Synchronous>()?;
        if self.rate_limit_per_minute == 0
            || self.register_rate_limit_per_minute == 0
            || self.login_rate_limit_per_minute == 0
            || self.token_rate_limit_per_minute == 0
        {
            return Err("rate limits must be at least 1 per minute".into());
        }
        if let Some(url) = self.public_url.as_deref().filter(|u| !u.is_empty()) {
            let parsed = url::Url::parse(url).map_err(|e| format!("public_url `{url}`: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(format!("public_url must be an http(s) base URL without query or fragment, got `{url}`"));
            }
        }
        crate::client_ip::TrustedProxies::parse(&self.trusted_proxies)?;
        if self.lockout_failures == 0 || self.lockout_window_secs == 0 {
            return Err("lockout_failures and lockout_window_secs must be positive".into());
        }
        if let Some(key) = self.secret_key.as_deref() {
            crate::secrets::at_rest::MasterKey::parse(key)?;
        }
        if self.upstream_timeout_secs == 0 || self.upstream_first_byte_timeout_secs == 0 {
            return Err("upstream timeouts must be positive".into());
        }
        self.webhook_priority.parse::<crate::webhooks::Priority>()?;
        if let Some(url) = self.otlp_endpoint.as_deref().filter(|u| !u.is_empty()) {
            let parsed = url::Url::parse(url).map_err(|e| format!("otlp_endpoint `{url}`: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("otlp_endpoint must be an http(s) URL (OTLP/HTTP), got `{url}`"));
            }
        }
        self.validate_payments()
    }

    fn validate_payments(&self) -> Result<(), String> {
        match self.payments_provider.as_deref().filter(|p| !p.is_empty()) {
            None => {}
            Some("dev") if self.is_public_https() => {
                return Err("payments_provider = \"dev\" pays every checkout without charging anyone: it is \
                            refused when public_url is https:// (a real deployment); use `stripe`"
                    .into());
            }
            Some("dev") => {}
            Some("stripe") => {
                if self.stripe_secret_key.as_deref().is_none_or(str::is_empty) {
                    return Err("payments_provider = \"stripe\" needs stripe_secret_key".into());
                }
                if self.stripe_webhook_secret.as_deref().is_none_or(str::is_empty) {
                    return Err("payments_provider = \"stripe\" needs stripe_webhook_secret".into());
                }
                url::Url::parse(&self.stripe_api_base).map_err(|e| format!("stripe_api_base: {e}"))?;
            }
            Some(other) => return Err(format!("payments_provider must be `stripe` or `dev`, got `{other}`")),
        }
        if self.stripe_timeout_secs == 0 {
            return Err("stripe_timeout_secs must be positive".into());
        }
        if self.payouts_hour_utc > 23 {
            return Err("payouts_hour_utc must be 0 to 23".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.packages {
            let id_ok = !p.id.is_empty()
                && p.id.len() <= 64
                && p.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !id_ok || !seen.insert(p.id.as_str()) {
                return Err(format!("package id `{}` must be unique, 1–64 of [A-Za-z0-9_-]", p.id));
            }
            if p.price_cents < 50 || p.credits <= 0 {
                return Err(format!("package `{}`: price_cents must be at least 50 and credits positive", p.id));
            }
        }
        Ok(())
    }

    /// Whether `public_url` is an `https://` URL (a real deployment).
    pub fn is_public_https(&self) -> bool {
        self.public_url.as_deref().is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"))
    }

    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_timeout_secs)
    }

    /// How long a hold lives unsettled (`hold_ttl_secs`, or the upstream timeout plus a minute).
    pub fn hold_ttl(&self) -> Duration {
        match self.hold_ttl_secs {
            0 => self.upstream_timeout() + Duration::from_secs(60),
            s => Duration::from_secs(s),
        }
    }

    pub fn upstream_first_byte_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_first_byte_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_work_without_anything() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.database_url, "sqlite://quota.db");
        assert!(c.openai_api_key.is_none());
    }

    #[test]
    fn env_overrides_file_and_test_suite_vars_are_not_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(&path, "port = 9000\nwelcome_credits = 5\n").unwrap();
        let c = Config::load_from(
            Some(&path),
            env(&[
                ("QUOTA_PORT", "9100"),
                ("QUOTA_TEST_POSTGRES_URL", "x"),
                ("OPENAI_API_KEY", "sk-1"),
                ("QUOTA_OPENAI_API_KEY", "sk-2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.port, 9100);
        assert_eq!(c.welcome_credits, 5);
        assert_eq!(c.openai_api_key.as_deref(), Some("sk-2"));
    }

    #[test]
    fn payments_are_off_by_default_and_stripe_needs_its_secrets() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert!(c.payments_provider.is_none());
        assert_eq!(c.packages.len(), 4);
        assert!(Config::load_from(None, env(&[("QUOTA_PAYMENTS_PROVIDER", "stripe")])).is_err());
        assert!(Config::load_from(None, env(&[("QUOTA_PAYMENTS_PROVIDER", "paypal")])).is_err());
        let c = Config::load_from(
            None,
            env(&[
                ("QUOTA_PAYMENTS_PROVIDER", "stripe"),
                ("QUOTA_STRIPE_SECRET_KEY", "sk_test_1"),
                ("QUOTA_STRIPE_WEBHOOK_SECRET", "whsec_1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.payments_provider.as_deref(), Some("stripe"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(&path, "[[packages]]\nid = \"tiny\"\nname = \"Tiny\"\nprice_cents = 100\ncredits = 90000\n")
            .unwrap();
        let c = Config::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(
            c.packages,
            vec![PackageConfig { id: "tiny".into(), name: "Tiny".into(), price_cents: 100, credits: 90_000 }]
        );
    }

    #[test]
    fn issue_14_keys_parse_and_dev_payments_need_a_non_https_public_url() {
        let c = Config::load_from(None, env(&[("QUOTA_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")])).unwrap();
        assert_eq!(c.trusted_proxies, vec!["10.0.0.0/8".to_string(), "127.0.0.1".to_string()]);
        assert!(!c.webhook_allow_private_urls, "off by default, whatever bind is");
        assert_eq!((c.max_api_keys_per_account, c.max_apps_per_account, c.max_webhooks_per_account), (100, 20, 20));
        assert_eq!((c.lockout_failures, c.lockout_window_secs), (10, 900));
        assert!(Config::load_from(None, env(&[("QUOTA_TRUSTED_PROXIES", "10.0.0.0/99")])).is_err());
        assert!(Config::load_from(None, env(&[("QUOTA_SECRET_KEY", "short")])).is_err());
        assert!(Config::load_from(None, env(&[("QUOTA_SECRET_KEY", &"ab".repeat(32))])).is_ok());
        let dev_on =
            |url: &str| Config::load_from(None, env(&[("QUOTA_PAYMENTS_PROVIDER", "dev"), ("QUOTA_PUBLIC_URL", url)]));
        let e = dev_on("https://quota.example.com").unwrap_err();
        assert!(e.contains("dev") && e.contains("https"), "{e}");
        assert!(dev_on("http://localhost:8080").is_ok());
    }

    #[test]
    fn bad_values_are_reported() {
        assert!(Config::load_from(None, env(&[("QUOTA_PORT", "eighty")])).is_err());
        assert!(Config::load_from(None, env(&[("QUOTA_WELCOME_CREDITS", "-1")])).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(&path, "prot = 1\n").unwrap();
        assert!(Config::load_from(Some(&path), env(&[])).unwrap_err().contains("prot"));
    }
}
