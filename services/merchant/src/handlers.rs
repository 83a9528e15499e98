//! gRPC handlers of merchant.

use std::sync::Arc;

use sterling_proto::events::v1::MerchantProfile;
use sterling_proto::merchant::v1::GetMerchantRequest;
use sterling_proto::merchant::v1::merchant_server::Merchant;
use tonic::{Request, Response, Status};

use crate::directory::Directory;

/// The merchant gRPC service.
pub struct MerchantHandlers {
    /// The directory.
    pub directory: Arc<Directory>,
}

#[tonic::async_trait]
impl Merchant for MerchantHandlers {
    async fn get_merchant(
        &self,
        request: Request<GetMerchantRequest>,
    ) -> Result<Response<MerchantProfile>, Status> {
        let r = request.into_inner();
        if r.descriptor.trim().is_empty() || r.descriptor.len() > 256 {
            return Err(sterling_template::Error::bad_request(
                "descriptor",
                "descriptor is required (at most 256 bytes)",
            )
            .into());
        }
        Ok(Response::new(self.directory.lookup(
            &r.descriptor,
            &r.mcc,
            &r.country,
            &r.city,
        )))
    }
}
