//! gRPC handlers of push.

use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::push::v1::push_server::Push;
use sterling_proto::push::v1::{
    Device, ListDevicesRequest, ListDevicesResponse, RegisterDeviceRequest, UnregisterDeviceRequest,
};
use sterling_template::Error;
use sterling_template::client::GrpcChannel;
use sterling_template::error::{required, required_max};
use tonic::{Request, Response, Status};

use crate::notify::{DeviceRecord, Notifier};

/// The push gRPC service.
pub struct PushHandlers {
    /// Devices and notifications.
    pub notifier: Notifier,
    /// The ledger, to refuse a device on an account it does not hold.
    pub ledger: LedgerClient<GrpcChannel>,
}

fn to_message(d: DeviceRecord) -> Device {
    Device {
        account_id: d.account_id,
        device_token: d.device_token,
        platform: d.platform,
        registered_at_ms: d.registered_at_ms,
    }
}

/// A device token as the platforms give them: 1 to 512 URL-safe characters, or
/// `bad_request.device_token`.
fn device_token(token: &str) -> Result<&str, Status> {
    let token = required_max("device_token", token, 512)?;
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::bad_request("device_token", "device_token must be URL-safe").into());
    }
    Ok(token)
}

#[tonic::async_trait]
impl Push for PushHandlers {
    async fn register_device(
        &self,
        request: Request<RegisterDeviceRequest>,
    ) -> Result<Response<Device>, Status> {
        let r = request.into_inner();
        let platform = match r.platform.as_str() {
            "ios" | "android" => r.platform.as_str(),
            _ => {
                return Err(
                    Error::bad_request("platform", "platform must be ios or android").into(),
                );
            }
        };
        let device_token = device_token(&r.device_token)?;
        let account_id = required("account_id", &r.account_id)?;
        ledger::client::customer_account(&self.ledger, account_id).await?;
        let device = self
            .notifier
            .register(account_id, device_token, platform)
            .await?;
        Ok(Response::new(to_message(device)))
    }

    async fn list_devices(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        let r = request.into_inner();
        let devices = self
            .notifier
            .devices(required("account_id", &r.account_id)?)
            .await?;
        Ok(Response::new(ListDevicesResponse {
            devices: devices.into_iter().map(to_message).collect(),
        }))
    }

    async fn unregister_device(
        &self,
        request: Request<UnregisterDeviceRequest>,
    ) -> Result<Response<Device>, Status> {
        let r = request.into_inner();
        self.notifier
            .unregister(
                required("account_id", &r.account_id)?,
                device_token(&r.device_token)?,
            )
            .await?;
        Ok(Response::new(Device {
            account_id: r.account_id,
            device_token: r.device_token,
            ..Device::default()
        }))
    }
}
