//! The journeys: what a processor and a customer do, step by step, each step checked and
//! timed. Every journey undoes its own money movement (a reversal, or a refund after a
//! clearing) and waits for the balance read model to show it, so the account does not drain
//! and the next journey starts from a settled balance.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::Runner;
use crate::api::{Balances, Heard, MERCHANT, authorisation};

/// How often the asynchronous path is looked at while waiting for it.
const POLL: Duration = Duration::from_millis(250);

/// Every journey, in the order a run takes them.
pub const JOURNEYS: &[&str] = &[
    "approve",
    "duplicate_at_once",
    "foreign_currency",
    "clearing_and_refund",
    "decline_frozen_card",
    "decline_insufficient_funds",
    "decline_unknown_card",
    "decline_unsupported_currency",
];

/// One step as it went.
#[derive(Debug, Clone)]
pub struct Step {
    /// What it checks.
    pub name: String,
    /// How long it took.
    pub took: Duration,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// One journey as it went.
#[derive(Debug, Clone)]
pub struct Journey {
    /// Its name (one of [`JOURNEYS`]).
    pub name: &'static str,
    /// Its steps, up to the first that failed.
    pub steps: Vec<Step>,
    /// The ids it used (authorisation, request, transaction), to trace a failure.
    pub ids: Vec<(&'static str, String)>,
    /// How long it took.
    pub took: Duration,
}

impl Journey {
    /// The failed step, if one did.
    pub fn failed_step(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.failure.is_some())
    }

    /// One line naming the journey, the step, the ids and the cause; `None` if it passed.
    pub fn failure(&self) -> Option<String> {
        let step = self.failed_step()?;
        let ids: Vec<String> = self.ids.iter().map(|(k, v)| format!("{k} {v}")).collect();
        Some(format!(
            "journey {} failed at step \"{}\" ({}): {}",
            self.name,
            step.name,
            ids.join(", "),
            step.failure.as_deref().unwrap_or_default()
        ))
    }
}

/// A journey under way: steps timed and recorded, ids kept for the report, and what to undo
/// if it stops half way.
pub(crate) struct Trail {
    journey: Journey,
    started: Instant,
    /// The balances it started from.
    baseline: Option<Balances>,
    /// Authorisations it made and has not reversed yet.
    to_undo: Vec<String>,
    /// A clearing it made and has not refunded yet: the authorisation and the amount.
    to_refund: Option<(String, i64)>,
}

impl Trail {
    fn new(name: &'static str) -> Trail {
        Trail {
            journey: Journey {
                name,
                steps: Vec::new(),
                ids: Vec::new(),
                took: Duration::ZERO,
            },
            started: Instant::now(),
            baseline: None,
            to_undo: Vec::new(),
            to_refund: None,
        }
    }

    /// Keeps an id a failure report must name.
    fn note(&mut self, what: &'static str, id: &str) {
        self.journey.ids.push((what, id.to_string()));
    }

    /// Runs one step: timed (the `sterling_acceptance_step_seconds` histogram) and recorded.
    async fn step<T>(
        &mut self,
        name: &str,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let outcome = work.await;
        let took = started.elapsed();
        metrics::histogram!(
            "sterling_acceptance_step_seconds",
            "journey" => self.journey.name,
            "step" => name.to_string()
        )
        .record(took.as_secs_f64());
        self.journey.steps.push(Step {
            name: name.to_string(),
            took,
            failure: outcome.as_ref().err().map(|e| format!("{e:#}")),
        });
        outcome
    }

    fn finish(mut self) -> Journey {
        self.journey.took = self.started.elapsed();
        self.journey
    }
}

/// Runs the journey `name` once.
pub async fn run(runner: &Runner, name: &'static str) -> Journey {
    let mut trail = Trail::new(name);
    // A step's error is recorded in the trail; the journey stops at the first.
    let _ = match name {
        "approve" => approve(runner, &mut trail).await,
        "duplicate_at_once" => duplicate_at_once(runner, &mut trail).await,
        "foreign_currency" => foreign_currency(runner, &mut trail).await,
        "clearing_and_refund" => clearing_and_refund(runner, &mut trail).await,
        "decline_frozen_card" => decline_frozen_card(runner, &mut trail).await,
        "decline_insufficient_funds" => {
            let available = runner.balances().await.map(|b| b.available);
            match available {
                Ok(available) => {
                    decline(
                        runner,
                        &mut trail,
                        Card::Own,
                        (available + 1, "GBP"),
                        "insufficient_funds",
                    )
                    .await
                }
                Err(e) => {
                    trail
                        .step("read the balance", async { Err::<(), _>(e) })
                        .await
                }
            }
        }
        "decline_unknown_card" => {
            decline(
                runner,
                &mut trail,
                Card::Unknown,
                (1_00, "GBP"),
                "card_not_found",
            )
            .await
        }
        "decline_unsupported_currency" => {
            decline(
                runner,
                &mut trail,
                Card::Own,
                (1_00, "ARS"),
                "currency_not_supported",
            )
            .await
        }
        other => {
            let unknown = anyhow!("no journey named {other}");
            trail
                .step("choose the journey", async { Err::<(), _>(unknown) })
                .await
        }
    };
    if trail.journey.failed_step().is_some() {
        runner.clean_up(&mut trail).await;
    }
    let journey = trail.finish();
    let outcome = if journey.failed_step().is_some() {
        "failed"
    } else {
        "passed"
    };
    metrics::counter!("sterling_acceptance_journeys_total", "journey" => name, "outcome" => outcome)
        .increment(1);
    journey
}

/// Which card a payment uses.
#[derive(Clone, Copy)]
enum Card {
    /// The acceptance customer's.
    Own,
    /// A token no card has.
    Unknown,
}

impl Runner {
    /// Sends an authorisation with a new id; checks the status and the round trip against the
    /// decision budget, and returns the answer.
    async fn authorise(
        &self,
        trail: &mut Trail,
        card: Card,
        (minor, currency): (i64, &str),
    ) -> anyhow::Result<(String, Heard)> {
        let id = self.next_id(trail.journey.name);
        let request_id = format!("{id}-request");
        trail.note("authorisation", &id);
        trail.note("request id", &request_id);
        let card = match card {
            Card::Own => self.fixture.card_token.clone(),
            Card::Unknown => format!("{}-no-such-card", self.config.prefix),
        };
        trail.to_undo.push(id.clone());
        let body = authorisation(&id, &card, minor, currency);
        let budget = self.config.decision_budget;
        let heard = trail
            .step("authorise", async {
                let heard = self
                    .processor
                    .send("/v1/authorisations", &body, &request_id)
                    .await?;
                ensure!(
                    heard.status == StatusCode::OK,
                    "card-api answered {}: {}",
                    heard.status,
                    heard.body
                );
                ensure!(
                    heard.latency <= budget,
                    "the decision took {:?}, more than the budget of {budget:?}",
                    heard.latency
                );
                Ok(heard)
            })
            .await?;
        if let Some(transaction) = heard.body["transaction_id"]
            .as_str()
            .filter(|t| !t.is_empty())
        {
            trail.note("transaction", transaction);
        }
        Ok((id, heard))
    }

    /// Waits (up to the async timeout) until the read model's balances satisfy `settled`.
    async fn balances_until(
        &self,
        what: &str,
        settled: impl Fn(&Balances) -> bool,
    ) -> anyhow::Result<Balances> {
        let deadline = Instant::now() + self.config.async_timeout;
        loop {
            let now = self.balances().await?;
            if settled(&now) {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} not seen within {:?}: the read model shows {now:?}",
                    self.config.async_timeout
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends a processor message (clearing, reversal, refund) with `suffix` on the
    /// authorisation's id; it must be accepted.
    async fn message(&self, path: &str, message: Value) -> anyhow::Result<Value> {
        let id = message["id"].as_str().unwrap_or_default().to_string();
        let heard = self
            .processor
            .send(path, &message, &format!("{id}-request"))
            .await?;
        ensure!(
            heard.status == StatusCode::OK,
            "card-api answered {}: {}",
            heard.status,
            heard.body
        );
        ensure!(
            heard.body["accepted"] == true,
            "not accepted: {}",
            heard.body
        );
        Ok(heard.body)
    }

    /// Reverses authorisation `id` in full and waits until the read model holds `held` again.
    async fn undo(&self, trail: &mut Trail, id: &str, held: i64) -> anyhow::Result<()> {
        trail.step("reverse it", self.reverse(id)).await?;
        trail
            .step(
                "the hold is released",
                self.balances_until("the release", |b| b.held == held),
            )
            .await?;
        trail.to_undo.retain(|undone| undone != id);
        Ok(())
    }

    /// Refunds `amount` of the cleared authorisation `id` to the card.
    async fn refund(&self, id: &str, amount: i64) -> anyhow::Result<Value> {
        let refund = json!({
            "id": format!("{id}-refund"), "authorisation_id": id,
            "card_token": self.fixture.card_token,
            "amount": amount, "currency": "GBP", "merchant": MERCHANT.clone(),
        });
        self.message("/v1/refunds", refund).await
    }

    async fn reverse(&self, id: &str) -> anyhow::Result<Value> {
        let reversal = json!({"id": format!("{id}-reversal"), "authorisation_id": id});
        self.message("/v1/reversals", reversal).await
    }

    /// The balances a journey starts from, kept for its clean-up.
    async fn baseline(&self, trail: &mut Trail) -> anyhow::Result<Balances> {
        let before = trail.step("read the balance", self.balances()).await?;
        trail.baseline = Some(before);
        Ok(before)
    }

    /// After a failed journey: reverses every authorisation it made (a reversal of a declined
    /// one changes nothing; a late hold behind a timed-out answer is released by the bank
    /// itself) and waits for the read model to hold what it did before, so the next journey
    /// starts from a settled balance. Recorded as a step.
    async fn clean_up(&self, trail: &mut Trail) {
        let ids = std::mem::take(&mut trail.to_undo);
        let cleared = trail.to_refund.take();
        let Some(before) = trail.baseline else {
            return;
        };
        let _ = trail
            .step("clean up", async {
                for id in &ids {
                    // Refused when never approved; what matters is what is held afterwards.
                    let _ = self.reverse(id).await;
                }
                if let Some((id, amount)) = &cleared {
                    self.refund(id, *amount).await?;
                }
                self.balances_until("the balances it started from", |b| {
                    b.held == before.held && b.balance == before.balance
                })
                .await
            })
            .await;
    }
}

/// Approved within the budget; then the feed item on the live stream, the push at the device
/// sink, the signed webhook, and the hold in the balance read model; then reversed.
async fn approve(runner: &Runner, trail: &mut Trail) -> anyhow::Result<()> {
    let before = runner.baseline(trail).await?;
    let api = &runner.fixture.api;
    let mut feed = trail
        .step(
            "follow the feed",
            api.follow_feed(&runner.fixture.account_id),
        )
        .await?;
    let (id, heard) = runner.authorise(trail, Card::Own, (1_00, "GBP")).await?;
    trail.step("approved", async { approved(&heard) }).await?;
    let transaction = heard.body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let limit = runner.config.async_timeout;
    trail
        .step(
            "the feed item on the live stream",
            feed.item(&transaction, limit),
        )
        .await?;
    if let Some(sink) = &runner.config.push_sink {
        trail
            .step(
                "the push at the device sink",
                runner.pushed(sink, &transaction),
            )
            .await?;
    }
    trail
        .step("the signed webhook, verified", runner.hooked(&transaction))
        .await?;
    let held = heard.body["held_amount"].as_i64().unwrap_or_default();
    trail
        .step(
            "the balance shows the hold",
            runner.balances_until("the hold", |b| b.held == before.held + held),
        )
        .await?;
    runner.undo(trail, &id, before.held).await
}

/// The same authorisation sent twice at once: one answer, one hold.
async fn duplicate_at_once(runner: &Runner, trail: &mut Trail) -> anyhow::Result<()> {
    let before = runner.baseline(trail).await?;
    let id = runner.next_id(trail.journey.name);
    trail.note("authorisation", &id);
    trail.to_undo.push(id.clone());
    let body = authorisation(&id, &runner.fixture.card_token, 1_50, "GBP");
    let processor = &runner.processor;
    let (a, b) = trail
        .step("authorise twice at once", async {
            let (first, second) = (format!("{id}-request-a"), format!("{id}-request-b"));
            let (a, b) = tokio::join!(
                processor.send("/v1/authorisations", &body, &first),
                processor.send("/v1/authorisations", &body, &second),
            );
            Ok((a?, b?))
        })
        .await?;
    trail
        .step("one answer", async {
            approved(&a)?;
            ensure!(
                a.body == b.body,
                "two answers for one id: {} and {}",
                a.body,
                b.body
            );
            Ok(())
        })
        .await?;
    let held = a.body["held_amount"].as_i64().unwrap_or_default();
    trail
        .step("one hold", async {
            runner
                .balances_until("the hold", |b| b.held == before.held + held)
                .await?;
            // A second hold would land moments later: look again.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = runner.balances().await?;
            ensure!(
                now.held == before.held + held,
                "more than one hold: {now:?}, before {before:?}"
            );
            Ok(())
        })
        .await?;
    runner.undo(trail, &id, before.held).await
}

/// A payment in euros on the sterling account: approved, held converted.
async fn foreign_currency(runner: &Runner, trail: &mut Trail) -> anyhow::Result<()> {
    let before = runner.baseline(trail).await?;
    let (id, heard) = runner.authorise(trail, Card::Own, (2_00, "EUR")).await?;
    let held = trail
        .step("approved, held in pounds", async {
            approved(&heard)?;
            ensure!(
                heard.body["held_currency"] == "GBP",
                "held in {}",
                heard.body["held_currency"]
            );
            let held = heard.body["held_amount"].as_i64().unwrap_or_default();
            ensure!(held > 0 && held != 2_00, "held {held}: not converted");
            Ok(held)
        })
        .await?;
    trail
        .step(
            "the balance shows the converted hold",
            runner.balances_until("the hold", |b| b.held == before.held + held),
        )
        .await?;
    runner.undo(trail, &id, before.held).await
}

/// Approved, cleared in full (the balance goes down), refunded (it comes back).
async fn clearing_and_refund(runner: &Runner, trail: &mut Trail) -> anyhow::Result<()> {
    let before = runner.baseline(trail).await?;
    let (id, heard) = runner.authorise(trail, Card::Own, (2_50, "GBP")).await?;
    trail.step("approved", async { approved(&heard) }).await?;
    let clearing = json!({
        "id": format!("{id}-clearing"), "authorisation_id": id,
        "amount": 2_50, "currency": "GBP", "final": true,
    });
    trail
        .step("clear it", runner.message("/v1/clearings", clearing))
        .await?;
    trail.to_refund = Some((id.clone(), 2_50));
    trail
        .step(
            "the balance shows it settled",
            runner.balances_until("the clearing", |b| {
                b.balance == before.balance - 2_50 && b.held == before.held
            }),
        )
        .await?;
    trail.step("refund it", runner.refund(&id, 2_50)).await?;
    trail.to_refund = None;
    trail
        .step(
            "the balance shows the refund",
            runner.balances_until("the refund", |b| b.balance == before.balance),
        )
        .await?;
    Ok(())
}

/// The card frozen through the public API: declined `card_frozen`; unfrozen afterwards
/// whatever happened.
async fn decline_frozen_card(runner: &Runner, trail: &mut Trail) -> anyhow::Result<()> {
    let path = format!(
        "/v1/accounts/{}/cards/{}",
        runner.fixture.account_id, runner.fixture.card_token
    );
    let api = &runner.fixture.api;
    trail
        .step("freeze the card", async {
            api.call(Method::POST, &format!("{path}/freeze"), None, None)
                .await?
                .expect(StatusCode::OK, "freeze")
        })
        .await?;
    let declined = decline(runner, trail, Card::Own, (1_00, "GBP"), "card_frozen").await;
    let unfrozen = trail
        .step("unfreeze the card", async {
            api.call(Method::POST, &format!("{path}/unfreeze"), None, None)
                .await?
                .expect(StatusCode::OK, "unfreeze")
        })
        .await;
    declined?;
    unfrozen.map(|_| ())
}

/// A payment declined with `reason`, holding nothing.
async fn decline(
    runner: &Runner,
    trail: &mut Trail,
    card: Card,
    amount: (i64, &str),
    reason: &str,
) -> anyhow::Result<()> {
    let before = runner.baseline(trail).await?;
    let (_, heard) = runner.authorise(trail, card, amount).await?;
    trail
        .step(&format!("declined {reason}"), async {
            let (result, why) = heard.decision();
            ensure!(
                result == "DECLINED" && why == reason,
                "expected DECLINED {reason}, got {result} {why}: {}",
                heard.body
            );
            Ok(())
        })
        .await?;
    trail
        .step("nothing held", async {
            let now = runner.balances().await?;
            ensure!(
                now.held == before.held,
                "held {} before, {} after",
                before.held,
                now.held
            );
            Ok(())
        })
        .await
}

/// Checks an answer approves.
fn approved(heard: &Heard) -> anyhow::Result<()> {
    let (result, reason) = heard.decision();
    ensure!(
        result == "APPROVED",
        "expected APPROVED, got {result} {reason}: {}",
        heard.body
    );
    Ok(())
}

impl Runner {
    /// Waits until the push sink has a notification for the customer's phone about
    /// `transaction`.
    async fn pushed(&self, sink: &str, transaction: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.config.async_timeout;
        loop {
            let deliveries: Vec<Value> = self
                .http
                .get(format!("{sink}/deliveries"))
                .send()
                .await
                .context("the push sink is unreachable")?
                .json()
                .await?;
            let found = deliveries.iter().any(|d| {
                d["device_token"] == self.fixture.device_token.as_str()
                    && d["payload"]["transaction_id"] == transaction
            });
            if found {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no push for {transaction} within {:?}",
                    self.config.async_timeout
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the receiver has a verified webhook about `transaction`; one that fails
    /// verification fails the step.
    async fn hooked(&self, transaction: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.config.async_timeout;
        loop {
            let deliveries = self.receiver.about("transaction_id", transaction);
            if let Some(bad) = deliveries.iter().find(|d| !d.verified) {
                bail!("webhook {} failed signature verification", bad.event_id);
            }
            if !deliveries.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no webhook about {transaction} within {:?}",
                    self.config.async_timeout
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
