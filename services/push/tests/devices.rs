//! push's device registry through its gRPC API on the embedded engines: registering is
//! idempotent on the token, unregistering too, and bad input names the field.

use std::time::Duration;

use sterling_proto::push::v1::push_client::PushClient;
use sterling_proto::push::v1::{
    ListDevicesRequest, RegisterDeviceRequest, UnregisterDeviceRequest,
};
use sterling_template::client::GrpcChannel;
use sterling_template::platform::{self, Platform, PlatformConfig};

fn code(status: tonic::Status) -> String {
    sterling_template::Error::from(status).code().to_string()
}

fn device(account: &str, token: &str, platform: &str) -> RegisterDeviceRequest {
    RegisterDeviceRequest {
        account_id: account.into(),
        device_token: token.into(),
        platform: platform.into(),
    }
}

#[tokio::test]
async fn devices_are_registered_once_and_unregistered_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.path().to_path_buf();
    let platform = Platform::embedded(config).unwrap();
    let _ledger = ledger::testing::start_with_customers(&platform, &[("acc-1", "GBP")])
        .await
        .unwrap();
    let running = platform::start(&push::SERVICE, &platform, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let channel = GrpcChannel::connect(platform.discovery.clone(), "push", Duration::from_secs(2))
        .await
        .unwrap()
        .calling_as(&platform.identity, sterling_template::OPERATOR);
    let mut push = PushClient::new(channel);
    let list = |account: &str| ListDevicesRequest {
        account_id: account.into(),
    };

    for _ in 0..2 {
        push.register_device(device("acc-1", "phone-1", "ios"))
            .await
            .unwrap();
    }
    push.register_device(device("acc-1", "phone-2", "android"))
        .await
        .unwrap();
    let devices = push
        .list_devices(list("acc-1"))
        .await
        .unwrap()
        .into_inner()
        .devices;
    let mut tokens: Vec<String> = devices.iter().map(|d| d.device_token.clone()).collect();
    tokens.sort();
    assert_eq!(tokens, ["phone-1", "phone-2"]);
    assert!(
        push.list_devices(list("acc-2"))
            .await
            .unwrap()
            .into_inner()
            .devices
            .is_empty()
    );

    for (request, expected) in [
        (
            device("acc-1", "phone-3", "windows"),
            "bad_request.platform",
        ),
        (device("acc-1", "a/b?c", "ios"), "bad_request.device_token"),
        (device("", "phone-3", "ios"), "bad_request.account_id"),
    ] {
        assert_eq!(
            code(push.register_device(request).await.unwrap_err()),
            expected
        );
    }

    let gone = UnregisterDeviceRequest {
        account_id: "acc-1".into(),
        device_token: "phone-1".into(),
    };
    push.unregister_device(gone.clone()).await.unwrap();
    let again = push.unregister_device(gone).await;
    assert!(
        again.as_ref().is_ok()
            || again
                .as_ref()
                .is_err_and(|s| code(s.clone()) == "not_found.device"),
        "a repeat reports what happened: {again:?}"
    );
    let devices = push
        .list_devices(list("acc-1"))
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device_token, "phone-2");
    // No device on an account the ledger does not hold.
    let nowhere = push
        .register_device(device("acc-none", "phone-9", "ios"))
        .await
        .unwrap_err();
    assert_eq!(
        sterling_template::Error::from(nowhere).code(),
        "not_found.account"
    );
    running.stop().await;
}
