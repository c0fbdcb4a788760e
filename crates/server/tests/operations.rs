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

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_every_series_has_help_and_type() {
    let s = common::TestServer::start().await;
    let (_, _, key) = s.developer("test").await;
    assert_eq!(s.chat(&key, common::simple_chat("hi", 5)).await.status(), 200);
    let mut streamed = common::simple_chat("hi", 5);
    streamed["stream"] = true.into();
    let stream = s.chat(&key, streamed).await;
    assert_eq!(stream.status(), 200);
    assert!(stream.text().await.unwrap().contains("[DONE]"));
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(scrape.samples.len() > 10, "{text}");
    for sample in &scrape.samples {
        // A histogram's `_sum` and `_count` are described under its name.
        let name = ["_sum", "_count"].iter().find_map(|s| sample.metric.strip_suffix(s)).unwrap_or(&sample.metric);
        assert!(scrape.docs.contains_key(name), "no # HELP for {}:\n{text}", sample.metric);
        let typed = |metric: &str| {
            scrape.samples.iter().any(|x| x.metric == metric && !matches!(x.value, prometheus_parse::Value::Untyped(_)))
        };
        assert!(typed(&sample.metric) || typed(name), "no # TYPE for {}", sample.metric);
    }
    // Bounded cardinality: no label names a key, user, app or request.
    let allowed =
        ["route", "status", "outcome", "provider", "code", "model", "billing_mode", "direction", "allowed", "stage"];
    for sample in &scrape.samples {
        for (label, _) in sample.labels.iter() {
            assert!(allowed.contains(&label.as_str()), "label {label} on {}", sample.metric);
        }
    }
    let value = |metric: &str, labels: &[(&str, &str)]| {
        let found = scrape
            .samples
            .iter()
            .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)));
        match found.map(|x| &x.value) {
            Some(prometheus_parse::Value::Counter(v)) => *v,
            Some(prometheus_parse::Value::Histogram(buckets)) => buckets.last().map(|b| b.count).unwrap_or(0.0),
            other => panic!("{metric} {labels:?}: {other:?}\n{text}"),
        }
    };
    let sandbox = [("model", "gpt-4o-mini"), ("billing_mode", "test")];
    assert!(value("quota_tokens_total", &[sandbox[0], sandbox[1], ("direction", "input")]) > 0.0);
    assert!(value("quota_tokens_total", &[sandbox[0], sandbox[1], ("direction", "output")]) > 0.0);
    assert!(value("quota_credits_spent_total", &sandbox) > 0.0);
    assert_eq!(value("quota_time_to_first_token_seconds", &[("provider", "openai")]), 1.0);
    assert_eq!(value("quota_stream_duration_seconds", &[("provider", "openai")]), 1.0);
    assert_eq!(value("quota_upstream_latency_seconds", &[("provider", "openai")]), 2.0);
}

/// Register a developer with a `test` key on a spawned server; returns (key id, key secret).
async fn sandbox_key(http: &reqwest::Client, base: &str) -> (String, String) {
    let (_, session, secret) = process::setup_developer(http, base).await;
    let keys = process::send_json(http.get(format!("{base}/developers/keys")).bearer_auth(&session)).await;
    (keys["data"][0]["id"].as_str().unwrap().to_string(), secret)
}

/// One sandbox chat completion; returns its `x-request-id` and its body.
async fn one_chat(http: &reqwest::Client, base: &str, secret: &str) -> (String, serde_json::Value) {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&common::simple_chat("hi", 5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    (request_id, r.json().await.unwrap())
}

#[cfg(unix)]
#[tokio::test]
async fn one_request_writes_one_access_log_line_with_every_field() {
    let db = Db::fresh().await;
    let server = process::spawn_logged(&db, &[("QUOTA_LOG_FORMAT", "json"), ("QUOTA_LOG", "info")]);
    let http = reqwest::Client::new();
    let (key_id, secret) = sandbox_key(&http, &server.base).await;
    let (request_id, body) = one_chat(&http, &server.base, &secret).await;
    let sent = serde_json::to_vec(&body).unwrap().len();
    let log = server.stop();
    assert!(!log.contains('\u{1b}'), "no colour codes when stderr is not a terminal:\n{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l: &serde_json::Value| {
            l["target"] == "quota::access" && l["fields"]["request_id"] == request_id.as_str()
        })
        .collect();
    assert_eq!(lines.len(), 1, "one line for the request:\n{log}");
    let f = &lines[0]["fields"];
    assert_eq!(f["method"], "POST");
    assert_eq!(f["route"], "/v1/chat/completions");
    assert_eq!(f["status"], 200);
    assert!(f["latency_ms"].as_f64().unwrap() > 0.0, "{f}");
    // The body as sent: Quota's JSON, byte for byte (serde_json re-serializes it compactly).
    assert!(f["bytes"].as_u64().unwrap() >= sent as u64 - 8, "{f} vs {sent}");
    assert_eq!(f["key_id"], key_id.as_str());
    assert_eq!(f["model"], "gpt-4o-mini");
    assert_eq!(f["credits"], body["quota"]["credits_used"]);
    assert!(f["credits"].as_i64().unwrap() > 0);
    assert!(!log.contains(&secret), "the key's secret is never logged");
}

/// An OTLP/HTTP collector stand-in: decodes every export request it receives.
async fn collector() -> (String, std::sync::Arc<parking_lot::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let spans: std::sync::Arc<parking_lot::Mutex<Vec<_>>> = Default::default();
    let got = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let got = got.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export request");
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        got.lock().extend(scope.spans);
                    }
                }
                // An empty ExportTraceServiceResponse.
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let value = span.attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_carries_the_phase_spans_of_one_request() {
    let (endpoint, spans) = collector().await;
    let db = Db::fresh().await;
    let server = process::spawn_logged(
        &db,
        &[
            ("QUOTA_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("QUOTA_LOG", "warn,opentelemetry=debug"),
        ],
    );
    let http = reqwest::Client::new();
    let (_, secret) = sandbox_key(&http, &server.base).await;
    let (request_id, _) = one_chat(&http, &server.base, &secret).await;
    // SIGTERM flushes the exporter; the collector runs on this test's runtime meanwhile.
    let log = tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
    let spans = spans.lock().clone();
    assert!(!spans.is_empty(), "nothing exported; the server's log:\n{log}");
    let request = spans
        .iter()
        .find(|s| s.name == "request" && attribute(s, "request_id").as_deref() == Some(request_id.as_str()))
        .unwrap_or_else(|| {
            panic!("no request span for {request_id} in {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>())
        });
    assert_eq!(attribute(request, "route").as_deref(), Some("/v1/chat/completions"));
    for phase in ["limit", "reserve", "upstream", "settle"] {
        let span = spans
            .iter()
            .find(|s| s.name == phase && s.trace_id == request.trace_id)
            .unwrap_or_else(|| panic!("no {phase} span in the request's trace"));
        assert_eq!(span.parent_span_id, request.span_id, "{phase} is a child of the request");
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
    let upstream = spans.iter().find(|s| s.name == "upstream" && s.trace_id == request.trace_id).unwrap();
    assert_eq!(attribute(upstream, "provider").as_deref(), Some("openai"));
    assert!(attribute(upstream, "time_to_first_byte_ms").is_some(), "{upstream:?}");
}
