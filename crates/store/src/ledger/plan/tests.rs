//! The planner without a database: examples, then properties over random batches checked
//! against a one-job-at-a-time reference model.

use super::*;
use crate::ledger::LowBalanceWatch;
use proptest::prelude::*;
use quota_core::{PlatformAccount, TransferKind};

fn wallet(n: u8) -> AccountId {
    AccountId::wallet(&format!("usr_{n}"))
}
fn revenue() -> AccountId {
    AccountId::Platform(PlatformAccount::Revenue)
}
fn promo() -> AccountId {
    AccountId::Platform(PlatformAccount::Promotions)
}

fn t(id: &str, from: AccountId, to: AccountId, amount: i64) -> Transfer {
    let kind = TransferKind::UsageCharge;
    quota_core::transfers::restored(id.into(), from, to, Credits::new(amount), kind, "test".into(), 0)
}

fn settlement(transfers: Vec<Transfer>) -> Settlement {
    Settlement { transfers, ..Default::default() }
}

fn watch(account: AccountId, threshold: i64) -> LowBalanceWatch {
    LowBalanceWatch { account, threshold, event: OutboxEvent::new("balance.low", "usr_dev", serde_json::json!({}), 0) }
}

/// What the database would say: every distinct id not already stored is new.
fn new_ids(settlements: &[&Settlement], stored: &HashSet<String>) -> HashSet<String> {
    settlements
        .iter()
        .flat_map(|s| s.transfers.iter())
        .map(|t| t.id.clone())
        .filter(|id| !stored.contains(id))
        .collect()
}

/// The balances an engine would report: `start` moved by the plan.
fn after(plan: &Plan<'_>, start: &HashMap<AccountId, Movement>) -> HashMap<AccountId, Movement> {
    plan.accounts
        .iter()
        .map(|(a, m)| {
            let s = start.get(a).copied().unwrap_or_default();
            (a.clone(), Movement { balance: s.balance + m.balance, held: s.held + m.held })
        })
        .collect()
}

/// A job as the tests build it: the hold it ends, and its settlement.
type TestJob = (Option<HoldRef>, Settlement);

fn entries<'a>(jobs: &'a [TestJob]) -> Vec<Option<Entry<'a>>> {
    jobs.iter().map(|(hold, settlement)| Some(Entry { hold: hold.as_ref(), settlement })).collect()
}

fn hold(account: AccountId, amount: i64) -> Option<HoldRef> {
    Some(HoldRef { id: 1, account, amount })
}

#[test]
fn a_batch_moves_each_account_by_its_new_transfers_and_answers_each_job_in_order() {
    let jobs = vec![
        (hold(wallet(1), 10), settlement(vec![t("a", wallet(1), revenue(), 7)])),
        (hold(wallet(1), 10), settlement(vec![t("b", wallet(1), revenue(), 3)])),
    ];
    let ids: HashSet<String> = ["a", "b"].map(String::from).into();
    let p = plan(entries(&jobs), &ids, &[(wallet(1), 10), (wallet(1), 10)]).unwrap();
    assert_eq!(p.accounts[&wallet(1)], Movement { balance: -10, held: -20 });
    assert_eq!(p.accounts[&revenue()], Movement { balance: 10, held: 0 });
    let start = HashMap::from([(wallet(1), Movement { balance: 100, held: 20 })]);
    let o = p.outcome(&after(&p, &start)).unwrap();
    assert_eq!(o.balances_after[0], vec![(wallet(1), Credits::new(93)), (revenue(), Credits::new(7))]);
    assert_eq!(o.balances_after[1], vec![(wallet(1), Credits::new(90)), (revenue(), Credits::new(10))]);
}

#[test]
fn a_transfer_id_seen_twice_in_a_batch_is_applied_once_and_its_second_job_writes_nothing() {
    let mut second = settlement(vec![t("a", wallet(1), revenue(), 7)]);
    second.events = vec![OutboxEvent::new("balance.updated", "usr_dev", serde_json::json!({}), 0)];
    let jobs = vec![(None, settlement(vec![t("a", wallet(1), revenue(), 7)])), (None, second)];
    let p = plan(entries(&jobs), &["a".to_string()].into(), &[]).unwrap();
    assert_eq!((p.jobs[0].duplicates, p.jobs[1].duplicates), (0, 1));
    assert_eq!(p.accounts[&wallet(1)].balance, -7);
    assert!(p.events.is_empty(), "a replay writes nothing but its new transfers");
}

#[test]
fn a_settlement_above_its_hold_is_refused() {
    let jobs = vec![(hold(wallet(1), 10), settlement(vec![t("a", wallet(1), revenue(), 11)]))];
    let err = plan(entries(&jobs), &["a".to_string()].into(), &[]).err();
    assert_eq!(err, Some(PlanError::AboveHold { account: wallet(1), debit_credits: 11, hold_credits: 10 }));
}

#[test]
fn the_excess_over_a_hold_booked_to_losses_is_allowed_and_losses_may_go_negative() {
    let losses = AccountId::Platform(PlatformAccount::Losses);
    let jobs = vec![(
        hold(wallet(1), 10),
        settlement(vec![t("a", wallet(1), revenue(), 10), t("b", losses.clone(), revenue(), 5)]),
    )];
    let p = plan(entries(&jobs), &["a", "b"].map(String::from).into(), &[(wallet(1), 10)]).unwrap();
    let start = HashMap::from([(wallet(1), Movement { balance: 10, held: 10 })]);
    let o = p.outcome(&after(&p, &start)).unwrap();
    assert_eq!(o.balances_after[0][0], (wallet(1), Credits::new(0)));
    assert!(o.balances_after[0].contains(&(losses, Credits::new(-5))));
}

#[test]
fn held_below_zero_after_a_batch_is_refused() {
    let jobs = vec![(hold(wallet(1), 10), settlement(vec![t("a", wallet(1), revenue(), 1)]))];
    let p = plan(entries(&jobs), &["a".to_string()].into(), &[(wallet(1), 10)]).unwrap();
    let start = HashMap::from([(wallet(1), Movement { balance: 10, held: 5 })]);
    assert_eq!(
        p.outcome(&after(&p, &start)).err(),
        Some(PlanError::NegativeHeld { account: wallet(1), held_credits: -5 })
    );
}

#[test]
fn a_settlement_that_would_overdraw_a_wallet_is_refused() {
    // A hold that expired and whose credits another request took: settling it would go below 0.
    let jobs = vec![(hold(wallet(1), 10), settlement(vec![t("a", wallet(1), revenue(), 10)]))];
    let p = plan(entries(&jobs), &["a".to_string()].into(), &[]).unwrap();
    let start = HashMap::from([(wallet(1), Movement { balance: 4, held: 0 })]);
    assert!(matches!(p.outcome(&after(&p, &start)), Err(PlanError::Overdraft { .. })));
}

#[test]
fn balance_low_fires_when_the_balance_lands_exactly_below_the_threshold_and_not_at_it() {
    let mut s1 = settlement(vec![t("a", wallet(1), revenue(), 50)]);
    s1.low_balance = vec![watch(wallet(1), 50)]; // 100 → 50: at the threshold, not below
    let mut s2 = settlement(vec![t("b", wallet(1), revenue(), 1)]);
    s2.low_balance = vec![watch(wallet(1), 50)]; // 50 → 49: crosses
    let mut s3 = settlement(vec![t("c", wallet(1), revenue(), 1)]);
    s3.low_balance = vec![watch(wallet(1), 50)]; // 49 → 48: already below
    let jobs = vec![(None, s1), (None, s2), (None, s3)];
    let p = plan(entries(&jobs), &["a", "b", "c"].map(String::from).into(), &[]).unwrap();
    let start = HashMap::from([(wallet(1), Movement { balance: 100, held: 0 })]);
    let o = p.outcome(&after(&p, &start)).unwrap();
    assert_eq!(o.crossings.len(), 1);
    assert_eq!(o.crossings[0].data["balance"], 49);
    assert_eq!(o.crossings[0].data["threshold"], 50);
}

#[test]
fn jobs_that_are_not_commits_plan_to_nothing() {
    let jobs = [(None, settlement(vec![t("a", promo(), wallet(2), 5)]))];
    let mut e = entries(&jobs);
    e.insert(0, None);
    let p = plan(e, &["a".to_string()].into(), &[]).unwrap();
    assert_eq!(p.jobs[0], JobPlan::default());
    let o = p.outcome(&after(&p, &HashMap::new())).unwrap();
    assert_eq!(o.balances_after, vec![vec![], vec![(promo(), Credits::new(-5)), (wallet(2), Credits::new(5))]]);
}

/// A random job: the wallet it holds on, the hold, transfers (payer, payee, amount, id), and a
/// watch threshold. Amounts are drawn up to the hold (the caller caps); some ids repeat.
#[derive(Debug, Clone)]
struct RandomJob {
    wallet: u8,
    hold: i64,
    charges: Vec<(bool, i64, u8)>,
    threshold: i64,
}

fn random_job() -> impl Strategy<Value = RandomJob> {
    (0u8..4, 0i64..1_000, proptest::collection::vec((any::<bool>(), 1i64..400, 0u8..40), 0..4), 0i64..2_000)
        .prop_map(|(wallet, hold, charges, threshold)| RandomJob { wallet, hold, charges, threshold })
}

/// Build the batch a correct caller would send: each hold taken by the hold rule against the
/// balances and holds so far, each settlement's debit capped at its hold (as core does).
fn batch(jobs: &[RandomJob], start: &HashMap<AccountId, Movement>) -> (Vec<TestJob>, Vec<(AccountId, i64)>) {
    let mut available: HashMap<AccountId, i64> = start.iter().map(|(a, m)| (a.clone(), m.balance - m.held)).collect();
    let mut out = Vec::new();
    let mut freed = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let w = wallet(job.wallet);
        let balance = start.get(&w).map(|m| m.balance).unwrap_or(0);
        let avail = available.entry(w.clone()).or_default();
        let granted = balance >= 0 && *avail >= job.hold;
        let mut left = if granted { job.hold } else { 0 };
        if granted {
            *avail -= job.hold;
        }
        let mut transfers = Vec::new();
        for (n, (debit, amount, id)) in job.charges.iter().enumerate() {
            let id = format!("tr_{id}");
            if *debit {
                let amount = (*amount).min(left);
                if amount == 0 {
                    continue;
                }
                left -= amount;
                transfers.push(t(&id, w.clone(), revenue(), amount));
            } else {
                transfers.push(t(&format!("{id}_{i}_{n}"), promo(), w.clone(), *amount));
            }
        }
        let mut s = settlement(transfers);
        s.low_balance = vec![watch(w.clone(), job.threshold)];
        let hold = granted.then(|| HoldRef { id: i as u64, account: w.clone(), amount: job.hold });
        if granted {
            freed.push((w, job.hold));
        }
        out.push((hold, s));
    }
    (out, freed)
}

proptest! {
    #[test]
    fn random_batches_balance_apply_each_id_once_keep_wallets_whole_and_fire_crossings_exactly(
        jobs in proptest::collection::vec(random_job(), 0..24),
        balances in proptest::collection::vec(0i64..2_000, 4),
        stored in proptest::collection::hash_set(0u8..40, 0..8),
    ) {
        let start: HashMap<AccountId, Movement> =
            balances.iter().enumerate().map(|(i, b)| (wallet(i as u8), Movement { balance: *b, held: 0 })).collect();
        let (jobs, freed) = batch(&jobs, &start);
        // Holds are open before the batch: `held` counts them.
        let mut start = start;
        for (a, amount) in &freed {
            start.entry(a.clone()).or_default().held += amount;
        }
        let stored: HashSet<String> = stored.iter().map(|n| format!("tr_{n}")).collect();
        let settlements: Vec<&Settlement> = jobs.iter().map(|(_, s)| s).collect();
        let inserted = new_ids(&settlements, &stored);
        let p = plan(entries(&jobs), &inserted, &freed).unwrap();
        let reported = after(&p, &start);
        let o = p.outcome(&reported).unwrap();

        // Σ deltas = 0, and every hold's `held` went back.
        prop_assert_eq!(p.accounts.values().map(|m| i128::from(m.balance)).sum::<i128>(), 0);
        prop_assert!(reported.values().all(|m| m.held == 0));

        // The reference: one job at a time, an id counts the first time only.
        let mut seen = stored.clone();
        let mut balance: HashMap<AccountId, i64> = start.iter().map(|(a, m)| (a.clone(), m.balance)).collect();
        let mut expected_crossings = Vec::new();
        for (j, (_, s)) in jobs.iter().enumerate() {
            let before = balance.clone();
            let mut duplicates = 0;
            for tr in &s.transfers {
                if seen.insert(tr.id.clone()) {
                    *balance.entry(tr.from.clone()).or_default() -= tr.amount.get();
                    *balance.entry(tr.to.clone()).or_default() += tr.amount.get();
                } else {
                    duplicates += 1;
                }
            }
            prop_assert_eq!(p.jobs[j].duplicates, duplicates);
            for (a, c) in &o.balances_after[j] {
                prop_assert_eq!(balance[a], c.get(), "job {}'s balance of {}", j, a);
            }
            if duplicates == 0 {
                for w in &s.low_balance {
                    let (b, a) = (before.get(&w.account).copied().unwrap_or(0), balance.get(&w.account).copied().unwrap_or(0));
                    if b >= w.threshold && a < w.threshold {
                        expected_crossings.push((w.account.to_string(), a));
                    }
                }
            }
        }
        // No wallet below zero through settlement.
        for (a, b) in &balance {
            if a.is_wallet() {
                prop_assert!(*b >= 0, "{} ended at {}", a, b);
            }
        }
        for (a, m) in &reported {
            prop_assert_eq!(balance[a], m.balance);
        }
        // Crossings fire exactly when a job lands below a threshold it was at or above.
        let got: Vec<(String, i64)> = o.crossings.iter().map(|e| {
            let balance = e.data["balance"].as_i64().unwrap();
            let account = jobs.iter().flat_map(|(_, s)| &s.low_balance).find(|w| w.event.id == e.id).unwrap().account.to_string();
            (account, balance)
        }).collect();
        prop_assert_eq!(got, expected_crossings);
    }

    #[test]
    fn any_debit_above_the_hold_is_refused(hold_amount in 0i64..1_000, over in 1i64..1_000) {
        let jobs = vec![(hold(wallet(0), hold_amount), settlement(vec![t("a", wallet(0), revenue(), hold_amount + over)]))];
        let refused = plan(entries(&jobs), &["a".to_string()].into(), &[]).is_err();
        prop_assert!(refused);
    }
}
