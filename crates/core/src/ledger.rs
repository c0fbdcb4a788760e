//! The ledger's rules (SPEC §4.5, DESIGN §3): accounts, transfers and the invariants every
//! durable ledger implementation must keep. Pure: the engine that holds, settles and commits
//! lives in `quota-store`; this module says what a valid transfer is and how balances follow.

use crate::credits::Credits;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// The platform's own accounts. They may go negative (promotions fund welcome credits, clearing
/// accounts fund top-ups), which is what keeps Σ balances = 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlatformAccount {
    /// Base cost of production requests.
    Revenue,
    /// Metered cost of sandbox requests (SPEC §4.4).
    SandboxRevenue,
    /// Funds welcome credits.
    Promotions,
    /// Funds operator grants (`quota admin credit`).
    Adjustments,
    /// Counterpart of money paid in through a payment provider.
    PaymentsClearing,
    /// Counterpart of money paid out to developers.
    PayoutsClearing,
    /// What the platform lost when a provider billed more than a request's hold (SPEC §4.3.3):
    /// the payer pays at most the hold, this account pays the rest of the base to revenue.
    /// Its balance is minus everything ever lost; any movement here is an alarm.
    Losses,
}

impl PlatformAccount {
    pub const ALL: [PlatformAccount; 7] = [
        PlatformAccount::Revenue,
        PlatformAccount::SandboxRevenue,
        PlatformAccount::Promotions,
        PlatformAccount::Adjustments,
        PlatformAccount::PaymentsClearing,
        PlatformAccount::PayoutsClearing,
        PlatformAccount::Losses,
    ];

    fn as_str(self) -> &'static str {
        match self {
            PlatformAccount::Revenue => "revenue",
            PlatformAccount::SandboxRevenue => "sandbox_revenue",
            PlatformAccount::Promotions => "promotions",
            PlatformAccount::Adjustments => "adjustments",
            PlatformAccount::PaymentsClearing => "payments_clearing",
            PlatformAccount::PayoutsClearing => "payouts_clearing",
            PlatformAccount::Losses => "losses",
        }
    }
}

/// A ledger account. Its text form (`wallet:usr_…`, `platform:revenue`) is what the database
/// stores and the ledger API shows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccountId {
    /// A person's prepaid wallet; the owner is a user id.
    Wallet(String),
    /// A developer's markup earnings not yet eligible for payout (SPEC §10.2).
    EarningsPending(String),
    /// A developer's earnings eligible for payout.
    EarningsAvailable(String),
    /// The 10% payout reserve held back for 90 days (SPEC §10.3).
    PayoutReserve(String),
    /// A payout sent to (or being retried at) the payment provider and not yet confirmed paid.
    PayoutInTransit(String),
    Platform(PlatformAccount),
}

impl AccountId {
    pub fn wallet(user_id: &str) -> AccountId {
        AccountId::Wallet(user_id.to_string())
    }

    /// Whether this account may hold a negative balance. Only platform accounts may; a wallet
    /// never goes below zero through inference (settlement is capped at the hold, SPEC §4.3.3),
    /// only by the reversal of a refunded top-up (SPEC §10.4).
    pub fn may_go_negative(&self) -> bool {
        matches!(self, AccountId::Platform(_))
    }

    pub fn is_wallet(&self) -> bool {
        matches!(self, AccountId::Wallet(_))
    }

    /// The user who owns this account, if any.
    pub fn owner(&self) -> Option<&str> {
        match self {
            AccountId::Wallet(u)
            | AccountId::EarningsPending(u)
            | AccountId::EarningsAvailable(u)
            | AccountId::PayoutReserve(u)
            | AccountId::PayoutInTransit(u) => Some(u),
            AccountId::Platform(_) => None,
        }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountId::Wallet(u) => write!(f, "wallet:{u}"),
            AccountId::EarningsPending(u) => write!(f, "earnings_pending:{u}"),
            AccountId::EarningsAvailable(u) => write!(f, "earnings_available:{u}"),
            AccountId::PayoutReserve(u) => write!(f, "payout_reserve:{u}"),
            AccountId::PayoutInTransit(u) => write!(f, "payout_in_transit:{u}"),
            AccountId::Platform(p) => write!(f, "platform:{}", p.as_str()),
        }
    }
}

impl FromStr for AccountId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| format!("bad account id `{s}`"))?;
        if rest.is_empty() {
            return Err(format!("bad account id `{s}`"));
        }
        let owned = rest.to_string();
        Ok(match kind {
            "wallet" => AccountId::Wallet(owned),
            "earnings_pending" => AccountId::EarningsPending(owned),
            "earnings_available" => AccountId::EarningsAvailable(owned),
            "payout_reserve" => AccountId::PayoutReserve(owned),
            "payout_in_transit" => AccountId::PayoutInTransit(owned),
            "platform" => AccountId::Platform(
                PlatformAccount::ALL
                    .into_iter()
                    .find(|p| p.as_str() == rest)
                    .ok_or_else(|| format!("unknown platform account `{rest}`"))?,
            ),
            _ => return Err(format!("bad account id `{s}`")),
        })
    }
}

impl Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why money moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Welcome credits on registration (promotions → wallet).
    Welcome,
    /// Operator grant (adjustments → wallet).
    AdminCredit,
    /// Base cost of a production request (wallet → revenue).
    UsageCharge,
    /// Metered cost of a sandbox request (wallet → sandbox revenue).
    SandboxCharge,
    /// A user-mode request's markup (user wallet → developer's pending earnings).
    Markup,
    /// Developer funds a connected user (developer wallet → user wallet).
    Funding,
    /// Per-app welcome credits (developer wallet → user wallet).
    AppWelcome,
    /// A confirmed top-up (payments clearing → wallet).
    Topup,
    /// Earnings becoming eligible (pending → available), 7 days after the charge.
    EarningsRelease,
    /// 10% of released earnings held back (available → reserve).
    ReserveHold,
    /// A reserve 90 days old returned (reserve → available).
    ReserveRelease,
    /// A payout started (available → in transit), before the provider is called.
    PayoutSent,
    /// A payout the provider confirmed (in transit → payouts clearing).
    Payout,
    /// The part of a request's base cost its payer's hold could not cover (losses → revenue),
    /// SPEC §4.3.3: never the payer's debt.
    Loss,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Welcome => "welcome",
            TransferKind::AdminCredit => "admin_credit",
            TransferKind::UsageCharge => "usage_charge",
            TransferKind::SandboxCharge => "sandbox_charge",
            TransferKind::Markup => "markup",
            TransferKind::Funding => "funding",
            TransferKind::AppWelcome => "app_welcome",
            TransferKind::Topup => "topup",
            TransferKind::EarningsRelease => "earnings_release",
            TransferKind::ReserveHold => "reserve_hold",
            TransferKind::ReserveRelease => "reserve_release",
            TransferKind::PayoutSent => "payout_sent",
            TransferKind::Payout => "payout",
            TransferKind::Loss => "loss",
        }
    }
}

impl FromStr for TransferKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("unknown transfer kind `{s}`"))
    }
}

/// One immutable movement of a positive amount from one account to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Unique; writing the same id twice is a no-op that returns the first transfer.
    pub id: String,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Credits,
    pub kind: TransferKind,
    /// The request or event that caused it (`req_…`, `evt_…`, an admin action).
    pub cause: String,
    /// Unix milliseconds.
    pub created_at_ms: i64,
}

/// Why a transfer is not valid on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("transfer amount must be positive, got {0}")]
    NonPositiveAmount(i64),
    #[error("a transfer must move money between two different accounts")]
    SameAccount,
    #[error("transfer id must not be empty")]
    EmptyId,
}

impl Transfer {
    /// The checks every transfer passes before any engine writes it.
    pub fn validate(&self) -> Result<(), TransferError> {
        if self.id.is_empty() {
            return Err(TransferError::EmptyId);
        }
        if self.amount.0 <= 0 {
            return Err(TransferError::NonPositiveAmount(self.amount.0));
        }
        if self.from == self.to {
            return Err(TransferError::SameAccount);
        }
        Ok(())
    }
}

/// Recompute balances from a sequence of transfers: the reference that `quota ledger verify`
/// compares the stored balances against.
pub fn balances_from_transfers<'a>(transfers: impl IntoIterator<Item = &'a Transfer>) -> HashMap<AccountId, i128> {
    let mut balances: HashMap<AccountId, i128> = HashMap::new();
    for t in transfers {
        *balances.entry(t.from.clone()).or_default() -= i128::from(t.amount.0);
        *balances.entry(t.to.clone()).or_default() += i128::from(t.amount.0);
    }
    balances
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn account_ids_round_trip_through_text() {
        for a in [
            AccountId::wallet("usr_1"),
            AccountId::EarningsPending("usr_2".into()),
            AccountId::EarningsAvailable("usr_3".into()),
            AccountId::PayoutReserve("usr_4".into()),
            AccountId::PayoutInTransit("usr_5".into()),
            AccountId::Platform(PlatformAccount::SandboxRevenue),
        ] {
            assert_eq!(a.to_string().parse::<AccountId>().unwrap(), a);
        }
        assert!("platform:nope".parse::<AccountId>().is_err());
        assert!("wallet:".parse::<AccountId>().is_err());
        assert!("nonsense".parse::<AccountId>().is_err());
    }

    #[test]
    fn invalid_transfers_are_refused() {
        let t = Transfer {
            id: "ledg_1".into(),
            from: AccountId::wallet("a"),
            to: AccountId::wallet("a"),
            amount: Credits(1),
            kind: TransferKind::Funding,
            cause: "x".into(),
            created_at_ms: 0,
        };
        assert_eq!(t.validate(), Err(TransferError::SameAccount));
        let t = Transfer { to: AccountId::wallet("b"), amount: Credits(0), ..t };
        assert_eq!(t.validate(), Err(TransferError::NonPositiveAmount(0)));
        let t = Transfer { amount: Credits(-3), ..t };
        assert_eq!(t.validate(), Err(TransferError::NonPositiveAmount(-3)));
    }

    #[test]
    fn transfer_kinds_round_trip() {
        for k in
            [TransferKind::Welcome, TransferKind::UsageCharge, TransferKind::ReserveRelease, TransferKind::PayoutSent]
        {
            assert_eq!(k.as_str().parse::<TransferKind>().unwrap(), k);
        }
    }

    proptest! {
        #[test]
        fn balances_always_sum_to_zero(moves in proptest::collection::vec((0u8..5, 0u8..5, 1i64..1_000_000_000), 0..200)) {
            let accounts: Vec<AccountId> = (0..5).map(|i| if i == 0 { AccountId::Platform(PlatformAccount::Promotions) } else { AccountId::wallet(&format!("u{i}")) }).collect();
            let transfers: Vec<Transfer> = moves.iter().enumerate().filter(|(_, (a, b, _))| a != b).map(|(i, (a, b, amt))| Transfer {
                id: format!("t{i}"), from: accounts[*a as usize].clone(), to: accounts[*b as usize].clone(),
                amount: Credits(*amt), kind: TransferKind::Funding, cause: String::new(), created_at_ms: 0,
            }).collect();
            let balances = balances_from_transfers(&transfers);
            prop_assert_eq!(balances.values().sum::<i128>(), 0);
        }
    }
}
