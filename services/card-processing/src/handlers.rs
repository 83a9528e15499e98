//! gRPC handlers of card-processing.

use sterling_proto::cardprocessing::v1::card_processing_server::CardProcessing;
use sterling_proto::cardprocessing::v1::{
    AuthoriseRequest, AuthoriseResponse, Decision as DecisionMessage, GetAuthorisationRequest,
};
use sterling_template::error::required;
use sterling_template::{Error, money};
use tonic::{Request, Response, Status};

use crate::decide::{Authorisation, Decider};
use crate::store::Decision;

/// The card-processing gRPC service.
pub struct CardProcessingHandlers {
    /// The decision maker.
    pub decider: Decider,
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
