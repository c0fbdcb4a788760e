//! The chart of accounts (SPEC §4.5, DESIGN §2): one constructor per kind of transfer, fixing
//! its from, to and id scheme — a request's charge (what the payer pays, capped at the hold; its
//! base to platform revenue and its markup to the developer's pending earnings; the loss the
//! platform books when a provider billed more than the hold), welcome credits, operator grants,
//! top-ups, funding, and the payout batch's steps. Nothing outside core builds a transfer by
//! hand.

use crate::billing::Charge;
use crate::credits::Credits;
use crate::ledger::{AccountId, PlatformAccount, Transfer, TransferKind};
use crate::markup::Margin;

/// A request's charge as settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SettledCharge {
    /// What the metered usage costs at list price, with the app's markup.
    pub metered: Charge,
    /// What the payer pays: `paid.total() ≤ hold`, and the markup is earned only on the base
    /// actually paid (`paid.markup ≤ margin × paid.base`, rounded up).
    pub paid: Charge,
    /// The part of the base the payer's hold could not cover, paid by the platform's losses
    /// account (zero unless the hold's bound was beaten).
    pub loss: Credits,
}

impl SettledCharge {
    /// Whether the hold was beaten (an alarm: the bound was wrong, or the provider over-reported).
    pub fn lost(&self) -> bool {
        self.loss.is_positive()
    }
}

/// Settle `metered` (base + markup at `margin`) against a hold of `held` credits. In the sandbox
/// (`takes_markup = false`) the payer pays the base only; the markup is reported, not taken.
/// Whatever the metered cost, the payer pays at most `held` (SPEC §4.3(3)).
pub fn usage_charge(metered: Charge, margin: Margin, held: Credits, takes_markup: bool) -> SettledCharge {
    assert!(metered.base.0 >= 0 && held.0 >= 0, "a charge and a hold are never negative");
    let base = metered.base;
    let paid = if !takes_markup {
        Charge { base: base.min(held), markup: Credits::ZERO }
    } else if metered.total() <= held {
        metered
    } else {
        // The largest base whose base + markup fits the hold: what the payer can pay for.
        let fits = |b: i64| b.saturating_add(margin.markup_on(Credits(b)).0) <= held.0;
        let (mut lo, mut hi) = (0i64, base.0);
        while lo < hi {
            let mid = lo + (hi - lo + 1) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let markup = margin.markup_on(Credits(lo));
        // Rounding can leave a few credits of the hold over: they pay base, not markup.
        Charge { base: Credits((held.0 - markup.0).min(base.0)), markup }
    };
    let loss = Credits(base.0 - paid.base.0);
    debug_assert!(paid.total() <= held || (paid.total() == metered.total() && metered.total() <= held));
    debug_assert!(paid.markup <= margin.markup_on(paid.base));
    debug_assert!(loss.0 >= 0);
    SettledCharge { metered, paid, loss }
}

/// Who a charge moves money between, and the ids it is written under.
#[derive(Debug, Clone)]
pub struct ChargeParties<'a> {
    /// Prefix of the transfer ids (`<charge_id>_base`, `_markup`, `_loss`): random, or derived
    /// from an Idempotency-Key so a replay can never be charged twice.
    pub charge_id: &'a str,
    /// The request that caused it (`req_…`).
    pub cause: &'a str,
    pub payer: &'a AccountId,
    /// The developer whose app's markup this is (their pending earnings receive it).
    pub developer_id: &'a str,
    pub sandbox: bool,
    pub created_at_ms: i64,
}

/// The transfers of a settled charge: payer → revenue (or sandbox revenue) for the base paid,
/// payer → the developer's pending earnings for the markup paid (never in the sandbox), and
/// losses → revenue for the base the hold could not cover.
pub fn usage_charge_transfers(parties: &ChargeParties<'_>, charge: &SettledCharge) -> Vec<Transfer> {
    let revenue =
        AccountId::Platform(if parties.sandbox { PlatformAccount::SandboxRevenue } else { PlatformAccount::Revenue });
    let transfer = |suffix: &str, from: AccountId, to: AccountId, amount: Credits, kind: TransferKind| Transfer {
        id: format!("{}_{suffix}", parties.charge_id),
        from,
        to,
        amount,
        kind,
        cause: parties.cause.to_string(),
        created_at_ms: parties.created_at_ms,
    };
    let mut out = Vec::with_capacity(3);
    if charge.paid.base.is_positive() {
        let kind = if parties.sandbox { TransferKind::SandboxCharge } else { TransferKind::UsageCharge };
        out.push(transfer("base", parties.payer.clone(), revenue.clone(), charge.paid.base, kind));
    }
    if charge.paid.markup.is_positive() && !parties.sandbox {
        let earnings = AccountId::EarningsPending(parties.developer_id.to_string());
        out.push(transfer("markup", parties.payer.clone(), earnings, charge.paid.markup, TransferKind::Markup));
    }
    if charge.loss.is_positive() {
        let losses = AccountId::Platform(PlatformAccount::Losses);
        out.push(transfer("loss", losses, revenue, charge.loss, TransferKind::Loss));
    }
    out
}

/// One transfer of `amount` from `from` to `to`: the shape every constructor below fills.
fn transfer(
    id: String,
    from: AccountId,
    to: AccountId,
    amount: Credits,
    kind: TransferKind,
    cause: &str,
    created_at_ms: i64,
) -> Transfer {
    Transfer { id, from, to, amount, kind, cause: cause.to_string(), created_at_ms }
}

/// A transfer as it was stored: any accounts, any kind. For reading the ledger back (the
/// transfer history) and for tests of the ledger's own mechanics; code that moves money uses
/// the named constructors below, which decide accounts and kind themselves.
pub fn restored(
    id: String,
    from: AccountId,
    to: AccountId,
    amount: Credits,
    kind: TransferKind,
    cause: String,
    created_at_ms: i64,
) -> Transfer {
    Transfer { id, from, to, amount, kind, cause, created_at_ms }
}

/// Welcome credits on registration (promotions → wallet), once per account: the id is the
/// account's.
pub fn welcome(user_id: &str, amount: Credits, now_ms: i64) -> Transfer {
    let (from, to) = (AccountId::Platform(PlatformAccount::Promotions), AccountId::wallet(user_id));
    transfer(format!("ledg_welcome_{user_id}"), from, to, amount, TransferKind::Welcome, user_id, now_ms)
}

/// An operator's grant (`quota admin credit`: adjustments → wallet), each one new.
pub fn admin_credit(user_id: &str, amount: Credits, now_ms: i64) -> Transfer {
    let (from, to) = (AccountId::Platform(PlatformAccount::Adjustments), AccountId::wallet(user_id));
    let id = crate::ids::new_id("ledg_admin_");
    transfer(id, from, to, amount, TransferKind::AdminCredit, "quota admin credit", now_ms)
}

/// A confirmed top-up (payments clearing → wallet), under the id its payment event derives.
pub fn topup(id: String, user_id: &str, amount: Credits, cause: &str, now_ms: i64) -> Transfer {
    let (from, to) = (AccountId::Platform(PlatformAccount::PaymentsClearing), AccountId::wallet(user_id));
    transfer(id, from, to, amount, TransferKind::Topup, cause, now_ms)
}

/// A developer funding a connected user: `Funding` (`/v1/funding/oauth_user`) or an app's
/// `AppWelcome` credits (developer wallet → user wallet).
pub fn developer_to_user(
    kind: TransferKind,
    id: String,
    developer_id: &str,
    user_id: &str,
    amount: Credits,
    cause: &str,
    now_ms: i64,
) -> Transfer {
    assert!(matches!(kind, TransferKind::Funding | TransferKind::AppWelcome), "not a funding kind: {kind:?}");
    transfer(id, AccountId::wallet(developer_id), AccountId::wallet(user_id), amount, kind, cause, now_ms)
}

/// The payout batch's steps for one developer (SPEC §10.2–§10.3). Each id is derived from the
/// developer and the cumulative amount the step had moved before, so a re-run never moves the
/// same money twice.
pub mod payout {
    use super::*;

    /// No payout below $10.00.
    pub const PAYOUT_MINIMUM: Credits = Credits(10_000_000);
    /// One US cent.
    pub const CREDITS_PER_CENT: i64 = 10_000;
    /// The reserve is 1/10 of released earnings.
    pub const RESERVE_DIVISOR: i64 = 10;

    /// The payout for an available balance: `(cents, credits)`, or `None` below the minimum.
    /// The credits are a whole number of cents; the remainder stays available.
    pub fn payout_for(available: Credits) -> Option<(i64, Credits)> {
        if available.0 < PAYOUT_MINIMUM.0 {
            return None;
        }
        let cents = available.0 / CREDITS_PER_CENT;
        Some((cents, Credits(cents * CREDITS_PER_CENT)))
    }

    /// The reserve that should be held once `released` credits in all have become available.
    pub fn reserve_for(released: i64) -> i64 {
        released / RESERVE_DIVISOR
    }

    /// Pending earnings 7 days old become available.
    pub fn earnings_release(dev: &str, released_before: i64, amount: Credits, cause: &str, now_ms: i64) -> Transfer {
        let (from, to) = (AccountId::EarningsPending(dev.into()), AccountId::EarningsAvailable(dev.into()));
        let id = format!("ledg_erel_{dev}_{released_before}");
        transfer(id, from, to, amount, TransferKind::EarningsRelease, cause, now_ms)
    }

    /// 10% of released earnings held back (available → reserve).
    pub fn reserve_hold(dev: &str, held_before: i64, amount: Credits, cause: &str, now_ms: i64) -> Transfer {
        let (from, to) = (AccountId::EarningsAvailable(dev.into()), AccountId::PayoutReserve(dev.into()));
        transfer(format!("ledg_rhold_{dev}_{held_before}"), from, to, amount, TransferKind::ReserveHold, cause, now_ms)
    }

    /// A reserve 90 days old returned (reserve → available).
    pub fn reserve_release(dev: &str, returned_before: i64, amount: Credits, cause: &str, now_ms: i64) -> Transfer {
        let (from, to) = (AccountId::PayoutReserve(dev.into()), AccountId::EarningsAvailable(dev.into()));
        let id = format!("ledg_rrel_{dev}_{returned_before}");
        transfer(id, from, to, amount, TransferKind::ReserveRelease, cause, now_ms)
    }

    /// A payout started, before the provider is called (available → in transit).
    pub fn sent(dev: &str, covered_from: i64, amount: Credits, payout_id: &str, now_ms: i64) -> Transfer {
        let (from, to) = (AccountId::EarningsAvailable(dev.into()), AccountId::PayoutInTransit(dev.into()));
        transfer(
            format!("ledg_posent_{dev}_{covered_from}"),
            from,
            to,
            amount,
            TransferKind::PayoutSent,
            payout_id,
            now_ms,
        )
    }

    /// A payout the provider confirmed (in transit → payouts clearing).
    pub fn paid(dev: &str, covered_from: i64, amount: Credits, payout_id: &str, now_ms: i64) -> Transfer {
        let (from, to) =
            (AccountId::PayoutInTransit(dev.into()), AccountId::Platform(PlatformAccount::PayoutsClearing));
        transfer(format!("ledg_paid_{dev}_{covered_from}"), from, to, amount, TransferKind::Payout, payout_id, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn charge(base: i64, margin: Margin) -> Charge {
        Charge { base: Credits(base), markup: margin.markup_on(Credits(base)) }
    }

    #[test]
    fn payouts_are_whole_cents_from_ten_dollars() {
        use payout::payout_for;
        assert_eq!(payout_for(Credits(9_999_999)), None);
        assert_eq!(payout_for(Credits(10_000_000)), Some((1_000, Credits(10_000_000))));
        assert_eq!(payout_for(Credits(12_345_678)), Some((1_234, Credits(12_340_000))));
    }

    #[test]
    fn reserve_is_a_tenth_rounded_down() {
        use payout::reserve_for;
        assert_eq!(reserve_for(0), 0);
        assert_eq!(reserve_for(9), 0);
        assert_eq!(reserve_for(12_345_679), 1_234_567);
    }

    #[test]
    fn a_charge_within_the_hold_is_paid_in_full() {
        let m = Margin::from_bps(2500).unwrap();
        let s = usage_charge(charge(400, m), m, Credits(1000), true);
        assert_eq!(s.paid, charge(400, m));
        assert_eq!(s.loss, Credits(0));
    }

    #[test]
    fn a_charge_above_the_hold_pays_the_hold_and_books_the_rest_as_a_loss() {
        // The F1 case: a $1 hold, a provider billing $111.50 at a 1000% margin.
        let m = Margin::from_bps(100_000).unwrap();
        let s = usage_charge(charge(111_500_000, m), m, Credits(1_000_000), true);
        assert_eq!(s.paid.total(), Credits(1_000_000));
        assert!(s.paid.markup <= m.markup_on(s.paid.base), "markup only on the base paid");
        assert_eq!(s.loss.0, 111_500_000 - s.paid.base.0);
        assert!(s.lost());
    }

    #[test]
    fn the_sandbox_pays_the_base_only() {
        let m = Margin::from_bps(5000).unwrap();
        let s = usage_charge(charge(100, m), m, Credits(100), false);
        assert_eq!(s.paid, Charge { base: Credits(100), markup: Credits(0) });
        let s = usage_charge(charge(150, m), m, Credits(100), false);
        assert_eq!((s.paid.base, s.loss), (Credits(100), Credits(50)));
    }

    #[test]
    fn transfers_name_their_legs_and_balance() {
        let m = Margin::from_bps(100_000).unwrap();
        let payer = AccountId::wallet("usr_u");
        let parties = ChargeParties {
            charge_id: "ledg_1",
            cause: "req_1",
            payer: &payer,
            developer_id: "usr_d",
            sandbox: false,
            created_at_ms: 7,
        };
        let s = usage_charge(charge(5_000, m), m, Credits(1_000), true);
        let t = usage_charge_transfers(&parties, &s);
        let ids: Vec<&str> = t.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["ledg_1_base", "ledg_1_markup", "ledg_1_loss"]);
        let from_payer: i64 = t.iter().filter(|t| t.from == payer).map(|t| t.amount.0).sum();
        assert_eq!(from_payer, 1_000);
        let to_revenue: i64 =
            t.iter().filter(|t| t.to == AccountId::Platform(PlatformAccount::Revenue)).map(|t| t.amount.0).sum();
        assert_eq!(to_revenue, 5_000, "revenue receives the whole base the provider billed");
        assert!(t.iter().all(|t| t.validate().is_ok()));
    }

    proptest! {
        /// The payer never pays more than the hold; base + loss is the metered base; markup is
        /// earned only on base actually paid; nothing is lost when the charge fits.
        #[test]
        fn settlement_is_capped_at_the_hold(base in 0i64..10_000_000_000, held in 0i64..10_000_000_000, bps in 0u32..=100_000, sandbox: bool) {
            let m = Margin::from_bps(bps).unwrap();
            let metered = charge(base, m);
            let s = usage_charge(metered, m, Credits(held), !sandbox);
            prop_assert!(s.paid.total().0 <= held);
            prop_assert_eq!(s.paid.base.0 + s.loss.0, base);
            prop_assert!(s.paid.markup <= m.markup_on(s.paid.base));
            prop_assert!(s.paid.base.0 >= 0 && s.paid.markup.0 >= 0 && s.loss.0 >= 0);
            let owed = if sandbox { metered.base } else { metered.total() };
            if owed.0 <= held {
                prop_assert_eq!(s.loss, Credits(0));
                prop_assert_eq!(s.paid.total(), owed);
            } else {
                // Capped: the hold is used up to within the markup's rounding.
                prop_assert!(held - s.paid.total().0 <= i64::from(bps / 10_000) + 2, "left {} of {}", held - s.paid.total().0, held);
            }
        }
    }
}
