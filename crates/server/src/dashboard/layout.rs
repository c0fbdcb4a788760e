//! The dashboard's shell: the page frame and navigation, the stylesheet and the one small
//! script (served as same-origin files so the CSP needs no inline script), and the helpers that
//! turn values into text people read (dollars, times, mode names). Every value that comes from
//! a person or the database is escaped with [`escape`].

use super::{Dash, Flash};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use quota_core::Credits;

pub use crate::oauth::pages::{escape, percent};

/// Dollars for people (`$0.15`, `$0.000450`), negative amounts with a minus sign.
pub fn usd(credits: i64) -> String {
    Credits::new(credits).to_usd_display()
}

/// A Unix-ms time as `2026-01-31 14:05 UTC`.
pub fn when(ms: i64) -> String {
    rfc_when(&quota_store::clock::rfc3339(ms))
}

/// An RFC 3339 time from the API as `2026-01-31 14:05 UTC`.
pub fn rfc_when(rfc: &str) -> String {
    match (rfc.get(0..10), rfc.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t} UTC"),
        _ => rfc.to_string(),
    }
}

/// A billing mode as the dashboard names it: `test` is **Sandbox**.
pub fn mode_label(mode: &str) -> &'static str {
    match mode {
        "test" => "Sandbox",
        "user" => "User",
        "developer" => "Developer",
        _ => "Other",
    }
}

/// The hidden CSRF field every signed-in form carries.
pub fn csrf_field(dash: &Dash) -> String {
    format!("<input type=\"hidden\" name=\"csrf_token\" value=\"{}\">", escape(&dash.csrf))
}

/// A one-button POST form (revoke, rotate, replay…).
pub fn button_form(dash: &Dash, action: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}<button type=\"submit\" class=\"{class}\">{}</button></form>",
        escape(action),
        csrf_field(dash),
        escape(label)
    )
}

/// A secret shown once, with a copy button (shown only when the script runs).
pub fn secret_box(title: &str, id: &str, secret: &str, note: &str) -> String {
    format!(
        "<section class=\"secret\" role=\"status\" aria-labelledby=\"{id}-title\"><h2 id=\"{id}-title\">{}</h2>\
         <p>{}</p><div class=\"secret-row\"><code id=\"{id}\">{}</code>\
         <button type=\"button\" class=\"copy\" data-copy=\"{id}\" hidden>Copy</button></div></section>",
        escape(title),
        escape(note),
        escape(secret)
    )
}

/// A table that scrolls sideways on a phone instead of overflowing the page.
pub fn table(caption: &str, head: &[&str], rows: &[String], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"muted\">{}</p>", escape(empty));
    }
    let th: String = head.iter().map(|h| format!("<th scope=\"col\">{}</th>", escape(h))).collect();
    format!(
        "<div class=\"table-wrap\" tabindex=\"0\" role=\"region\" aria-label=\"{c}\"><table><caption class=\"sr-only\">{c}</caption>\
         <thead><tr>{th}</tr></thead><tbody>{}</tbody></table></div>",
        rows.concat(),
        c = escape(caption)
    )
}

/// `<td>` with escaped text.
pub fn td(text: &str) -> String {
    format!("<td>{}</td>", escape(text))
}

/// A numeric `<td>`, right-aligned.
pub fn td_num(text: &str) -> String {
    format!("<td class=\"num\">{}</td>", escape(text))
}

const NAV: &[(&str, &str, &str)] = &[
    ("overview", "/dashboard", "Overview"),
    ("keys", "/dashboard/keys", "API keys"),
    ("usage", "/dashboard/usage", "Usage"),
    ("ledger", "/dashboard/ledger", "Ledger"),
    ("webhooks", "/dashboard/webhooks", "Webhooks"),
    ("apps", "/dashboard/apps", "Apps"),
    ("payouts", "/dashboard/payouts", "Earnings"),
    ("wallet", "/dashboard/wallet", "Wallet"),
];

/// A whole page: the head, the navigation (when signed in), the message, the body.
pub fn frame(title: &str, active: &str, dash: Option<&Dash>, flash: Option<&Flash>, body: &str) -> String {
    let nav = match dash {
        Some(d) => {
            let links: String = NAV
                .iter()
                .map(|(id, href, label)| {
                    let current = if *id == active { " aria-current=\"page\"" } else { "" };
                    format!("<li><a href=\"{href}\"{current}>{label}</a></li>")
                })
                .collect();
            format!(
                "<nav aria-label=\"Dashboard\"><ul>{links}</ul></nav>\
                 <div class=\"who\"><span class=\"muted\">{}</span>{}</div>",
                escape(&d.session.user.email),
                button_form(d, "/dashboard/signout", "Sign out", "link")
            )
        }
        None => String::new(),
    };
    let flash = match flash {
        Some(f) if f.ok => format!("<div class=\"flash ok\" role=\"status\">{}</div>", escape(&f.text)),
        Some(f) => format!("<div class=\"flash error\" role=\"alert\">{}</div>", escape(&f.text)),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Quota dashboard</title><link rel=\"stylesheet\" href=\"/dashboard/static/app.css\">\
         <link rel=\"icon\" href=\"/dashboard/static/favicon.svg\" type=\"image/svg+xml\">\
         <script src=\"/dashboard/static/app.js\" defer></script></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><a class=\"brand\" href=\"/dashboard\">Quota</a>{nav}</header>\
         <main id=\"main\">{flash}{body}</main></body></html>",
        escape(title)
    )
}

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");
const FAVICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\"><rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#14213d\"/><text x=\"8\" y=\"12\" font-size=\"11\" text-anchor=\"middle\" fill=\"#ffd166\" font-family=\"sans-serif\">Q</text></svg>";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    resp
}

/// `GET /dashboard/static/app.css`.
pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

/// `GET /dashboard/static/favicon.svg`.
pub async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON)
}

/// `GET /dashboard/static/app.js`.
pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// Bytes of the stylesheet and script every page loads (for the page-weight budget).
#[cfg(test)]
fn asset_bytes() -> usize {
    CSS.len() + JS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_and_times_read_well() {
        assert_eq!(usd(450), "$0.00045");
        assert_eq!(usd(-1_250_000), "−$1.25");
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(mode_label("test"), "Sandbox");
    }

    #[test]
    fn shared_assets_are_small() {
        assert!(asset_bytes() < 20_000, "{}", asset_bytes());
    }
}
