//! Usage, the ledger and analytics as a developer reads them (SPEC §9): usage records by
//! filter, the transfers that touched an account's wallet and earnings (signed from its side),
//! and analytics — sums over the usage rows written with each charge and the daily aggregates
//! retention keeps, grouped by UTC bucket or by model, user, app or key. Not here: writing
//! usage (the gateway's *record* phase), JSON, CSV or HTML.

use crate::app::SharedState;
use crate::error::{internal, ApiError};
use crate::services::{Page, Paging};
use quota_core::{AccountId, Transfer};
use quota_store::clock::{civil_from_days, days_from_civil};
use quota_store::usage::{UsageAggregate, UsageFilter, UsageRecord, DAY_MS};
use std::collections::{BTreeMap, HashSet};

/// `YYYY-MM-DD` (UTC midnight) or RFC 3339 (with `Z` or a numeric offset) → Unix ms.
pub fn parse_time(name: &str, s: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::bad_request(format!("{name} must be a date (YYYY-MM-DD) or an RFC 3339 time"));
    let date = |d: &str| quota_core::calendar::parse_date(d).map(|days| days * DAY_MS);
    if s.len() == 10 {
        return date(s).ok_or_else(bad);
    }
    // An unencoded `+` in a query string arrives as a space: `…T10:00:00 02:00` meant `+02:00`.
    let s = match s.get(19..).and_then(|tail| tail.find(' ')) {
        Some(i) => std::borrow::Cow::Owned(format!("{}+{}", &s[..19 + i], &s[19 + i + 1..])),
        None => std::borrow::Cow::Borrowed(s),
    };
    quota_core::calendar::parse_rfc3339(&s).ok_or_else(bad)
}

/// Usage records matching `filter`, newest first, after the keyset position `after`
/// (`(created_at, id)` of the last record of the previous page): at most `limit`.
pub async fn records_after(
    state: &SharedState,
    filter: &UsageFilter,
    after: Option<(i64, &str)>,
    limit: i64,
) -> Result<Vec<UsageRecord>, ApiError> {
    state.store.usage_records_after(filter, after, limit).await.map_err(internal("usage"))
}

/// Usage records matching `filter`, newest first.
pub async fn records(state: &SharedState, filter: &UsageFilter, paging: Paging) -> Result<Page<UsageRecord>, ApiError> {
    let (offset, limit) = paging.fetch();
    let rows = state.store.usage_records(filter, offset, limit).await.map_err(internal("usage"))?;
    Ok(paging.page(rows))
}

/// The developer's daily usage aggregates in `[start_ms, end_ms)`.
pub async fn aggregates(
    state: &SharedState,
    developer: &str,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<UsageAggregate>, ApiError> {
    state.store.usage_aggregates(developer, start_ms, end_ms).await.map_err(internal("usage aggregates"))
}

/// Which way a transfer went, seen from the account holder's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Between two of the holder's own accounts.
    Internal,
    Debit,
    Credit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Internal => "internal",
            Direction::Debit => "debit",
            Direction::Credit => "credit",
        }
    }
}

/// One transfer on the holder's ledger.
pub struct LedgerEntry {
    pub transfer: Transfer,
    pub direction: Direction,
}

/// Transfers touching the user's wallet and earnings, newest first.
pub async fn ledger(state: &SharedState, user: &str, paging: Paging) -> Result<Page<LedgerEntry>, ApiError> {
    let accounts = vec![
        AccountId::wallet(user).to_string(),
        AccountId::EarningsPending(user.to_string()).to_string(),
        AccountId::EarningsAvailable(user.to_string()).to_string(),
    ];
    let (offset, limit) = paging.fetch();
    let rows = state.store.transfers_touching(&accounts, offset, limit).await.map_err(internal("ledger"))?;
    let page = paging.page(rows);
    let ours = |a: &AccountId| accounts.contains(&a.to_string());
    let items = page
        .items
        .into_iter()
        .map(|t| {
            let direction = match (ours(&t.from), ours(&t.to)) {
                (true, true) => Direction::Internal,
                (true, false) => Direction::Debit,
                _ => Direction::Credit,
            };
            LedgerEntry { transfer: t, direction }
        })
        .collect();
    Ok(Page { items, next_cursor: page.next_cursor })
}

/// An analytics figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Revenue,
    Cost,
    Profit,
    Users,
    Requests,
    Tokens,
}

/// A time bucket, in UTC; weeks start on Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
    Week,
    Month,
}

/// What a breakdown groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    /// The paying wallet's user.
    User,
    App,
    Key,
}

/// Names and values of an analytics choice, for parsing at the edge and naming in answers.
pub trait Choice: Sized + Copy + PartialEq + 'static {
    const ALL: &'static [(&'static str, Self)];

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, v)| *v == self).map(|(n, _)| *n).unwrap_or_default()
    }

    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|(n, _)| *n).collect()
    }
}

impl Choice for Metric {
    const ALL: &'static [(&'static str, Metric)] = &[
        ("revenue", Metric::Revenue),
        ("cost", Metric::Cost),
        ("profit", Metric::Profit),
        ("users", Metric::Users),
        ("requests", Metric::Requests),
        ("tokens", Metric::Tokens),
    ];
}

impl Choice for Interval {
    const ALL: &'static [(&'static str, Interval)] =
        &[("hour", Interval::Hour), ("day", Interval::Day), ("week", Interval::Week), ("month", Interval::Month)];
}

impl Choice for GroupBy {
    const ALL: &'static [(&'static str, GroupBy)] =
        &[("model", GroupBy::Model), ("user", GroupBy::User), ("app", GroupBy::App), ("key", GroupBy::Key)];
}

/// Sums over some usage rows, from the developer's side: `revenue` is the markup credited to
/// their earnings, `cost` what their own wallet paid (sandbox included), `profit` the
/// difference, `users` distinct end-user wallets that paid, `requests`, `tokens` (in + out).
#[derive(Default)]
pub struct Totals {
    pub revenue: i64,
    pub cost: i64,
    pub users: HashSet<String>,
    pub requests: i64,
    pub tokens: i64,
}

impl Totals {
    fn add(&mut self, r: &UsageAggregate, own_wallet: &str) {
        if !r.sandbox {
            self.revenue += r.markup;
        }
        if r.payer_account == own_wallet {
            self.cost += r.total;
        } else {
            self.users.insert(r.payer_account.clone());
        }
        self.requests += r.requests;
        self.tokens += r.tokens;
    }

    pub fn metric(&self, m: Metric) -> i64 {
        match m {
            Metric::Revenue => self.revenue,
            Metric::Cost => self.cost,
            Metric::Profit => self.revenue - self.cost,
            Metric::Users => self.users.len() as i64,
            Metric::Requests => self.requests,
            Metric::Tokens => self.tokens,
        }
    }
}

/// The developer's usage in `[start, end)` summed into groups named by `group`.
pub async fn grouped<K: Ord>(
    state: &SharedState,
    developer: &str,
    (start, end): (i64, i64),
    group: impl Fn(&UsageAggregate) -> K,
) -> Result<BTreeMap<K, Totals>, ApiError> {
    let rows = state.store.usage_aggregates(developer, start, end).await.map_err(internal("analytics"))?;
    let own = AccountId::wallet(developer).to_string();
    let mut groups: BTreeMap<K, Totals> = BTreeMap::new();
    for r in rows {
        groups.entry(group(&r)).or_default().add(&r, &own);
    }
    Ok(groups)
}

/// The name of `r`'s group under `by` ("" when the row has none, such as no app).
pub fn group_key(r: &UsageAggregate, by: GroupBy) -> String {
    match by {
        GroupBy::User => r.payer_account.strip_prefix("wallet:").unwrap_or(&r.payer_account).to_string(),
        GroupBy::App => r.app_id.clone(),
        GroupBy::Key => r.key_id.clone(),
        GroupBy::Model => r.model.clone(),
    }
}

/// The start (ms) of the UTC `interval` bucket holding `at`; weeks start on Monday.
pub fn bucket_start(at: i64, interval: Interval) -> i64 {
    let day = at.div_euclid(DAY_MS);
    match interval {
        Interval::Hour => at.div_euclid(3_600_000) * 3_600_000,
        // 1970-01-01 was a Thursday: day 4 of a Monday-based week (0 = Monday).
        Interval::Week => (day - (day + 3).rem_euclid(7)) * DAY_MS,
        Interval::Month => {
            let (y, m, _) = civil_from_days(day);
            days_from_civil(y, m, 1) * DAY_MS
        }
        Interval::Day => day * DAY_MS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quota_store::clock::rfc3339;

    #[test]
    fn buckets_fall_on_utc_boundaries() {
        let t = parse_time("t", "2024-03-03T23:59:59Z").unwrap(); // a Sunday
        assert_eq!(rfc3339(bucket_start(t, Interval::Day)), "2024-03-03T00:00:00.000Z");
        assert_eq!(rfc3339(bucket_start(t, Interval::Week)), "2024-02-26T00:00:00.000Z");
        assert_eq!(rfc3339(bucket_start(t, Interval::Month)), "2024-03-01T00:00:00.000Z");
        assert_eq!(rfc3339(bucket_start(t, Interval::Hour)), "2024-03-03T23:00:00.000Z");
        let monday = parse_time("t", "2024-03-04").unwrap();
        assert_eq!(bucket_start(monday, Interval::Week), monday);
    }

    #[test]
    fn times_take_rfc3339_offsets_even_with_the_plus_unencoded() {
        let utc = parse_time("t", "2024-03-03T23:59:59Z").unwrap();
        assert_eq!(parse_time("t", "2024-03-04T01:59:59+02:00").unwrap(), utc);
        assert_eq!(parse_time("t", "2024-03-03T23:59:59+00:00").unwrap(), utc);
        assert_eq!(parse_time("t", "2024-03-04T01:59:59 02:00").unwrap(), utc, "`+` decoded as a space");
        assert!(parse_time("t", "2024-03-03T23:59:59").is_err());
    }

    #[test]
    fn choices_parse_and_name_back() {
        assert_eq!(Metric::parse("profit"), Some(Metric::Profit));
        assert_eq!(Metric::Profit.as_str(), "profit");
        assert_eq!(GroupBy::parse("nope"), None);
        assert_eq!(Interval::names(), vec!["hour", "day", "week", "month"]);
    }
}
