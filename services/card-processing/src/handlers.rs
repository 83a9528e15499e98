//! gRPC handlers of card-processing.

use sterling_proto::cardprocessing::v1::card_processing_server::CardProcessing;
use sterling_proto::cardprocessing::v1::{
    AuthoriseRequest, AuthoriseResponse, Decision as DecisionMessage, GetAuthorisationRequest,
    GetPaymentRequest, MessageKind, Payment, PaymentMessage as PaymentMessageProto,
    PaymentMessageResult,
};
use sterling_template::error::required;
use sterling_template::{Error, money};
use tonic::{Request, Response, Status};

use crate::decide::{Authorisation, Decider};
use crate::payments::{PaymentMessage, Payments};
use crate::store::Decision;

/// The card-processing gRPC service.
pub struct CardProcessingHandlers {
    /// The decision maker.
    pub decider: Decider,
    /// The rest of a payment's life.
    pub payments: Payments,
}

/// A payment message from the contract, validated for its shape.
fn payment_message(r: PaymentMessageProto) -> Result<PaymentMessage, Status> {
    let kind = match MessageKind::try_from(r.kind) {
        Ok(MessageKind::Unspecified) | Err(_) => {
            return Err(Error::bad_request("kind", "unknown message kind").into());
        }
        // Expiries are card-processing's own, never sent.
        Ok(MessageKind::Expiry) => {
            return Err(Error::bad_request("kind", "expiries are not sent, they happen").into());
        }
        Ok(kind) => kind,
    };
    let amount = match r.amount.as_ref() {
        Some(m) if m.minor_units != 0 || kind != MessageKind::Reversal => {
            Some(money::from_proto("amount", Some(m))?)
        }
        _ => None,
    };
    let merchant = r.merchant.unwrap_or_default();
    let bounded = |field: &str, value: String, max: usize| -> Result<String, Status> {
        if value.len() > max {
            return Err(
                Error::bad_request(field, format!("{field} is longer than {max} bytes")).into(),
            );
        }
        Ok(value)
    };
    Ok(PaymentMessage {
        message_id: bounded(
            "message_id",
            required("message_id", &r.message_id)?.to_string(),
            128,
        )?,
        kind,
        authorisation_id: bounded(
            "processor_authorisation_id",
            r.processor_authorisation_id,
            128,
        )?,
        card_token: bounded("card_token", r.card_token, 128)?,
        amount,
        last: r.r#final,
        merchant_descriptor: bounded("merchant.descriptor", merchant.descriptor, 256)?,
        mcc: bounded("merchant.mcc", merchant.mcc, 4)?,
    })
}

fn to_message(d: Decision) -> AuthoriseResponse {
    AuthoriseResponse {
        processor_authorisation_id: d.processor_authorisation_id,
        decision: if d.approved {
            DecisionMessage::Approved
        } else {
            DecisionMessage::Declined
        } as i32,
        reason: d.reason,
        held_amount: (!d.held_currency.is_empty()).then_some(sterling_proto::common::v1::Money {
            minor_units: d.held_amount,
            currency: d.held_currency,
        }),
        transaction_id: d.transaction_id,
        account_id: d.account_id,
        reversed: d.reversed,
    }
}

#[tonic::async_trait]
impl CardProcessing for CardProcessingHandlers {
    async fn authorise(
        &self,
        request: Request<AuthoriseRequest>,
    ) -> Result<Response<AuthoriseResponse>, Status> {
        let r = request.into_inner();
        let merchant = r.merchant.unwrap_or_default();
        let amount = money::from_proto("amount", r.amount.as_ref())?;
        Authorisation::check_amount(amount)?;
        let authorisation = Authorisation {
            processor_authorisation_id: required(
                "processor_authorisation_id",
                &r.processor_authorisation_id,
            )?
            .to_string(),
            card_token: required("card_token", &r.card_token)?.to_string(),
            amount,
            merchant_descriptor: merchant.descriptor,
            mcc: merchant.mcc,
            merchant_country: merchant.country,
            merchant_city: merchant.city,
        };
        let decision = self.decider.authorise(&authorisation).await?;
        Ok(Response::new(to_message(decision)))
    }

    async fn apply_payment_message(
        &self,
        request: Request<PaymentMessageProto>,
    ) -> Result<Response<PaymentMessageResult>, Status> {
        let message = payment_message(request.into_inner())?;
        Ok(Response::new(self.payments.apply(&message).await?))
    }

    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<Payment>, Status> {
        let id = request.into_inner().payment_id;
        let payment = self.payments.payment(required("payment_id", &id)?).await?;
        Ok(Response::new(payment))
    }

    async fn get_authorisation(
        &self,
        request: Request<GetAuthorisationRequest>,
    ) -> Result<Response<AuthoriseResponse>, Status> {
        let id = request.into_inner().processor_authorisation_id;
        let id = required("processor_authorisation_id", &id)?;
        let decision = self.decider.store.decision(id).await?.ok_or_else(|| {
            Error::precondition_failed(
                "authorisation_in_progress",
                "authorisation is being decided",
            )
        })?;
        Ok(Response::new(to_message(decision)))
    }
}
