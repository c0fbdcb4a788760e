//! Secure by default (SPEC §12; issue 14): the SQLite database and the master key file are
//! 0600, the OIDC signing key and webhook secrets are encrypted at rest (and databases that
//! stored them in clear are upgraded in place), a missing or wrong master key stops the start
//! with a clear error, `/metrics` needs its token when one is set, and the `dev` payments
//! provider is refused on an https deployment.

mod common;

use common::process::QUOTA;
use common::{on_postgres, skip_on_postgres, TestServer};
use quota_server::secrets::at_rest::{MasterKey, Purpose};
use quota_store::webhooks::WebhookEndpoint;
use quota_store::{Store, StoreConfig};
use serde_json::{json, Value};

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_its_wal_and_the_master_key_file_are_0600() {
    if skip_on_postgres("the_database_its_wal_and_the_master_key_file_are_0600", "no database file") {
        return;
    }
    let s = TestServer::start().await;
    s.developer("test").await; // something written, so the WAL exists
    s.state.ledger.flush().await.unwrap();
    let db = s.dir.path().join("quota.db");
    for path in [db.clone(), db.with_file_name("quota.db-wal"), db.with_file_name("quota.db.key")] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

#[tokio::test]
async fn the_signing_key_and_webhook_secrets_are_not_readable_in_the_database() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, _, tokens) = s.connected_user(&app, "openid email").await;
    assert!(tokens["id_token"].is_string(), "the signing key was generated and used");
    let r = s
        .http
        .post(s.url("/v1/webhooks"))
        .bearer_auth(&app.developer_session)
        .json(&json!({"url": "https://hooks.example.com/q"}))
        .send()
        .await
        .unwrap();
    let secret = r.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_string();
    let (_, stored) = s.state.store.signing_key().await.unwrap().unwrap();
    let der = s.state.master_key.open(Purpose::SigningKey, &stored).unwrap();
    let bytes = s.database_contents().await;
    assert!(!contains(&bytes, secret.as_bytes()), "the webhook secret is readable in the database");
    assert!(!contains(&bytes, secret.trim_start_matches("whsec_").as_bytes()));
    assert!(!contains(&bytes, &der[der.len() - 64..]), "the signing key is readable in the database");
    if !on_postgres() {
        let key_text = std::fs::read_to_string(s.dir.path().join("quota.db.key")).unwrap();
        assert!(!contains(&bytes, key_text.trim().as_bytes()), "the master key is not in the database");
    }
}

/// A database as an older Quota left it: a webhook secret and a signing key in clear.
async fn old_database(dir: &tempfile::TempDir) -> (String, String) {
    let url = common::fresh_database_url(dir).await;
    let store =
        Store::open_and_migrate(&StoreConfig { database_url: url.clone(), ..Default::default() }).await.unwrap();
    store.create_user("usr_old", "old@example.com", "x").await.unwrap();
    let secret = "whsec_clearClearClearClearClearClearClear0123=".to_string();
    store
        .create_webhook_endpoint(&WebhookEndpoint {
            id: "whk_old".into(),
            developer_id: "usr_old".into(),
            url: "https://hooks.example.com/old".into(),
            description: String::new(),
            events: Vec::new(),
            low_balance_threshold: None,
            secret: secret.clone(),
            created_at: 0,
            updated_at: 0,
            failing_since: None,
            disabled_at: None,
            disabled_reason: None,
        })
        .await
        .unwrap();
    store.store_signing_key("kid-old", b"0\x82clear-signing-key-der-marker", 0).await.unwrap();
    quota_store::on_pool!(store.pool(), |p| p.close().await);
    (url, secret)
}

#[tokio::test]
async fn secrets_stored_in_clear_are_encrypted_on_the_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let (url, secret) = old_database(&dir).await;
    let s = TestServer::start_with(|c| c.database_url = url).await;
    let endpoint = s.state.store.webhook_endpoint("usr_old", "whk_old").await.unwrap().unwrap();
    assert!(endpoint.secret.starts_with("enc1:"), "sealed in place");
    assert_eq!(s.state.master_key.open_text(Purpose::WebhookSecret, &endpoint.secret).unwrap(), secret);
    let (_, der) = s.state.store.signing_key().await.unwrap().unwrap();
    assert_eq!(s.state.master_key.open(Purpose::SigningKey, &der).unwrap(), b"0\x82clear-signing-key-der-marker");
    if !on_postgres() {
        // No clear copy left in the file or its WAL (the upgrade rewrites the file).
        let db = dir.path().join("quota.db");
        let mut bytes = std::fs::read(&db).unwrap();
        bytes.extend(std::fs::read(db.with_file_name("quota.db-wal")).unwrap_or_default());
        assert!(!contains(&bytes, secret.as_bytes()), "the clear webhook secret is still in the file");
        assert!(!contains(&bytes, b"clear-signing-key-der-marker"), "the clear signing key is still in the file");
        assert_eq!(mode(&db), 0o600, "an existing database is made 0600 too");
    }
}

#[tokio::test]
async fn a_missing_or_wrong_master_key_is_a_clear_start_up_error() {
    let s = TestServer::start().await;
    let url = s.state.config.database_url.clone();
    let start = |configure: Box<dyn FnOnce(&mut quota_server::Config)>| {
        let url = url.clone();
        async move {
            let mut config = common::test_config(url);
            configure(&mut config);
            match quota_server::AppState::start(config).await {
                Ok(_) => panic!("started with the wrong master key"),
                Err(e) => e.to_string(),
            }
        }
    };
    let wrong = start(Box::new(|c| c.secret_key = Some("01".repeat(32)))).await;
    assert!(wrong.contains("is not the master key"), "{wrong}");
    if !on_postgres() {
        std::fs::remove_file(s.dir.path().join("quota.db.key")).unwrap();
        let missing = start(Box::new(|_| {})).await;
        assert!(missing.contains("master key file") && missing.contains("missing"), "{missing}");
        assert!(!s.dir.path().join("quota.db.key").exists(), "no new key was made in its place");
    } else {
        let missing = start(Box::new(|c| c.secret_key = None)).await;
        assert!(missing.contains("set secret_key"), "{missing}");
    }
    // The key is parsed strictly.
    assert!(MasterKey::parse("not a key").is_err());
}

#[tokio::test]
async fn metrics_need_the_token_when_one_is_set() {
    let s = TestServer::start_with(|c| c.metrics_token = Some("scrape-me-0123456789".into())).await;
    let get = |auth: Option<&str>| {
        let mut r = s.http.get(s.url("/metrics"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    common::expect_error(get(None).await.unwrap(), 401, "invalid_api_key").await;
    common::expect_error(get(Some("Bearer wrong")).await.unwrap(), 401, "invalid_api_key").await;
    let ok = get(Some("Bearer scrape-me-0123456789")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("quota_"));
    let open = TestServer::start().await;
    assert_eq!(open.http.get(open.url("/metrics")).send().await.unwrap().status(), 200, "no token: open");
}

#[tokio::test]
async fn dev_payments_with_an_https_public_url_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(QUOTA)
        .args(["serve", "--port", "0", "--bind", "127.0.0.1"])
        .current_dir(dir.path())
        .env("QUOTA_DATABASE_URL", format!("sqlite://{}", dir.path().join("q.db").display()))
        .env("QUOTA_PAYMENTS_PROVIDER", "dev")
        .env("QUOTA_PUBLIC_URL", "https://quota.example.com")
        .env("QUOTA_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dev") && stderr.contains("https"), "the message says why: {stderr}");
    // In code too (the configuration a test or an embedder builds).
    let mut config = common::test_config(common::fresh_database_url(&dir).await);
    config.payments_provider = Some("dev".into());
    config.public_url = Some("https://quota.example.com".into());
    assert!(quota_server::AppState::start(config).await.is_err());
    // Over http (a local setup) it is allowed.
    let s = TestServer::start_with(|c| {
        c.payments_provider = Some("dev".into());
        c.public_url = Some("http://localhost:8080".into());
    })
    .await;
    assert!(s.state.payments.is_some());
}
