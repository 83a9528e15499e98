//! The expiry job: an approved authorisation not cleared within the expiry time releases what
//! it still holds. It reads `expiring_authorisations` minute by minute from a watermark and
//! applies an expiry message (`expiry:<authorisation id>`) to each one due that still holds
//! something. It is safe on every instance at once: the message is applied at most once by
//! its id, whoever gets there first, and a clearing that comes later still posts.

use std::time::Duration;

use sterling_proto::cardprocessing::v1::MessageKind;
use sterling_storage::now_millis;
use sterling_template::Result;

use crate::payment_store::EXPIRY_BUCKET_MS;
use crate::payments::{PaymentMessage, Payments};
use crate::store::State;

/// The expiry job of one instance.
pub struct ExpiryJob {
    payments: Payments,
    interval: Duration,
}

/// The message id of an authorisation's expiry.
pub fn expiry_message_id(authorisation_id: &str) -> String {
    format!("expiry:{authorisation_id}")
}

impl ExpiryJob {
    /// A job over `payments`, passing every `interval`.
    pub fn new(payments: Payments, interval: Duration) -> Self {
        ExpiryJob { payments, interval }
    }

    /// One pass over the buckets due; returns how many authorisations it expired.
    pub async fn expire_once(&self) -> Result<usize> {
        let store = &self.payments.store;
        let now = now_millis();
        let current = now.div_euclid(EXPIRY_BUCKET_MS);
        let watermark = match store.expiry_watermark().await? {
            Some(w) => w,
            // Nothing was written to expire before the first pass of any instance... except
            // by a claim just before it: start a bucket early.
            None => current - 1,
        };
        let mut expired = 0;
        let mut contiguous = true;
        let mut next = watermark;
        for bucket in watermark..=current {
            let mut all_done = (bucket + 1) * EXPIRY_BUCKET_MS <= now;
            for (id, expires_at) in store.expiring_in(bucket).await? {
                if expires_at > now {
                    all_done = false;
                    continue;
                }
                match self.expire(&id).await {
                    Ok(true) => expired += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(processor_authorisation_id = %id, error = %e, "cannot expire the authorisation yet");
                        all_done = false;
                    }
                }
            }
            if contiguous && all_done {
                next = bucket + 1;
            } else {
                contiguous = false;
            }
        }
        if next != watermark {
            store.save_expiry_watermark(next).await?;
        }
        Ok(expired)
    }

    /// Expires one authorisation if it was approved and still holds something.
    async fn expire(&self, id: &str) -> Result<bool> {
        let Some(record) = self.payments.decider.store.record(id).await? else {
            return Ok(false);
        };
        let State::Decided(decision) = &record.state else {
            // Still being decided a week on: the sweeper's business.
            return Ok(false);
        };
        if !decision.approved {
            return Ok(false);
        }
        if let Some(payment) = self.payments.store.payment(id).await?
            && payment.held == 0
        {
            return Ok(false);
        }
        let result = self
            .payments
            .apply(&PaymentMessage {
                message_id: expiry_message_id(id),
                kind: MessageKind::Expiry,
                authorisation_id: id.to_string(),
                card_token: String::new(),
                amount: None,
                last: false,
                merchant_descriptor: String::new(),
                mcc: String::new(),
            })
            .await?;
        let released = result.released.map_or(0, |m| m.minor_units);
        tracing::info!(processor_authorisation_id = %id, released, "authorisation expired");
        Ok(released > 0)
    }

    /// Passes every interval until `stopping` fires.
    pub async fn run(self, stopping: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = tick.tick() => {}
            }
            let pass = std::panic::AssertUnwindSafe(self.expire_once());
            match futures::FutureExt::catch_unwind(pass).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "expiry pass failed"),
                Err(_) => tracing::error!("expiry pass panicked"),
            }
        }
    }
}
