//! The reconciler: checks the authorisation's four rules from outside, against what the
//! processor heard.
//!
//! 1. One answer per id: every answer the processor heard for an id is the same, equals what
//!    card-api recorded, and card-processing's decision ends the same way.
//! 2. Approved means exactly one hold still reserving what the payment still holds (the held
//!    amount until a clearing, reversal or expiry moves it on) and a transaction pending
//!    exactly while the payment is; declined means no active hold and no pending transaction.
//! 3. Never over-approve: per account, approved holds never exceed the balance, and available
//!    never goes below zero unless a force post flagged the account overdrawn (and, for
//!    accounts whose every authorisation is listed, the ledger's held amount is exactly what
//!    the approved payments still hold).
//! 4. Nothing half-done: every id has a decision, none is still "being decided".
//!
//! It reads only public interfaces: card-api's recorded answers (signed GET), card-processing,
//! ledger and transactions over gRPC.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sterling_proto::cardprocessing::v1::{
    AuthoriseResponse, Decision as DecisionKind, GetAuthorisationRequest, GetPaymentRequest,
};
use sterling_proto::ledger::v1::{GetBalanceRequest, GetHoldRequest, HoldStatus};
use sterling_proto::transactions::v1::{GetTransactionRequest, TransactionStatus};

use crate::tools::Clients;

/// An answer as the processor received it (card-api's response body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heard {
    /// The processor's authorisation id.
    pub id: String,
    /// `APPROVED` or `DECLINED`.
    pub result: String,
    /// Stable reason code.
    pub reason: String,
    /// Held amount in the account's currency, minor units.
    #[serde(default)]
    pub held_amount: i64,
    /// The account's currency.
    #[serde(default)]
    pub held_currency: String,
}

impl Heard {
    /// Reads an answer from card-api's JSON response body.
    pub fn from_json(body: &serde_json::Value) -> Option<Heard> {
        serde_json::from_value(body.clone()).ok()
    }

    fn same_answer(&self, other: &Heard) -> bool {
        self.result == other.result
            && self.reason == other.reason
            && self.held_amount == other.held_amount
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which rule (1 to 4).
    pub rule: u8,
    /// The ids (or account) involved.
    pub ids: Vec<String>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {} [{}]: {}",
            self.rule,
            self.ids.join(", "),
            self.what
        )
    }
}

/// The outcome of one reconciliation.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Ids checked.
    pub checked: usize,
    /// Of which approved.
    pub approved: usize,
    /// Of which declined.
    pub declined: usize,
    /// Of which card-processing has no record (declined by card-api before it saw them).
    pub unknown: usize,
    /// Every broken rule found.
    pub violations: Vec<Violation>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} authorisations: {} approved, {} declined, {} unknown to card-processing, {} violations",
            self.checked,
            self.approved,
            self.declined,
            self.unknown,
            self.violations.len()
        )?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        Ok(())
    }
}

/// Where the bank is and how to read card-api's records.
pub struct Reconciler {
    /// gRPC clients of the bank.
    pub clients: Clients,
    /// HTTP client.
    pub http: reqwest::Client,
    /// card-api's base URL.
    pub card_api_url: String,
    /// The processor's shared secret (card-api's records are read with a signed GET).
    pub secret: Vec<u8>,
}

/// Per account: approved held amount, and whether every authorisation on it is listed.
#[derive(Default)]
struct AccountTotals {
    approved_held: i64,
    ids: Vec<String>,
}

/// What an approved payment should look like in the ledger and transactions now.
#[derive(Debug, Clone, Copy)]
struct Expected {
    /// Minor units the hold should still reserve.
    held: i64,
    /// Whether the transaction should be pending.
    pending: bool,
}

/// The violations found for one id: rule and what was wrong.
#[derive(Default)]
struct Found(Vec<(u8, String)>);

impl Found {
    fn add(&mut self, rule: u8, what: String) {
        self.0.push((rule, what));
    }
}

/// Rule 1: the processor heard one answer, the one card-api recorded.
fn check_answers(answers: &[Heard], recorded: Option<&Heard>, found: &mut Found) {
    for answer in answers {
        if !answers[0].same_answer(answer) {
            found.add(
                1,
                format!("answered {} and {}", show(&answers[0]), show(answer)),
            );
        }
    }
    match (recorded, answers.first()) {
        (Some(r), Some(a)) if !r.same_answer(a) => found.add(
            1,
            format!(
                "processor heard {} but card-api recorded {}",
                show(a),
                show(r)
            ),
        ),
        (None, Some(a)) => found.add(
            1,
            format!("processor heard {} but card-api recorded nothing", show(a)),
        ),
        _ => {}
    }
}

impl Reconciler {
    /// The answer card-api recorded for `id`.
    pub async fn recorded(&self, id: &str) -> anyhow::Result<Option<Heard>> {
        let path = format!("/v1/authorisations/{id}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        let response = self
            .http
            .get(format!("{}{path}", self.card_api_url))
            .header(
                card_api::signature::SIGNATURE_HEADER,
                card_api::signature::sign(&self.secret, now, path.as_bytes()),
            )
            .send()
            .await?;
        match response.status().as_u16() {
            200 => Ok(Heard::from_json(&response.json().await?)),
            404 => Ok(None),
            status => anyhow::bail!("card-api answered {status} for the record of {id}"),
        }
    }

    /// Checks the four rules once for every id in `heard` (several answers per id allowed;
    /// ids with no answer heard are checked too). `complete_accounts`: every authorisation
    /// of the accounts involved is listed, so the ledger's held amount must equal the
    /// approved holds exactly.
    pub async fn reconcile(
        &self,
        heard: &[(String, Vec<Heard>)],
        complete_accounts: bool,
    ) -> anyhow::Result<Report> {
        let mut report = Report::default();
        let mut accounts: BTreeMap<String, AccountTotals> = BTreeMap::new();
        for (id, answers) in heard {
            report.checked += 1;
            let mut found = Found::default();
            self.check_id(id, answers, &mut report, &mut accounts, &mut found)
                .await?;
            report
                .violations
                .extend(found.0.into_iter().map(|(rule, what)| Violation {
                    rule,
                    ids: vec![id.clone()],
                    what,
                }));
        }
        self.check_accounts(&accounts, complete_accounts, &mut report)
            .await?;
        Ok(report)
    }

    /// Rules 1, 2 and 4 for one id.
    async fn check_id(
        &self,
        id: &str,
        answers: &[Heard],
        report: &mut Report,
        accounts: &mut BTreeMap<String, AccountTotals>,
        found: &mut Found,
    ) -> anyhow::Result<()> {
        let recorded = self.recorded(id).await?;
        check_answers(answers, recorded.as_ref(), found);
        // Rule 4: decided.
        let decision = match self
            .clients
            .card_processing
            .clone()
            .get_authorisation(GetAuthorisationRequest {
                processor_authorisation_id: id.to_string(),
            })
            .await
        {
            Ok(d) => d.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                report.unknown += 1;
                if recorded.as_ref().is_some_and(|r| r.result == "APPROVED") {
                    found.add(4, "approved but card-processing has no record".into());
                }
                return Ok(());
            }
            Err(status) => {
                found.add(4, format!("no decision yet: {}", status.message()));
                return Ok(());
            }
        };
        let approved = decision.decision == DecisionKind::Approved as i32;
        if approved {
            report.approved += 1;
        } else {
            report.declined += 1;
        }
        if let Some(r) = &recorded
            && (r.result == "APPROVED") != approved
        {
            let decided = if approved { "APPROVED" } else { "DECLINED" };
            found.add(
                1,
                format!(
                    "card-api answered {} but card-processing decided {decided}",
                    r.result
                ),
            );
        }
        let expected = self.expected(id, &decision, approved).await?;
        self.check_hold(id, &decision, expected, accounts, found)
            .await?;
        self.check_transaction(&decision, approved, expected, found)
            .await
    }

    /// What the payment should hold now, and whether its transaction should be pending: the
    /// approval's held amount, or what card-processing's payment says after later messages.
    async fn expected(
        &self,
        id: &str,
        decision: &AuthoriseResponse,
        approved: bool,
    ) -> anyhow::Result<Expected> {
        let held = decision.held_amount.clone().unwrap_or_default().minor_units;
        if !approved {
            return Ok(Expected {
                held: 0,
                pending: false,
            });
        }
        let payment = self
            .clients
            .card_processing
            .clone()
            .get_payment(GetPaymentRequest {
                payment_id: id.to_string(),
            })
            .await;
        Ok(match payment {
            Ok(p) => {
                let p = p.into_inner();
                Expected {
                    held: p.held.unwrap_or_default().minor_units,
                    pending: p.status == "pending",
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => Expected {
                held,
                pending: true,
            },
            Err(status) => anyhow::bail!("card-processing: {status}"),
        })
    }

    /// Rule 2, the hold: an approval holds exactly its amount, a decline holds nothing.
    async fn check_hold(
        &self,
        id: &str,
        decision: &AuthoriseResponse,
        expected: Expected,
        accounts: &mut BTreeMap<String, AccountTotals>,
        found: &mut Found,
    ) -> anyhow::Result<()> {
        let approved = decision.decision == DecisionKind::Approved as i32;
        if decision.account_id.is_empty() {
            if approved {
                found.add(2, "approved without an account".into());
            }
            return Ok(());
        }
        let hold = self
            .clients
            .ledger
            .clone()
            .get_hold(GetHoldRequest {
                hold_id: id.to_string(),
                account_id: decision.account_id.clone(),
            })
            .await;
        let active = match &hold {
            Ok(h) => {
                let h = h.get_ref();
                let reserves = h.remaining.clone().or(h.amount.clone()).unwrap_or_default();
                (h.status == HoldStatus::Active as i32).then_some(reserves.minor_units)
            }
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => anyhow::bail!("ledger: {status}"),
        };
        let held = expected.held;
        match (approved, active) {
            (true, Some(amount)) if amount != held => found.add(
                2,
                format!("the payment holds {held} but the ledger's hold reserves {amount}"),
            ),
            (true, None) if held > 0 => found.add(2, "approved without an active hold".into()),
            (false, Some(amount)) => {
                found.add(2, format!("declined with an active hold of {amount}"))
            }
            _ => {}
        }
        let totals = accounts.entry(decision.account_id.clone()).or_default();
        totals.ids.push(id.to_string());
        totals.approved_held += held;
        Ok(())
    }

    /// Rule 2, the transaction: pending exactly while the approved payment is.
    async fn check_transaction(
        &self,
        decision: &AuthoriseResponse,
        approved: bool,
        expected: Expected,
        found: &mut Found,
    ) -> anyhow::Result<()> {
        if decision.transaction_id.is_empty() {
            return Ok(());
        }
        let transaction = self
            .clients
            .transactions
            .clone()
            .get_transaction(GetTransactionRequest {
                transaction_id: decision.transaction_id.clone(),
            })
            .await;
        let pending = match &transaction {
            Ok(t) => t.get_ref().status == TransactionStatus::Pending as i32,
            Err(status) if status.code() == tonic::Code::NotFound => false,
            Err(status) => anyhow::bail!("transactions: {status}"),
        };
        if expected.pending && !pending {
            found.add(2, "approved without a pending transaction".into());
        }
        if approved && !expected.pending && pending {
            found.add(
                2,
                "the payment moved on but its transaction is still pending".into(),
            );
        }
        if !approved && pending {
            found.add(2, "declined with a pending transaction".into());
        }
        Ok(())
    }

    /// Rule 3, per account.
    async fn check_accounts(
        &self,
        accounts: &BTreeMap<String, AccountTotals>,
        complete: bool,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        for (account_id, totals) in accounts {
            let b = self
                .clients
                .ledger
                .clone()
                .get_balance(GetBalanceRequest {
                    account_id: account_id.clone(),
                })
                .await?
                .into_inner();
            let minor =
                |m: Option<sterling_proto::common::v1::Money>| m.unwrap_or_default().minor_units;
            let (balance, held, available) = (minor(b.balance), minor(b.held), minor(b.available));
            let mut violation = |what: String| {
                report.violations.push(Violation {
                    rule: 3,
                    ids: vec![format!("account {account_id}")],
                    what,
                })
            };
            // Only a force post (the network approved offline) may take an account below
            // zero, and it flags the account: then holds placed before it may exceed what is
            // left, and that is not an over-approval.
            if totals.approved_held > balance && !b.overdrawn {
                violation(format!(
                    "approved {} against a balance of {balance}",
                    totals.approved_held
                ));
            }
            if available < 0 && !b.overdrawn {
                violation(format!(
                    "available is {available} and the account is not flagged"
                ));
            }
            if complete && held != totals.approved_held {
                violation(format!(
                    "ledger holds {held} but the approvals add up to {} ({} authorisations)",
                    totals.approved_held,
                    totals.ids.len()
                ));
            }
        }
        Ok(())
    }

    /// Reconciles until the rules hold or `within` has passed (the system settles: sweeper,
    /// compensation and stand-in declines are asynchronous); returns the last report.
    pub async fn reconcile_settled(
        &self,
        heard: &[(String, Vec<Heard>)],
        complete_accounts: bool,
        within: Duration,
    ) -> anyhow::Result<Report> {
        let until = Instant::now() + within;
        loop {
            // A service the bank cannot reach yet (still recovering) is part of settling too.
            let report = match self.reconcile(heard, complete_accounts).await {
                Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                other => other?,
            };
            if report.violations.is_empty() || Instant::now() >= until {
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn show(h: &Heard) -> String {
    format!(
        "{}/{} ({} {})",
        h.result, h.reason, h.held_amount, h.held_currency
    )
}

/// Groups answers by id, in the order first seen.
pub fn by_id(answers: impl IntoIterator<Item = Heard>) -> Vec<(String, Vec<Heard>)> {
    let mut order: Vec<String> = Vec::new();
    let mut grouped: BTreeMap<String, Vec<Heard>> = BTreeMap::new();
    for answer in answers {
        if !grouped.contains_key(&answer.id) {
            order.push(answer.id.clone());
        }
        grouped.entry(answer.id.clone()).or_default().push(answer);
    }
    order
        .into_iter()
        .map(|id| {
            let answers = grouped.remove(&id).unwrap_or_default();
            (id, answers)
        })
        .collect()
}
