//! Compiles proto/ with protox (pure Rust, no system protoc) and generates prost + tonic code.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "sterling/common/v1/money.proto",
        "sterling/cards/v1/cards.proto",
        "sterling/fx/v1/fx.proto",
        "sterling/ledger/v1/ledger.proto",
        "sterling/transactions/v1/transactions.proto",
        "sterling/cardprocessing/v1/card_processing.proto",
        "sterling/events/v1/envelope.proto",
        "sterling/events/v1/card.proto",
        "sterling/testing/v1/probe.proto",
        "sterling/events/v1/transaction.proto",
        "sterling/merchant/v1/merchant.proto",
        "sterling/feed/v1/feed.proto",
        "sterling/push/v1/push.proto",
        "sterling/webhooks/v1/webhooks.proto",
    ];
    let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let descriptors = protox::compile(&paths, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sterling_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
