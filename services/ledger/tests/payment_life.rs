//! A card payment's life in the ledger, checked against a model: random sequences of holds,
//! clearings (partial, over, several, final), reversals, increases, refunds and force posts,
//! each sent twice at once, some change ids reused for other changes. After every step the
//! ledger must agree with the model, balances sum to zero, holds resolve at most once and a
//! customer's available amount is below zero only when a force post or clearing flagged it;
//! the day's journal of each account adds up to its balance.

use std::collections::HashMap;
use std::sync::Arc;

use ledger::MIGRATIONS;
use ledger::changes::{ChangeKind, HoldChange, HoldChangeRequest};
use ledger::store::{AccountKind, Book, HoldStatus, Transfer};
use proptest::prelude::*;
use sterling_money::{Currency, Money};
use sterling_storage::embedded::SqliteStore;

const HOLDS: usize = 4;
const OPENING: i64 = 1_000;

fn gbp(minor: i64) -> Money {
    Money::from_minor(minor, Currency::from_code("GBP").unwrap())
}

#[derive(Debug, Clone)]
enum Op {
    Place {
        hold: usize,
        amount: i64,
    },
    Capture {
        change: usize,
        hold: usize,
        amount: i64,
        last: bool,
        limit: bool,
    },
    Reduce {
        change: usize,
        hold: usize,
        amount: Option<i64>,
    },
    Increase {
        change: usize,
        hold: usize,
        amount: i64,
    },
    Refund {
        id: usize,
        amount: i64,
    },
    ForcePost {
        id: usize,
        amount: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let hold = 0..HOLDS;
    let change = 0..12usize;
    let amount = 1..400i64;
    prop_oneof![
        3 => (hold.clone(), amount.clone()).prop_map(|(hold, amount)| Op::Place { hold, amount }),
        3 => (change.clone(), hold.clone(), amount.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(change, hold, amount, last, limit)| Op::Capture { change, hold, amount, last, limit }),
        2 => (change.clone(), hold.clone(), proptest::option::of(amount.clone()))
            .prop_map(|(change, hold, amount)| Op::Reduce { change, hold, amount }),
        1 => (change, hold, amount.clone())
            .prop_map(|(change, hold, amount)| Op::Increase { change, hold, amount }),
        1 => (0..4usize, amount.clone()).prop_map(|(id, amount)| Op::Refund { id, amount }),
        1 => (0..4usize, amount).prop_map(|(id, amount)| Op::ForcePost { id, amount }),
    ]
}

/// A hold as the model keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ModelHold {
    placed: i64,
    remaining: i64,
    increased: i64,
    captured: i64,
    status: HoldStatus,
}

/// What the ledger should hold, worked out independently.
#[derive(Debug, Default)]
struct Model {
    balance: i64,
    settlement: i64,
    holds: HashMap<usize, ModelHold>,
    /// Change id -> (what it asked, what it did), for repeats and conflicts.
    changes: HashMap<usize, (String, Result<HoldChange, String>)>,
    /// Captures refused over their limit: refused for good under their id.
    refused: HashMap<usize, String>,
    transfers: HashMap<String, (i64, Result<(), String>)>,
    overdrawn: bool,
}

impl Model {
    fn held(&self) -> i64 {
        self.holds.values().map(|h| h.remaining).sum()
    }
    fn available(&self) -> i64 {
        self.balance - self.held()
    }
}

async fn book() -> Book {
    let book = Book::new(Arc::new(SqliteStore::in_memory(MIGRATIONS).unwrap()));
    let gbp_code = Currency::from_code("GBP").unwrap();
    for (id, kind) in [
        ("funding", AccountKind::Internal),
        ("settlement", AccountKind::Internal),
        ("alice", AccountKind::Customer),
    ] {
        book.create_account(id, gbp_code, kind).await.unwrap();
    }
    book.transfer(&Transfer {
        transfer_id: "opening".into(),
        debit_account_id: "funding".into(),
        credit_account_id: "alice".into(),
        amount: gbp(OPENING),
        description: "opening".into(),
        force: false,
    })
    .await
    .unwrap();
    book
}

fn change_request(op: &Op) -> Option<HoldChangeRequest> {
    let mut over_capture_percent = None;
    let (change, hold, kind, amount, counter) = match *op {
        Op::Capture {
            change,
            hold,
            amount,
            last,
            limit,
        } => (change, hold, ChangeKind::Capture { last }, Some(amount), {
            over_capture_percent = limit.then_some(20);
            "settlement"
        }),
        Op::Reduce {
            change,
            hold,
            amount,
        } => (change, hold, ChangeKind::Reduce, amount, ""),
        Op::Increase {
            change,
            hold,
            amount,
        } => (change, hold, ChangeKind::Increase, Some(amount), ""),
        _ => return None,
    };
    Some(HoldChangeRequest {
        change_id: format!("c{change}"),
        hold_id: format!("h{hold}"),
        account_id: "alice".into(),
        kind,
        amount: amount.map(gbp),
        counter_account_id: counter.into(),
        over_capture_percent,
    })
}

/// Runs `op` twice at once; both must come back the same. Returns the outcome as a code.
async fn run(book: &Book, op: &Op) -> Result<Option<HoldChange>, String> {
    let code = |e: sterling_template::Error| e.code().to_string();
    if let Some(request) = change_request(op) {
        let (a, b) = tokio::join!(book.change_hold(&request), book.change_hold(&request));
        let (a, b) = (a.map_err(code), b.map_err(code));
        assert_eq!(a, b, "duplicates of {op:?} answered differently");
        return a.map(Some);
    }
    let (a, b) = match *op {
        Op::Place { hold, amount } => {
            let id = format!("h{hold}");
            let (a, b) = tokio::join!(
                book.place_hold(&id, "alice", gbp(amount)),
                book.place_hold(&id, "alice", gbp(amount))
            );
            (a.map(|_| None).map_err(code), b.map(|_| None).map_err(code))
        }
        Op::Refund { id, amount } | Op::ForcePost { id, amount } => {
            let refund = matches!(op, Op::Refund { .. });
            let (debit, credit) = if refund {
                ("settlement", "alice")
            } else {
                ("alice", "settlement")
            };
            let t = Transfer {
                transfer_id: format!("{}{id}", if refund { "refund" } else { "force" }),
                debit_account_id: debit.into(),
                credit_account_id: credit.into(),
                amount: gbp(amount),
                description: String::new(),
                force: !refund,
            };
            let (a, b) = tokio::join!(book.transfer(&t), book.transfer(&t));
            (a.map(|_| None).map_err(code), b.map(|_| None).map_err(code))
        }
        _ => unreachable!(),
    };
    assert_eq!(a, b, "duplicates of {op:?} answered differently");
    a
}

impl Model {
    /// What `op` should do; updates the model.
    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Place { hold, amount } => self.place(hold, amount),
            Op::Refund { id, amount } => self.transfer(format!("refund{id}"), amount, true),
            Op::ForcePost { id, amount } => self.transfer(format!("force{id}"), amount, false),
            _ => Ok(()),
        }
    }

    fn place(&mut self, hold: usize, amount: i64) -> Result<(), String> {
        if let Some(h) = self.holds.get(&hold) {
            return match h.status {
                HoldStatus::Released => Err("precondition_failed.hold_released".into()),
                _ if h.placed != amount => Err("conflict.hold".into()),
                _ => Ok(()),
            };
        }
        if self.available() < amount {
            return Err("precondition_failed.insufficient_funds".into());
        }
        self.holds.insert(
            hold,
            ModelHold {
                placed: amount,
                remaining: amount,
                increased: 0,
                captured: 0,
                status: HoldStatus::Active,
            },
        );
        Ok(())
    }

    fn transfer(&mut self, id: String, amount: i64, refund: bool) -> Result<(), String> {
        if let Some((asked, outcome)) = self.transfers.get(&id) {
            return if *asked == amount {
                outcome.clone()
            } else {
                Err("conflict.transfer".into())
            };
        }
        if refund {
            self.balance += amount;
            self.settlement -= amount;
        } else {
            self.balance -= amount;
            self.settlement += amount;
            if self.available() < 0 {
                self.overdrawn = true;
            }
        }
        self.transfers.insert(id, (amount, Ok(())));
        Ok(())
    }

    /// Checks a hold change the ledger made against the model's own working of it.
    fn change(&mut self, op: &Op, got: &Result<Option<HoldChange>, String>) {
        let request = change_request(op).unwrap();
        let asked = format!(
            "{:?}",
            (
                &request.hold_id,
                request.kind,
                request.amount,
                request.over_capture_percent
            )
        );
        let change: usize = request.change_id[1..].parse().unwrap();
        let capture = matches!(request.kind, ChangeKind::Capture { .. });
        if let (Some(refused), true) = (self.refused.get(&change), capture) {
            // Refused once, refused for good; another capture under the id is a conflict.
            let expected = if *refused == asked {
                "precondition_failed.over_capture"
            } else {
                "conflict.change"
            };
            assert_eq!(got.as_ref().unwrap_err(), expected, "{op:?}");
            return;
        }
        if let Some((before, outcome)) = self.changes.get(&change) {
            if *before == asked {
                assert_eq!(
                    &got.clone().map(Option::unwrap),
                    outcome,
                    "repeat of {op:?}"
                );
            } else {
                assert_eq!(got.as_ref().unwrap_err(), "conflict.change", "{op:?}");
            }
            return;
        }
        let hold: usize = request.hold_id[1..].parse().unwrap();
        let current = self.holds.get(&hold).copied();
        let remaining = current
            .filter(|h| h.status == HoldStatus::Active)
            .map_or(0, |h| h.remaining);
        let amount = request.amount.map_or(remaining, |m| m.minor_units());
        let over_limit = |h: &ModelHold, percent: u32| {
            let authorised = h.placed + h.increased;
            authorised > 0 && (h.captured + amount) * 100 > authorised * (100 + i64::from(percent))
        };
        let refused = request
            .over_capture_percent
            .is_some_and(|p| current.is_some_and(|h| over_limit(&h, p)));
        let expected = match request.kind {
            ChangeKind::Capture { .. } if refused => {
                self.refused.insert(change, asked.clone());
                Err("precondition_failed.over_capture".to_string())
            }
            ChangeKind::Capture { last } => {
                let used = amount.min(remaining);
                let released = if last { remaining } else { used };
                self.balance -= amount;
                self.settlement += amount;
                Ok((amount, released, 0))
            }
            ChangeKind::Reduce => Ok((0, amount.min(remaining), 0)),
            ChangeKind::Increase
                if remaining == 0 && current.is_none_or(|h| h.status != HoldStatus::Active) =>
            {
                Err("precondition_failed.hold_released".to_string())
            }
            ChangeKind::Increase if self.available() < amount => {
                Err("precondition_failed.insufficient_funds".to_string())
            }
            ChangeKind::Increase => Ok((0, 0, amount)),
        };
        match (&expected, got) {
            (Ok((posted, released, increased)), Ok(Some(c))) => {
                assert_eq!(
                    (
                        c.posted.minor_units(),
                        c.released.minor_units(),
                        c.increased.minor_units()
                    ),
                    (*posted, *released, *increased),
                    "{op:?}"
                );
                let left = remaining - released + increased;
                assert_eq!(c.remaining.minor_units(), left, "{op:?}");
                let status = match current {
                    Some(h) if h.status == HoldStatus::Active && left == 0 => match request.kind {
                        ChangeKind::Capture { .. } => HoldStatus::Cleared,
                        _ => HoldStatus::Released,
                    },
                    Some(h) => h.status,
                    None => HoldStatus::Released,
                };
                assert_eq!(c.status, status, "{op:?}");
                let (placed, was_increased, captured) =
                    current.map_or((0, 0, 0), |h| (h.placed, h.increased, h.captured));
                self.holds.insert(
                    hold,
                    ModelHold {
                        placed,
                        remaining: left,
                        increased: was_increased + increased,
                        captured: captured + posted,
                        status,
                    },
                );
                if self.available() < 0 && *posted > 0 {
                    self.overdrawn = true;
                }
                self.changes.insert(change, (asked, Ok(c.clone())));
            }
            (Err(code), Err(got_code)) => {
                assert_eq!(code, got_code, "{op:?}");
                // A refused change records nothing: the same id may be used again.
            }
            (expected, got) => panic!("{op:?}: expected {expected:?}, got {got:?}"),
        }
    }
}

async fn check(book: &Book, model: &Model) {
    let balance_of = |id: &'static str| async move {
        let account = book.account(id).await.unwrap();
        book.balance(&account).await.unwrap()
    };
    let alice = balance_of("alice").await;
    let settlement = balance_of("settlement").await;
    let funding = balance_of("funding").await;
    assert_eq!(
        alice.balance.minor_units()
            + settlement.balance.minor_units()
            + funding.balance.minor_units(),
        0,
        "balances sum to zero"
    );
    assert_eq!(
        alice.balance.minor_units(),
        model.balance,
        "alice's balance"
    );
    assert_eq!(
        settlement.balance.minor_units(),
        model.settlement,
        "settlement"
    );
    assert_eq!(
        alice.held.minor_units(),
        model.held(),
        "held = what active holds reserve"
    );
    assert_eq!(alice.overdrawn, model.overdrawn, "overdrawn flag");
    assert!(
        alice.available.minor_units() >= 0 || alice.overdrawn,
        "below zero only when flagged"
    );
    // The journal of the day holds every posting: it adds up to the balances.
    let day = sterling_storage::utc_date(sterling_storage::now_millis());
    for (id, balance) in [("alice", alice.balance), ("settlement", settlement.balance)] {
        let account = book.account(id).await.unwrap();
        let postings = book.postings(&account, &day).await.unwrap();
        let sum: i64 = postings.iter().map(|p| p.amount.minor_units()).sum();
        assert_eq!(
            sum,
            balance.minor_units(),
            "{id}'s journal adds up to its balance"
        );
    }
    let account = book.account("alice").await.unwrap();
    for (hold, expected) in &model.holds {
        let h = book
            .hold(&format!("h{hold}"), "alice")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.remaining.minor_units(), h.status),
            (expected.remaining, expected.status),
            "h{hold}"
        );
        assert!(h.remaining.minor_units() <= h.amount.minor_units() + h.increased.minor_units());
        assert_eq!(h.account_id, account.account_id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let book = book().await;
            let mut model = Model { balance: OPENING, ..Model::default() };
            for op in &ops {
                let got = run(&book, op).await;
                if change_request(op).is_some() {
                    model.change(op, &got);
                } else {
                    assert_eq!(got.map(|_| ()), model.apply(op), "{op:?}");
                }
                check(&book, &model).await;
            }
        });
    }
}
