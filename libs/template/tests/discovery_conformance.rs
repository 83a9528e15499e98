//! The discovery conformance suite on the embedded backend and on NATS KV.

use std::time::Duration;

use sterling_template::discovery::EmbeddedDiscovery;
use sterling_template::discovery::conformance;
use sterling_template::discovery::nats::NatsDiscovery;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_discovery_passes_the_conformance_suite() {
    conformance::run_all(&EmbeddedDiscovery::new(), "t.").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: make test-engines"]
async fn nats_discovery_passes_the_conformance_suite() {
    let url = std::env::var("STERLING_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let namespace = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
    let discovery = NatsDiscovery::connect(&url, &namespace, Duration::from_secs(2))
        .await
        .expect("NATS is up (deploy/local/nats.sh up)");
    conformance::run_all(&discovery, "").await;
    let jetstream = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let bucket = sterling_template::discovery::nats::bucket_of(&namespace);
    jetstream.delete_key_value(&bucket).await.unwrap();
}
