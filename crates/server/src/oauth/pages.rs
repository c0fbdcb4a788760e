//! The authorization server's own pages (SPEC §5): sign-in / sign-up, consent and error, as
//! plain server-rendered HTML (no JavaScript; usable on a phone). Every value that comes from a
//! person — an app's name, an email, the request's parameters — is HTML-escaped here.

use super::Scopes;
use quota_core::{Credits, Margin, Model};

/// Escape text for HTML element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Dollars for people ([`Credits::to_usd_display`]).
pub fn usd(c: Credits) -> String {
    c.to_usd_display()
}

/// A margin as a percentage ([`Margin::to_percent_string`]).
pub fn percent(m: Margin) -> String {
    m.to_percent_string()
}

const STYLE: &str = "*{box-sizing:border-box}body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#111}\
h1{font-size:1.4rem}fieldset{border:1px solid #ccc;border-radius:6px;margin:1rem 0}\
label{display:block;margin:.5rem 0}input[type=email],input[type=password]{width:100%;padding:.4rem}\
button{padding:.5rem 1rem;margin:.5rem .5rem 0 0}table{border-collapse:collapse;width:100%}\
td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left}.error{color:#a00}.muted{color:#555}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Quota</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

/// Hidden inputs carrying the authorization request through a form.
pub fn hidden_fields(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(k), escape(v)))
        .collect()
}

/// Sign in, or create an account, to continue to `app_name`.
pub fn sign_in(app_name: &str, hidden: &str, csrf: &str, error: Option<&str>, email: &str) -> String {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    let form = |action: &str, legend: &str, button: &str, autocomplete: &str| {
        format!(
            "<form method=\"post\" action=\"/oauth/authorize\"><fieldset><legend>{legend}</legend>{hidden}\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"action\" value=\"{action}\">\
             <label>Email <input type=\"email\" name=\"email\" value=\"{email}\" required autocomplete=\"email\"></label>\
             <label>Password <input type=\"password\" name=\"password\" required minlength=\"8\" autocomplete=\"{autocomplete}\"></label>\
             <button type=\"submit\">{button}</button></fieldset></form>",
            csrf = escape(csrf),
            email = escape(email),
        )
    };
    page(
        "Sign in",
        &format!(
            "<h1>Sign in to Quota</h1><p><strong>{}</strong> wants to use your Quota wallet.</p>{error}{}{}",
            escape(app_name),
            form("login", "I have an account", "Sign in", "current-password"),
            form("signup", "I am new to Quota", "Create account", "new-password"),
        ),
    )
}

/// What the consent page shows about money.
pub struct PriceView<'a> {
    pub margin: Margin,
    /// The margin the user consented to before, when `margin` is a raise over it.
    pub previous_margin: Option<Margin>,
    pub balance: Credits,
    pub models: Vec<&'a Model>,
}

/// Approve or deny `app_name` access with `scopes`.
pub fn consent(
    app_name: &str,
    user_email: &str,
    scopes: Scopes,
    price: &PriceView<'_>,
    hidden: &str,
    csrf: &str,
) -> String {
    let items: String = scopes.iter().map(|s| format!("<li>{}</li>", escape(s.describe()))).collect();
    let rows: String = price
        .models
        .iter()
        .map(|m| {
            let cell = |base: u64| {
                let base = Credits::new(i64::try_from(base).unwrap_or(i64::MAX));
                let total = Credits::new(base.get().saturating_add(price.margin.markup_on(base).get()));
                format!("<td>{}</td><td>{}</td>", usd(base), usd(total))
            };
            format!("<tr><td>{}</td>{}{}</tr>", escape(&m.id), cell(m.price.base.input), cell(m.price.base.output))
        })
        .collect();
    let markup = if let Some(old) = price.previous_margin {
        format!(
            "This app has raised its markup: <strong>{} → {}</strong> of the base price of each request. \
             Until you approve, you keep paying {}; the markup goes to the app's developer.",
            percent(old),
            percent(price.margin),
            percent(old)
        )
    } else if price.margin.bps() == 0 {
        "This app adds no markup: you pay the base price.".to_string()
    } else {
        format!(
            "This app adds a markup of <strong>{}</strong> to the base price of each request; \
             the markup goes to the app's developer.",
            percent(price.margin)
        )
    };
    page(
        "Authorize",
        &format!(
            "<h1>Authorize {name}</h1>\
             <p class=\"muted\">Signed in as {email}. Your balance: <strong>{balance}</strong>.</p>\
             <p><strong>{name}</strong> asks to:</p><ul>{items}</ul>\
             <p>{markup}</p>\
             <table><thead><tr><th>Model, per 1M tokens</th><th>Input, base</th><th>Input, with {name}</th>\
             <th>Output, base</th><th>Output, with {name}</th></tr></thead><tbody>{rows}</tbody></table>\
             <form method=\"post\" action=\"/oauth/authorize\">{hidden}\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
             <button type=\"submit\" name=\"action\" value=\"approve\">Approve</button>\
             <button type=\"submit\" name=\"action\" value=\"deny\">Deny</button></form>\
             <p class=\"muted\">You can disconnect this app at any time from your connected apps.</p>",
            name = escape(app_name),
            email = escape(user_email),
            balance = usd(price.balance),
            csrf = escape(csrf),
        ),
    )
}

/// An authorization request that cannot be sent back to the app (unknown client, redirect URI
/// not registered): said here, never redirected.
pub fn error(message: &str) -> String {
    page(
        "Authorization error",
        &format!(
            "<h1>This authorization request cannot continue</h1><p class=\"error\">{}</p>\
             <p class=\"muted\">Go back to the app and try again, or tell its developer.</p>",
            escape(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_names_are_escaped() {
        assert_eq!(escape("<script>\"x\"&'y'</script>"), "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;");
        let html = sign_in("<b>Evil</b>", "", "tok", Some("<i>bad</i>"), "a\"@b");
        assert!(html.contains("&lt;b&gt;Evil&lt;/b&gt;") && !html.contains("<b>Evil"));
        assert!(html.contains("&lt;i&gt;bad") && html.contains("a&quot;@b"));
    }

    #[test]
    fn money_and_percent_read_well() {
        assert_eq!(usd(Credits::new(150_000)), "$0.15");
        assert_eq!(usd(Credits::new(187_500)), "$0.1875");
        assert_eq!(usd(Credits::new(1_000_000)), "$1.00");
        assert_eq!(usd(Credits::new(1)), "$0.000001");
        assert_eq!(percent(Margin::from_bps(2500).unwrap()), "25%");
        assert_eq!(percent(Margin::from_bps(1).unwrap()), "0.01%");
        assert_eq!(percent(Margin::from_bps(1050).unwrap()), "10.5%");
        assert_eq!(percent(Margin::from_bps(100_000).unwrap()), "1000%");
    }
}
