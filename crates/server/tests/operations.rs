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
