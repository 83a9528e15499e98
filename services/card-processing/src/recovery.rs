//! Nothing stays half-done: compensation of declines, the sweeper that finishes abandoned
//! claims (a crash, a dropped task) and card-api's stand-in declines.
//!
//! A decline is compensated only once it is recorded, and `declined` is final, so a release
//! can never undo an approval. Releases leave tombstones in the ledger and in transactions:
//! a placement still in flight when its authorisation was declined finds the tombstone and
//! reserves nothing.

use std::collections::HashSet;
use std::time::Duration;

use prost::Message;
use sterling_money::Money;
use sterling_proto::cards::v1::GetCardRequest;
use sterling_proto::events::v1::CardAuthorisationStoodIn;
use sterling_proto::ledger::v1::ReleaseHoldRequest;
use sterling_proto::transactions::v1::ReleaseTransactionRequest;
use sterling_storage::{Mutation, Row, SharedStore, now_millis};
use sterling_template::context::RequestContext;
use sterling_template::{Error, Result, money};
use tracing::Instrument;

use crate::authorisation::Authorisation;
use crate::decide::{Decider, declined, reason};
use crate::store::{AuthorisationStore, Claim, From, OPEN_BUCKET_MS, Record, State};

/// How the sweeper runs.
#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    /// Time between passes.
    pub interval: Duration,
    /// How long past its deadline a claim is left to its saga before the sweeper declines it.
    pub grace: Duration,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            interval: Duration::from_millis(1000),
            grace: Duration::from_millis(1000),
        }
    }
}

/// An open row with no record is left this long for its claim to land before it is dropped.
const UNCLAIMED_LIMIT_MS: i64 = 30_000;

fn ignore_not_found(result: std::result::Result<(), tonic::Status>) -> Result<()> {
    match result {
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        other => Ok(other?),
    }
}

impl Decider {
    /// Compensates a declined record in the background, retrying a few times; the sweeper is
    /// the durable backstop if this process dies first.
    pub fn compensate_soon(&self, record: Record) {
        let decider = self.clone();
        let mut context =
            RequestContext::current().unwrap_or_else(|| RequestContext::new_root(None, None));
        context.deadline = None;
        tokio::spawn(
            context
                .scope(async move {
                    let mut pause = Duration::from_millis(20);
                    for _ in 0..6 {
                        match decider.compensate(&record).await {
                            Ok(()) => return,
                            Err(e) => tracing::warn!(error = %e, "compensation failed; retrying"),
                        }
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                })
                .in_current_span(),
        );
    }

    /// Releases whatever a declined authorisation may have placed: its hold and its pending
    /// transaction. Idempotent; does nothing for an approval.
    pub async fn compensate(&self, record: &Record) -> Result<()> {
        let Some(decision) = record.decision() else {
            return Err(Error::internal(
                "cannot compensate an undecided authorisation",
            ));
        };
        if decision.approved {
            return Ok(());
        }
        let account_id = if decision.account_id.is_empty() {
            // The card-to-account link never changes: it names the account a saga that died
            // before recording anything might have held on.
            match self
                .cards
                .clone()
                .get_card(GetCardRequest {
                    token: record.authorisation.card_token.clone(),
                })
                .await
            {
                Ok(card) => card.into_inner().account_id,
                Err(status) if status.code() == tonic::Code::NotFound => return Ok(()),
                Err(status) => return Err(status.into()),
            }
        } else {
            decision.account_id.clone()
        };
        let id = &record.authorisation.processor_authorisation_id;
        ignore_not_found(
            self.ledger
                .clone()
                .release_hold(ReleaseHoldRequest {
                    hold_id: id.clone(),
                    account_id: account_id.clone(),
                })
                .await
                .map(drop),
        )?;
        ignore_not_found(
            self.transactions
                .clone()
                .release_transaction(ReleaseTransactionRequest {
                    transaction_id: record.transaction_id.clone(),
                    account_id,
                    authorisation_id: id.clone(),
                })
                .await
                .map(drop),
        )?;
        Ok(())
    }

    /// Finishes one open authorisation if it can be: `Ok(true)` once nothing more is needed
    /// (decided, announced, and compensated if declined).
    pub async fn resolve(&self, id: &str, opened_at: i64, grace: Duration) -> Result<bool> {
        let now = now_millis();
        let Some(mut record) = self.store.record(id).await? else {
            return Ok(now - opened_at > UNCLAIMED_LIMIT_MS);
        };
        if let State::Processing { deadline_at, .. } = &record.state {
            if deadline_at + grace.as_millis() as i64 > now {
                return Ok(false);
            }
            tracing::warn!(processor_authorisation_id = %id, "finishing an abandoned claim");
            let a = record.authorisation.clone();
            self.settle(
                &a,
                &From::AnyClaim,
                declined(&a, reason::TIMEOUT, "", &record.transaction_id),
            )
            .await?;
            record = self
                .store
                .record(id)
                .await?
                .ok_or_else(|| Error::internal("record vanished"))?;
        }
        self.announcer.ensure_published(&record).await?;
        self.compensate(&record).await?;
        Ok(true)
    }

    /// Makes card-processing's record match a decline card-api answered on its own: declines
    /// the authorisation if undecided (or unknown), reverses it if approved.
    pub async fn stand_in(&self, event: &CardAuthorisationStoodIn) -> Result<()> {
        let amount: Money = money::from_proto("local_amount", event.local_amount.as_ref())?;
        let a = Authorisation {
            processor_authorisation_id: event.processor_authorisation_id.clone(),
            card_token: event.card_token.clone(),
            amount,
            merchant_descriptor: event.merchant_descriptor.clone(),
            mcc: event.mcc.clone(),
            merchant_country: event.merchant_country.clone(),
            merchant_city: event.merchant_city.clone(),
        };
        let id = &a.processor_authorisation_id;
        let record = match self.store.record(id).await? {
            Some(record) => record,
            None => match self.store.claim(&a, now_millis()).await? {
                Claim::Won {
                    claim,
                    transaction_id,
                } => {
                    let decision = declined(&a, &event.reason, "", &transaction_id);
                    self.settle(&a, &From::Claim(claim), decision).await?;
                    return Ok(());
                }
                Claim::Taken(record) => *record,
            },
        };
        // Even under another fingerprint (the id reused after a crash): the processor heard
        // a decline for this id, so nothing may stay reserved under it.
        let transaction_id = record.transaction_id.clone();
        let from = match &record.state {
            State::Processing { .. } => From::AnyClaim,
            State::Decided(d) if !d.approved => return Ok(()),
            State::Decided(d) => From::Approved(d.event_id.clone()),
        };
        // The sweeper sees to the compensation if this process dies half-way.
        self.store.open(id).await?;
        let mut decision = declined(&a, &event.reason, "", &transaction_id);
        if let State::Decided(approved) = &record.state {
            tracing::warn!(processor_authorisation_id = %id, "reversing an approval card-api answered as a decline");
            decision.reversed = true;
            decision.account_id.clone_from(&approved.account_id);
        }
        let stored = self.settle(&a, &from, decision).await?;
        if stored.approved {
            // The approval changed under us (cannot happen: approvals are final until
            // reversed); redeliver and look again.
            return Err(Error::unavailable(
                "stand_in",
                "the record changed; retrying",
            ));
        }
        let settled = self
            .store
            .record(id)
            .await?
            .ok_or_else(|| Error::internal("record vanished"))?;
        self.compensate(&settled).await
    }

    /// Decodes and applies a stand-in event from the bus.
    pub async fn handle_stand_in(&self, envelope: sterling_bus::Envelope) -> Result<()> {
        let event = CardAuthorisationStoodIn::decode(envelope.payload.as_slice())
            .map_err(|e| Error::bad_request("event", format!("not a stand-in decline: {e}")))?;
        self.stand_in(&event).await
    }
}

/// The sweeper: passes over `open_authorisations` bucket by bucket from a persisted
/// watermark, finishing what is abandoned, announcing what was not announced, compensating
/// declines; the watermark moves past a bucket once everything in it is done. Rows are never
/// deleted (they expire): a bucket behind the watermark is not read again.
pub struct Sweeper {
    decider: Decider,
    store: SharedStore,
    config: SweepConfig,
    watermark: Option<i64>,
    /// Ids done in buckets at or past the watermark.
    done: HashSet<(i64, String)>,
}

const PROGRESS_KEY: &str = "open_authorisations";

impl Sweeper {
    /// A sweeper over the decider's records.
    pub fn new(decider: Decider, store: SharedStore, config: SweepConfig) -> Self {
        Sweeper {
            decider,
            store,
            config,
            watermark: None,
            done: HashSet::new(),
        }
    }

    async fn load_watermark(&self) -> Result<i64> {
        let row = self
            .store
            .get("sweeper_progress", &Row::new().with("name", PROGRESS_KEY))
            .await?;
        Ok(match row {
            Some(row) => row.i64("bucket")?,
            // A keyspace never swept has no open rows older than now.
            None => AuthorisationStore::bucket_of(now_millis()) - 1,
        })
    }

    async fn save_watermark(&self, bucket: i64) -> Result<()> {
        self.store
            .apply(vec![Mutation::insert(
                "sweeper_progress",
                Row::new().with("name", PROGRESS_KEY).with("bucket", bucket),
            )])
            .await?;
        Ok(())
    }

    /// One pass; returns how many authorisations it finished.
    pub async fn sweep_once(&mut self) -> Result<usize> {
        let mut watermark = match self.watermark {
            Some(w) => w,
            None => self.load_watermark().await?,
        };
        let ripe = now_millis() - self.config.grace.as_millis() as i64;
        let newest = AuthorisationStore::bucket_of(now_millis());
        let mut finished = 0;
        let mut contiguous = true;
        let first = watermark;
        for bucket in first..=newest {
            let mut pending = false;
            for (id, opened_at) in self.decider.store.open_in_bucket(bucket).await? {
                let key = (bucket, id);
                if self.done.contains(&key) {
                    continue;
                }
                if opened_at > ripe {
                    pending = true;
                    continue;
                }
                match self
                    .decider
                    .resolve(&key.1, opened_at, self.config.grace)
                    .await
                {
                    Ok(true) => {
                        self.done.insert(key);
                        finished += 1;
                    }
                    Ok(false) => pending = true,
                    Err(e) => {
                        tracing::warn!(processor_authorisation_id = %key.1, error = %e, "cannot finish an open authorisation yet");
                        pending = true;
                    }
                }
            }
            let bucket_over = (bucket + 1) * OPEN_BUCKET_MS <= ripe;
            if contiguous && !pending && bucket_over {
                watermark = bucket + 1;
            } else {
                contiguous = false;
            }
        }
        if self.watermark != Some(watermark) {
            self.save_watermark(watermark).await?;
            self.watermark = Some(watermark);
            self.done.retain(|(bucket, _)| *bucket >= watermark);
            // Announcements older than the watermark with a margin are never checked again.
            self.decider
                .announcer
                .forget_before(watermark * OPEN_BUCKET_MS - 60_000);
        }
        Ok(finished)
    }

    /// Sweeps every interval until `stopping` fires; the first pass runs at once (recovery
    /// on start).
    pub async fn run(mut self, stopping: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.config.interval);
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A pass that panics (a bug, a fail point) is retried next tick, not the end.
            let pass = std::panic::AssertUnwindSafe(self.sweep_once());
            match futures::FutureExt::catch_unwind(pass).await {
                Ok(Ok(0)) => {}
                Ok(Ok(closed)) => tracing::debug!(closed, "sweeper pass"),
                Ok(Err(e)) => tracing::warn!(error = %e, "sweeper pass failed"),
                Err(_) => tracing::error!("sweeper pass panicked"),
            }
        }
    }
}
