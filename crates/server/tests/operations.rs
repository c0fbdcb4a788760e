//! Operable (issue 19): strict configuration through the real binary (a misspelled variable or
//! key stops start-up naming the right one; secrets from `QUOTA_<KEY>_FILE`; `quota config
//! check`), the metrics exposition, the access log and the OTLP export of a request's phases.

mod common;

use common::process::{self, Db, QUOTA};
use std::process::Command;

fn quota(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(QUOTA);
    cmd.args(args).current_dir(dir).env("QUOTA_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn serve_with_a_misspelled_variable_stops_naming_the_right_one_and_creates_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = quota(
        dir.path(),
        &["serve", "--port", "0", "--bind", "127.0.0.1"],
        &[("QUOTA_DATABSE_URL", "postgres://quota@127.0.0.1:1/quota")],
    );
    assert!(!out.status.success(), "it started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("QUOTA_DATABSE_URL"), "names the variable: {stderr}");
    assert!(stderr.contains("did you mean QUOTA_DATABASE_URL?"), "names the closest key: {stderr}");
    assert!(!dir.path().join("quota.db").exists(), "no fresh SQLite file in its place");
}

#[test]
fn serve_with_a_misspelled_file_key_stops_naming_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quota.toml"), "port = 0\nrate_limit_per_minite = 10\n").unwrap();
    let out = quota(dir.path(), &["serve"], &[]);
    assert!(!out.status.success(), "it started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("quota.toml") && stderr.contains("`rate_limit_per_minite`"), "{stderr}");
    assert!(stderr.contains("did you mean `rate_limit_per_minute`?"), "{stderr}");
}

#[test]
fn config_check_prints_the_effective_configuration_masked_and_exits_0_or_1() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("metrics_token");
    std::fs::write(&token, "scrape-secret-0123\n").unwrap();
    let out = quota(
        dir.path(),
        &["config", "check"],
        &[
            ("QUOTA_PORT", "9123"),
            ("QUOTA_METRICS_TOKEN_FILE", token.to_str().unwrap()),
            ("QUOTA_REDIS_URL", "redis://:hunter2@127.0.0.1:6379"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown: toml::Table = stdout.parse().unwrap();
    assert_eq!(shown["port"].as_integer(), Some(9123));
    assert_eq!(shown["metrics_token"].as_str(), Some("********"));
    assert_eq!(shown["redis_url"].as_str(), Some("redis://:********@127.0.0.1:6379"));
    assert!(!stdout.contains("scrape-secret") && !stdout.contains("hunter2"), "{stdout}");

    let bad = quota(dir.path(), &["config", "check"], &[("QUOTA_PROT", "1")]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("did you mean QUOTA_PORT?"));
}

#[tokio::test]
async fn a_secret_from_a_file_is_the_one_the_server_uses() {
    let db = Db::fresh().await;
    let token = db.dir.path().join("metrics_token");
    std::fs::write(&token, "scrape-from-file-0123\n").unwrap();
    let server = process::spawn(&db, &[("QUOTA_METRICS_TOKEN_FILE", token.to_str().unwrap())]);
    let http = reqwest::Client::new();
    let get = |auth: &'static str| http.get(format!("{}/metrics", server.base)).header("authorization", auth).send();
    assert_eq!(get("Bearer scrape-from-file-0123").await.unwrap().status(), 200, "the newline is trimmed");
    assert_eq!(get("Bearer wrong").await.unwrap().status(), 401);
}

#[tokio::test]
async fn ledger_verify_json_is_one_object_with_the_same_exit_codes() {
    let db = Db::fresh().await;
    assert!(process::cli(&db, &["admin", "create-account", "a@example.com", "--password", "long enough"])
        .status
        .success());
    let out = process::cli(&db, &["ledger", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(report["ok"], true);
    assert_eq!(report["sum_of_balances"], 0);
    assert!(report["transfers"].as_u64().unwrap() >= 1, "the welcome credit: {report}");
    // A cached balance that disagrees with the transfers: exit 1, and the report says which.
    let store = db.store().await;
    quota_store::on_pool!(store.pool(), |p| {
        sqlx::query("UPDATE accounts SET balance = balance + 7 WHERE id LIKE 'wallet:%'")
            .execute(p)
            .await
            .unwrap()
            .rows_affected()
    });
    let out = process::cli(&db, &["ledger", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(report["ok"], false);
    assert_eq!(report["mismatches"].as_array().unwrap().len(), 1, "{report}");
}

/// The ids of one `/v1/usage` page and its `next_cursor`.
async fn usage_page(s: &common::TestServer, session: &str, query: &str) -> (Vec<String>, Option<String>) {
    let page = s.get_json(&format!("/v1/usage?{query}"), session).await;
    let ids = page["data"].as_array().unwrap_or_else(|| panic!("{page}")).iter();
    let ids = ids.map(|r| r["id"].as_str().unwrap().to_string()).collect();
    (ids, page["next_cursor"].as_str().map(str::to_string))
}

#[tokio::test]
async fn usage_cursor_pages_do_not_shift_when_new_records_arrive() {
    let s = common::TestServer::start().await;
    let (_, session, key) = s.developer("test").await;
    let chat = || s.chat(&key, common::simple_chat("hi", 5));
    for _ in 0..5 {
        assert_eq!(chat().await.status(), 200);
    }
    let (all, none) = usage_page(&s, &session, "limit=50").await;
    assert_eq!((all.len(), none), (5, None));
    let (first, cursor) = usage_page(&s, &session, "limit=2").await;
    assert_eq!(first, all[..2]);
    // Three newer records: an offset would now repeat all[1] and skip; a keyset page does not.
    for _ in 0..3 {
        assert_eq!(chat().await.status(), 200);
    }
    let (second, cursor) = usage_page(&s, &session, &format!("limit=2&cursor={}", cursor.unwrap())).await;
    assert_eq!(second, all[2..4]);
    let (third, cursor) = usage_page(&s, &session, &format!("limit=2&cursor={}", cursor.unwrap())).await;
    assert_eq!((third.as_slice(), cursor), (&all[4..], None));
    // An offset cursor from before keyset pages still works (`o:2`).
    let (by_offset, _) = usage_page(&s, &session, "limit=2&cursor=bzoy").await;
    assert_eq!(by_offset.len(), 2);
    let bad = s.http.get(s.url("/v1/usage?cursor=%%%")).bearer_auth(&session).send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn usage_time_filters_take_rfc3339_offsets() {
    let s = common::TestServer::start().await;
    let (_, session, key) = s.developer("test").await;
    assert_eq!(s.chat(&key, common::simple_chat("hi", 5)).await.status(), 200);
    let count = |query: &'static str| {
        let s = &s;
        let session = &session;
        async move {
            let page = s.get_json(&format!("/v1/usage?{query}"), session).await;
            page["data"].as_array().unwrap_or_else(|| panic!("{query}: {page}")).len()
        }
    };
    assert_eq!(count("from=2000-01-01T00:00:00%2B00:00").await, 1);
    assert_eq!(count("from=2000-01-01T02:00:00%2B02:00").await, 1);
    assert_eq!(count("to=2000-01-01T00:00:00-05:00").await, 0);
    assert_eq!(count("from=2999-01-01T00:00:00%2B02:00").await, 0);
}
