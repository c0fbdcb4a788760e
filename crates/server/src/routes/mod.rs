//! HTTP handlers, thin: parse, call the domain, shape the answer.

pub mod accounts;
pub mod chat;
pub mod gemini;
pub mod keys;
pub mod messages;
pub mod ops;
pub mod v1;

/// `?limit=&cursor=` (SPEC §0).
#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

pub const PAGE_DEFAULT: usize = 50;
pub const PAGE_MAX: usize = 500;

impl PageQuery {
    /// (offset, limit), validated. The cursor is opaque to clients.
    pub fn parse(&self) -> Result<(usize, usize), crate::error::ApiError> {
        use base64::Engine;
        let limit = match &self.limit {
            None => PAGE_DEFAULT,
            Some(l) => l.parse::<usize>().ok().filter(|l| (1..=PAGE_MAX).contains(l)).ok_or_else(|| {
                crate::error::ApiError::bad_request(format!("limit must be between 1 and {PAGE_MAX}"))
            })?,
        };
        let offset = match &self.cursor {
            None => 0,
            Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse().ok()))
                .ok_or_else(|| crate::error::ApiError::bad_request("invalid cursor"))?,
        };
        Ok((offset, limit))
    }

    /// Page `items` and make the next cursor.
    pub fn page<T>(&self, items: Vec<T>) -> Result<(Vec<T>, Option<String>), crate::error::ApiError> {
        use base64::Engine;
        let (offset, limit) = self.parse()?;
        let total = items.len();
        let page: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
        let next = (offset + limit < total)
            .then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{}", offset + limit)));
        Ok((page, next))
    }
}
