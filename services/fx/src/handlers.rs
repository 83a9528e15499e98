//! gRPC handlers of fx.

use sterling_proto::fx::v1::fx_server::Fx;
use sterling_proto::fx::v1::{ConvertRequest, ConvertResponse};
use sterling_template::money;
use tonic::{Request, Response, Status};

use crate::rates::{ROUNDING, RateTable};

/// The fx gRPC service.
pub struct FxHandlers {
    /// Rates in force.
    pub rates: RateTable,
}

#[tonic::async_trait]
impl Fx for FxHandlers {
    async fn convert(
        &self,
        request: Request<ConvertRequest>,
    ) -> Result<Response<ConvertResponse>, Status> {
        let request = request.into_inner();
        let amount = money::from_proto("amount", request.amount.as_ref())?;
        let to = money::currency("to_currency", &request.to_currency)?;
        let conversion = self.rates.convert(amount, to)?;
        Ok(Response::new(ConvertResponse {
            converted: Some(money::to_proto(conversion.converted)),
            rate: conversion.rate.to_string(),
            rounding: ROUNDING.to_string(),
        }))
    }
}
