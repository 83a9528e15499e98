//! The bus conformance suite on NATS JetStream. Needs a server: `deploy/local/nats.sh up`
//! (what `make test-engines` does); `STERLING_NATS_URL` says where (default
//! nats://127.0.0.1:4222). Run with `--ignored`.

use sterling_bus::conformance;
use sterling_bus::nats::{NatsBus, NatsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: make test-engines"]
async fn nats_bus_passes_the_conformance_suite() {
    let url = std::env::var("STERLING_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let namespace = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
    let bus = NatsBus::connect(NatsConfig::for_namespace(&url, &namespace))
        .await
        .expect("NATS is up (deploy/local/nats.sh up)");
    conformance::run_all(&bus, "").await;
    bus.delete_stream().await.unwrap();
}
