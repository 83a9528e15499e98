//! Every balance change announced: `ledger.balance.changed`, a snapshot of the account's
//! balance and held amounts at its new version, through the template's outbox.
//!
//! A change is the balance's compare-and-set to version `v`. Before it, the announcement is
//! staged in the outbox (written just before the batch, in the same commit on the embedded
//! store: [`sterling_storage::Store::apply_in_order`]); in the same conditional batch as the compare-and-set, the entry
//! `version:<v>` records the announcement's event id. After it, the announcement is published
//! if the batch applied and discarded if not. If the process dies in between, the relay asks
//! [`VersionConfirm`]: the entry names this event (publish), names another or the balance has
//! moved past `v` without it (discard), or is not there yet (wait).

use async_trait::async_trait;
use prost::Message;
use sterling_bus::Envelope;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{AccountBalanceChanged, TransferCompleted};
use sterling_storage::{Mutation, SharedStore, now_millis};
use sterling_template::outbox::{self, Confirm, Outbox, Verdict};
use sterling_template::{Error, Result};

use crate::store::{BALANCE, entry_key};

/// What changed an account's balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A transfer's posting.
    Posting,
    /// A hold placed.
    HoldPlaced,
    /// A hold released.
    HoldReleased,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Posting => "posting",
            Cause::HoldPlaced => "hold_placed",
            Cause::HoldReleased => "hold_released",
        }
    }
}

/// The entry of the announcement of `version`.
fn version_entry(version: i64) -> String {
    format!("version:{version:020}")
}

/// How long a `version:<v>` entry is kept: the relay asks about it within minutes of the
/// change (an announcement unconfirmed for [`outbox::OUTBOX_WAIT_LIMIT`] is dropped), and
/// once it is gone the balance's version past `v` answers the same (discard) for a change
/// that lost. A week bounds the account's partition without ever being too short.
pub const VERSION_ENTRY_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The ledger's side of the outbox.
#[derive(Clone)]
pub struct Announcer {
    outbox: Outbox,
}

/// One change's announcement: staged before the batch, settled after it.
pub struct Announcement {
    envelope: Envelope,
    /// The write that stages it, if it is to be written just before the change's batch
    /// (`None`: staged already).
    staging: Option<Mutation>,
}

impl Announcement {
    /// The write that stages it before the change's batch, once (`None` if staged already).
    pub fn take_staging(&mut self) -> Option<Mutation> {
        self.staging.take()
    }
}

impl Announcer {
    /// Announces through `outbox`.
    pub fn new(outbox: Outbox) -> Self {
        Announcer { outbox }
    }

    /// The announcement of `account_id` at `version` with `(balance, held)`, to be staged
    /// just before the change's batch, and the mutation that records it in that batch.
    pub fn stage(
        &self,
        account_id: &str,
        currency: &str,
        version: i64,
        (balance, held): (i64, i64),
        cause: Cause,
        entry: &str,
    ) -> Result<(Announcement, Mutation)> {
        let event = AccountBalanceChanged {
            account_id: account_id.to_string(),
            currency: currency.to_string(),
            version,
            balance,
            held,
            cause: cause.as_str().to_string(),
            entry: entry.to_string(),
            changed_at_ms: now_millis(),
        };
        let envelope = outbox::event(types::LEDGER_BALANCE_CHANGED, &event);
        let staging = Some(self.outbox.staging(&envelope)?);
        let record = entry_key(account_id, &version_entry(version))
            .with("event_id", envelope.event_id.as_str());
        Ok((
            Announcement { envelope, staging },
            Mutation::insert_if_not_exists("account_entries", record).with_ttl(VERSION_ENTRY_TTL),
        ))
    }

    /// Stages the announcement of a transfer about to start: published once it completes,
    /// and until then the relay's cue to finish it if its caller stops half way
    /// ([`crate::finish`]).
    pub async fn stage_transfer(&self, event: &TransferCompleted) -> Result<Announcement> {
        let envelope = outbox::event(types::LEDGER_TRANSFER_COMPLETED, event);
        self.outbox.stage(&envelope).await?;
        Ok(Announcement {
            envelope,
            staging: None,
        })
    }

    /// After the batch: published if it applied, discarded if not (in the background; the
    /// relay finishes what this does not).
    pub fn settle(&self, announcement: Announcement, applied: bool) {
        if applied {
            self.outbox.publish_soon(announcement.envelope);
        } else {
            let outbox = self.outbox.clone();
            tokio::spawn(async move {
                if let Err(e) = outbox.discard(&announcement.envelope).await {
                    tracing::warn!(error = %e, "could not discard an announcement; the relay will");
                }
            });
        }
    }
}

/// The relay's question about a balance change, answered from the account's partition.
pub struct VersionConfirm {
    /// The ledger's store.
    pub store: SharedStore,
}

/// The relay's question about any staged event of the ledger: balance changes to
/// [`VersionConfirm`], transfers to [`crate::finish::TransferConfirm`].
pub struct LedgerConfirm {
    /// Balance changes.
    pub versions: VersionConfirm,
    /// Transfers.
    pub transfers: crate::finish::TransferConfirm,
}

#[async_trait]
impl Confirm for LedgerConfirm {
    async fn confirm(&self, envelope: &Envelope) -> Result<Verdict> {
        match envelope.r#type.as_str() {
            types::LEDGER_TRANSFER_COMPLETED => self.transfers.confirm(envelope).await,
            _ => self.versions.confirm(envelope).await,
        }
    }
}

#[async_trait]
impl Confirm for VersionConfirm {
    async fn confirm(&self, envelope: &Envelope) -> Result<Verdict> {
        let event = AccountBalanceChanged::decode(envelope.payload.as_slice())
            .map_err(|e| Error::internal(format!("staged announcement: {e}")))?;
        let recorded = self
            .store
            .get(
                "account_entries",
                &entry_key(&event.account_id, &version_entry(event.version)),
            )
            .await?;
        if let Some(row) = recorded {
            return Ok(match row.text("event_id")? == envelope.event_id {
                true => Verdict::Publish,
                false => Verdict::Discard,
            });
        }
        let balance = self
            .store
            .get("account_entries", &entry_key(&event.account_id, BALANCE))
            .await?;
        let version = match balance {
            Some(row) => row.i64("version")?,
            None => 0,
        };
        // The version row is written with the compare-and-set: past `v` without it, this
        // change lost; not yet at `v`, it may still be in flight.
        Ok(match version >= event.version {
            true => Verdict::Discard,
            false => Verdict::Wait,
        })
    }
}
