//! The kinds of webhook event (SPEC §8) as one enum: parsed from their wire names at the edge
//! (an endpoint's subscription list, a stored row), written back with [`EventKind::as_str`].
//! The wire names never change. Not here: an event's data (built where it happens), its
//! outbox row (`quota_store::OutboxEvent`), its delivery (the worker).

use crate::error::ApiError;
use std::fmt;
use std::str::FromStr;

/// A webhook event's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `usage.completed`: a request was charged (its usage record is the data).
    UsageCompleted,
    /// `balance.updated`: a wallet's balance changed: funding, welcome credits, and every
    /// charged request (SPEC §14).
    BalanceUpdated,
    /// `balance.low`: a wallet crossed an endpoint's low-balance threshold.
    BalanceLow,
    /// `user.connected`: a user approved one of the developer's apps.
    UserConnected,
    /// `user.disconnected`: a user's connection to an app ended.
    UserDisconnected,
    /// `topup.succeeded`: a paid checkout credited a wallet.
    TopupSucceeded,
    /// `payout.paid`: a payout reached the developer's Stripe account.
    PayoutPaid,
    /// `payout.failed`: a payout was refused (retried by the next batch).
    PayoutFailed,
    /// `webhook.test`: sent to one endpoint on request; not subscribable.
    WebhookTest,
}

impl EventKind {
    /// Every kind an endpoint may subscribe to, in the order the API lists them.
    pub const SUBSCRIBABLE: [EventKind; 8] = [
        EventKind::UsageCompleted,
        EventKind::BalanceUpdated,
        EventKind::BalanceLow,
        EventKind::UserConnected,
        EventKind::UserDisconnected,
        EventKind::TopupSucceeded,
        EventKind::PayoutPaid,
        EventKind::PayoutFailed,
    ];

    /// The wire name, as stored and sent.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::UsageCompleted => "usage.completed",
            EventKind::BalanceUpdated => "balance.updated",
            EventKind::BalanceLow => "balance.low",
            EventKind::UserConnected => "user.connected",
            EventKind::UserDisconnected => "user.disconnected",
            EventKind::TopupSucceeded => "topup.succeeded",
            EventKind::PayoutPaid => "payout.paid",
            EventKind::PayoutFailed => "payout.failed",
            EventKind::WebhookTest => "webhook.test",
        }
    }

    /// A kind an endpoint may subscribe to, by its wire name (400 otherwise, listing them).
    pub fn parse_subscribable(name: &str) -> Result<EventKind, ApiError> {
        match name.parse::<EventKind>() {
            Ok(kind) if kind != EventKind::WebhookTest => Ok(kind),
            _ => Err(ApiError::bad_request(format!("unknown event type `{name}`"))
                .with_hint(format!("event types: {}", subscribable_names().join(", ")))),
        }
    }
}

/// The wire names of [`EventKind::SUBSCRIBABLE`].
pub fn subscribable_names() -> Vec<&'static str> {
    EventKind::SUBSCRIBABLE.iter().map(|k| k.as_str()).collect()
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(name: &str) -> Result<EventKind, String> {
        EventKind::SUBSCRIBABLE
            .into_iter()
            .chain([EventKind::WebhookTest])
            .find(|k| k.as_str() == name)
            .ok_or_else(|| format!("unknown event type `{name}`"))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint's subscription list from the API: unknown kinds refused, duplicates dropped;
/// empty or `*` means every kind (stored as an empty list).
pub fn parse_subscription(names: &[String]) -> Result<Vec<EventKind>, ApiError> {
    let mut out: Vec<EventKind> = Vec::with_capacity(names.len());
    for name in names {
        if name == "*" {
            return Ok(Vec::new());
        }
        let kind = EventKind::parse_subscribable(name)?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for kind in EventKind::SUBSCRIBABLE.into_iter().chain([EventKind::WebhookTest]) {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
        assert!("usage.started".parse::<EventKind>().is_err());
    }

    #[test]
    fn subscriptions_refuse_unknown_and_test_events() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_subscription(&names(&["balance.low", "balance.low", "usage.completed"])).unwrap(),
            vec![EventKind::BalanceLow, EventKind::UsageCompleted]
        );
        assert!(parse_subscription(&names(&["*"])).unwrap().is_empty());
        assert_eq!(parse_subscription(&names(&["webhook.test"])).unwrap_err().code, "bad_request");
        assert!(parse_subscription(&names(&["nope"])).is_err());
    }
}
