//! The OpenAPI document (`GET /openapi.json`), generated from the code: every handler carries a
//! `#[utoipa::path]` annotation beside it, Quota's request bodies derive `ToSchema` where they
//! are parsed, and the answers' shapes are in [`schemas`]. [`ApiDoc`] lists the operations.
//!
//! One rule for what is left out: the dashboard (`/dashboard…`, SPEC §11) is HTML for browsers,
//! with forms and redirects, and is not an API; no other route may be missing. The test at the
//! bottom reads every `.route(…)` in this crate's source and fails when a route has no
//! operation, or an operation no route.
//!
//! Not here: the shapes providers own. A pass-through body (an OpenAI, Anthropic or Google
//! request or answer) is described by its minimum and a description, not re-specified.

pub mod schemas;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// Paths left out of the document by the rule above.
pub const UNDOCUMENTED_PREFIX: &str = "/dashboard";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Quota",
        description = "An AI API gateway with billing built in. Money is integer credits: 1,000,000 credits = \
            $1.00. Every error is `{\"error\": {\"code\", \"message\", \"type\", \"hint\"?}}` with a stable `code` \
            (SPEC §13), except the OAuth token and revocation endpoints' RFC 6749 errors. The dashboard \
            (`/dashboard…`, HTML) is not described here."
    ),
    paths(
        crate::routes::ops::healthz,
        crate::routes::ops::readyz,
        crate::routes::ops::openapi,
        crate::metrics::render,
        crate::routes::accounts::register,
        crate::routes::accounts::login,
        crate::routes::accounts::me,
        crate::routes::accounts::logout,
        crate::routes::keys::create,
        crate::routes::keys::list,
        crate::routes::keys::update,
        crate::routes::keys::revoke,
        crate::routes::keys::rotate,
        crate::routes::v1::models,
        crate::routes::v1::balance,
        crate::gateway::routes::chat::chat_completions,
        crate::gateway::routes::messages::messages,
        crate::gateway::count_tokens::messages,
        crate::gateway::routes::responses::responses,
        crate::gateway::routes::embeddings::embeddings,
        crate::gateway::routes::gemini::generate_content,
        crate::routes::apps::create,
        crate::routes::apps::list,
        crate::routes::apps::get,
        crate::routes::apps::update,
        crate::routes::apps::delete,
        crate::routes::apps::settings,
        crate::routes::apps::users,
        crate::routes::oauth::discovery,
        crate::routes::oauth::jwks,
        crate::routes::oauth::authorize_get,
        crate::routes::oauth::authorize_post,
        crate::routes::oauth::token,
        crate::routes::oauth::userinfo,
        crate::routes::oauth::revoke,
        crate::routes::connections::list,
        crate::routes::connections::disconnect,
        crate::routes::funding::fund_oauth_user,
        crate::routes::funding::fund_credit,
        crate::routes::account::get,
        crate::routes::account::patch,
        crate::routes::account::me,
        crate::routes::webhooks::create,
        crate::routes::webhooks::list,
        crate::routes::webhooks::get,
        crate::routes::webhooks::update,
        crate::routes::webhooks::delete,
        crate::routes::webhooks::rotate_secret,
        crate::routes::webhooks::deliveries,
        crate::routes::webhooks::replay,
        crate::routes::webhooks::test,
        crate::routes::reporting::usage,
        crate::routes::reporting::ledger,
        crate::routes::reporting::summary,
        crate::routes::reporting::timeseries,
        crate::routes::reporting::breakdown,
        crate::routes::payments::packages,
        crate::routes::payments::checkout,
        crate::routes::payments::stripe_webhook,
        crate::routes::payments::dev_checkout_page,
        crate::routes::payments::dev_checkout_pay,
        crate::routes::payments::connect_onboard,
        crate::routes::payments::connect_refresh,
        crate::routes::payments::earnings,
        crate::routes::payments::payouts,
    ),
    components(schemas(schemas::ErrorBody)),
    modifiers(&SecuritySchemes, &GeminiUnderV1, &UniqueOperationIds),
    tags(
        (name = "inference", description = "Provider APIs, metered and charged (SPEC §3, §4)"),
        (name = "accounts", description = "Accounts and sessions (SPEC §1)"),
        (name = "keys", description = "API keys (SPEC §2)"),
        (name = "apps", description = "OAuth apps, connections and funding (SPEC §5, §6)"),
        (name = "oauth", description = "The authorization server (SPEC §5)"),
        (name = "reporting", description = "Balance, models, usage, ledger and analytics (SPEC §6, §9)"),
        (name = "webhooks", description = "Webhook endpoints and deliveries (SPEC §8)"),
        (name = "payments", description = "Top-ups and payouts (SPEC §10)"),
        (name = "operations", description = "Health, readiness, metrics, this document (SPEC §12)"),
    )
)]
pub struct ApiDoc;

/// The document as served, built once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().expect("the OpenAPI document serializes"))
}

/// An error response per `(status, codes)`, each the §13 shape, and `default` for the rest.
fn error_responses(statuses: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
    let error = |description: &str| {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build();
        RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
    };
    let mut out: BTreeMap<String, RefOr<Response>> =
        statuses.iter().map(|(status, codes)| (status.to_string(), error(codes))).collect();
    out.insert(
        "default".into(),
        error("Any other error (SPEC §13), e.g. 429 `rate_limit_exceeded`, 500 `internal_error`"),
    );
    out
}

/// Errors of routes any caller may reach: only `default`.
pub struct Errors;
impl utoipa::IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[])
    }
}

/// Errors of session routes (SPEC §1, §2): a bad body, no session, an id not the caller's.
pub struct SessionErrors;
impl utoipa::IntoResponses for SessionErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            ("400", "`bad_request`: malformed JSON, a missing or unknown field, a bad parameter"),
            ("401", "`invalid_api_key`: no session, or an unknown, expired or revoked one"),
            ("404", "`not_found`: no such id among the caller's"),
        ])
    }
}

/// Errors of the funding routes (SPEC §6): a developer key moving its own credits.
pub struct FundingErrors;
impl utoipa::IntoResponses for FundingErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            ("400", "`bad_request`"),
            ("401", "`invalid_api_key`"),
            ("402", "`insufficient_credits`"),
            ("403", "`forbidden`: sandbox (test) keys cannot move real credits"),
            ("404", "`user_not_found`: not connected to any of your apps"),
            ("409", "`idempotency_conflict`"),
        ])
    }
}

/// Errors of API-key routes that are not inference (`/v1/models`, `/v1/balance`, counting).
pub struct KeyErrors;
impl utoipa::IntoResponses for KeyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            ("400", "`bad_request`"),
            ("401", "`invalid_api_key`, `invalid_token`, `user_token_required`"),
            ("403", "`insufficient_scope`, `app_mismatch`, `forbidden`"),
            ("429", "`rate_limit_exceeded` (Quota's own limit)"),
        ])
    }
}

/// Errors of the inference routes (SPEC §3, §4, §13): nothing is charged for any of them.
pub struct InferenceErrors;
impl utoipa::IntoResponses for InferenceErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            ("400", "`bad_request`: malformed JSON, a missing field, an unsupported parameter"),
            ("401", "`invalid_api_key`, `invalid_token`, `user_token_required`"),
            ("402", "`insufficient_credits`, `spend_limit_exceeded` (`error.limit` names it)"),
            ("403", "`insufficient_scope`, `app_mismatch`, `model_not_allowed`"),
            ("404", "`model_not_found`"),
            ("409", "`idempotency_conflict`"),
            ("413", "`payload_too_large`"),
            ("429", "`rate_limit_exceeded` (Quota's limit) or `rate_limit` (the provider's)"),
            ("502", "`upstream_error`: the provider failed"),
            ("503", "`provider_unavailable`: the provider is not configured"),
            ("504", "`gateway_timeout`: the provider was too slow"),
        ])
    }
}

/// The credentials the operations name in `security`.
struct SecuritySchemes;
impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
            )
        };
        let schemes = [
            ("apiKey", bearer("An API key, `sk-quota-…`")),
            (
                "apiKeyHeader",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "X-API-Key",
                    "An API key in `X-API-Key` (also `x-goog-api-key`, or `?key=` on Gemini routes)",
                ))),
            ),
            ("session", bearer("A session, `sess_…`")),
            (
                "sessionCookie",
                SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                    "quota_session",
                    "The session cookie set by register and login",
                ))),
            ),
            ("userToken", bearer("An OAuth access token, `quota_token_…` (alone, or beside a key in X-API-Key)")),
            (
                "oauthClient",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Basic)
                        .description(Some("client_id and client_secret as HTTP Basic, or in the form"))
                        .build(),
                ),
            ),
            ("metricsToken", bearer("`metrics_token`, when configured")),
        ];
        for (name, scheme) in schemes {
            components.add_security_scheme(name, scheme);
        }
    }
}

/// The Gemini routes answer under `/v1/models/…` too (the Google GenAI SDK's default version).
struct GeminiUnderV1;
impl Modify for GeminiUnderV1 {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let paths = &mut openapi.paths.paths;
        if let Some(item) = paths.get("/v1beta/models/{model_action}").cloned() {
            paths.insert("/v1/models/{model_action}".into(), item);
        }
    }
}

/// Operation ids are the handlers' names, which repeat across modules (`create`, `list`) and
/// paths: each id that is not unique becomes `{method}_{path}`.
struct UniqueOperationIds;
impl Modify for UniqueOperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for item in openapi.paths.paths.values() {
            for op in operations(item) {
                *seen.entry(op.operation_id.clone().unwrap_or_default()).or_default() += 1;
            }
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, op) in operations_mut(item) {
                if seen.get(&op.operation_id.clone().unwrap_or_default()).copied().unwrap_or(0) > 1 {
                    let slug: String = path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                    op.operation_id = Some(format!("{method}{}", slug.trim_end_matches('_')));
                }
            }
        }
    }
}

fn operations(item: &utoipa::openapi::PathItem) -> impl Iterator<Item = &utoipa::openapi::path::Operation> {
    [&item.get, &item.post, &item.put, &item.patch, &item.delete, &item.head, &item.options].into_iter().flatten()
}

fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&'static str, &mut utoipa::openapi::path::Operation)> {
    [
        ("get", &mut item.get),
        ("post", &mut item.post),
        ("put", &mut item.put),
        ("patch", &mut item.patch),
        ("delete", &mut item.delete),
        ("head", &mut item.head),
        ("options", &mut item.options),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
}

#[cfg(test)]
mod tests {
    //! The completeness test: the routes are read from the source (every `.route("path",
    //! method(handler).method(handler))` in this crate), the operations from the document.

    use std::collections::BTreeSet;
    use std::path::Path;

    const METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

    /// Every `(METHOD, path)` routed in `source`, the path in OpenAPI's spelling (`{*rest}` →
    /// `{rest}`).
    fn routes_in(source: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let Some(body) = rest.trim_start().strip_prefix('"') else { continue };
            let Some(end) = body.find('"') else { continue };
            let path = body[..end].replace("{*", "{");
            // The handler expression: up to the `)` closing `.route(`.
            let after = &body[end + 1..];
            let mut depth = 1usize;
            let close = after
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(after.len());
            let expr = &after[..close];
            for method in METHODS {
                let call = format!("{method}(");
                for (i, _) in expr.match_indices(&call) {
                    let before = &expr[..i];
                    let routed =
                        before.trim_end().ends_with(',') || before.ends_with('.') || before.ends_with("routing::");
                    if routed {
                        out.push((method.to_uppercase(), path.clone()));
                    }
                }
            }
        }
        out
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("reading src/") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    fn routed() -> BTreeSet<(String, String)> {
        let mut files = Vec::new();
        rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        let mut all = BTreeSet::new();
        for file in files {
            if file.ends_with("openapi.rs") {
                continue; // this file's test sources are not routes
            }
            let source = std::fs::read_to_string(&file).expect("reading a source file");
            assert!(!source.contains(".nest("), "{}: a nested router; read its prefix here", file.display());
            all.extend(routes_in(&source));
        }
        all
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(super::json()).expect("the document is JSON");
        let mut all = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                if super::tests::METHODS.contains(&method.as_str()) {
                    all.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        all
    }

    #[test]
    fn the_route_reader_finds_every_method_of_a_route() {
        let source = r#"
            .route("/a/{id}", get(x::get).patch(x::update).delete(x::delete))
            .route("/b/{*rest}", axum::routing::delete(y::go))
            .route(
                "/c",
                post(z::create),
            )"#;
        let found = routes_in(source);
        let want =
            [("GET", "/a/{id}"), ("PATCH", "/a/{id}"), ("DELETE", "/a/{id}"), ("DELETE", "/b/{rest}"), ("POST", "/c")];
        let want: Vec<(String, String)> = want.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        assert_eq!(found, want);
    }

    #[test]
    fn every_route_has_an_operation_and_every_operation_a_route() {
        let routed = routed();
        assert!(routed.len() > 60, "the route reader found only {} routes", routed.len());
        let api: BTreeSet<_> =
            routed.iter().filter(|(_, p)| !p.starts_with(super::UNDOCUMENTED_PREFIX)).cloned().collect();
        let documented = documented();
        let missing: Vec<_> = api.difference(&documented).collect();
        assert!(missing.is_empty(), "routes without an operation in the OpenAPI document: {missing:?}");
        let stale: Vec<_> = documented.difference(&api).collect();
        assert!(stale.is_empty(), "operations without a route: {stale:?}");
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc: serde_json::Value = serde_json::from_str(super::json()).expect("the document is JSON");
        let mut ids = BTreeSet::new();
        for item in doc["paths"].as_object().expect("paths").values() {
            for (method, op) in item.as_object().expect("a path item") {
                if METHODS.contains(&method.as_str()) {
                    let id = op["operationId"].as_str().expect("an operationId").to_string();
                    assert!(ids.insert(id.clone()), "operationId {id} twice");
                }
            }
        }
    }

    #[test]
    fn every_path_parameter_is_declared() {
        let doc: serde_json::Value = serde_json::from_str(super::json()).expect("the document is JSON");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let names: Vec<&str> = path.split('{').skip(1).filter_map(|p| p.split('}').next()).collect();
            for (method, op) in item.as_object().expect("a path item") {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                for name in &names {
                    assert!(declared.contains(name), "{method} {path}: path parameter {name} not declared");
                }
            }
        }
    }

    #[test]
    fn every_operation_describes_its_errors_in_the_section_13_shape() {
        let doc: serde_json::Value = serde_json::from_str(super::json()).expect("the document is JSON");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let default = &op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(default, "#/components/schemas/Error", "{method} {path}: no §13 default error");
            }
        }
    }
}
