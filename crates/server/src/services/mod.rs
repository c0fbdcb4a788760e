//! The service layer (DESIGN §2): accounts, keys, apps, webhooks, payments, funding and usage,
//! with typed inputs and outputs. The JSON routes (`crate::routes`), the dashboard and the CLI
//! all call these functions, and never one another's handlers.
//!
//! A service takes the id of the account it acts for (who is calling — a session, an API key
//! or a user token — is the HTTP layer's to decide), values already parsed at the edge (a
//! [`Name`], a `BillingMode`, a `Margin`…), and returns domain values (store rows, a secret
//! shown once, a [`Page`]). Shaping JSON or HTML is the caller's. Errors are the §13
//! [`ApiError`], so every way in answers with the same status and code.
//!
//! Not here: HTTP extraction, JSON and HTML, the money rules (`quota-core`), the rows
//! (`quota-store`).

pub mod accounts;
pub mod apps;
pub mod funding;
pub mod keys;
pub mod payments;
pub mod profile;
pub mod usage;
pub mod webhooks;

use crate::error::ApiError;

/// Longest key or app name, in characters.
const NAME_MAX_CHARS: usize = 100;

/// A key's or an app's name: 1 to 100 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(raw: &str) -> Result<Name, ApiError> {
        let name = raw.trim();
        if name.is_empty() || name.chars().count() > NAME_MAX_CHARS {
            return Err(ApiError::bad_request(format!("name must be 1 to {NAME_MAX_CHARS} characters")));
        }
        Ok(Name(name.to_string()))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Which slice of a list to read: `limit` rows from `offset` (from a `PageQuery` at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub offset: usize,
    pub limit: usize,
}

impl Paging {
    /// Rows to ask the store for: one more than the page tells whether there is a next one.
    pub fn fetch(&self) -> (i64, i64) {
        (self.offset as i64, self.limit as i64 + 1)
    }

    /// The page out of rows read with [`Paging::fetch`].
    pub fn page<T>(&self, mut rows: Vec<T>) -> Page<T> {
        let more = rows.len() > self.limit;
        rows.truncate(self.limit);
        Page { items: rows, next_cursor: more.then(|| cursor_at(self.offset + self.limit)) }
    }
}

/// The opaque cursor of the page that starts at `offset`.
pub fn cursor_at(offset: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{offset}"))
}

/// One page of a list and the opaque cursor of the next (SPEC §0).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}
