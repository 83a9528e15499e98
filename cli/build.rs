//! Writes `services.rs`: the bank's `SERVICES`, one per dependency of this crate that lives
//! under `services/`, so that a new service is registered by its line in Cargo.toml alone.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    println!("cargo:rerun-if-changed={}", manifest.display());
    let text = std::fs::read_to_string(&manifest)?;
    let mut crates: Vec<String> = text
        .lines()
        .filter(|line| line.contains("path = \"../services/"))
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.replace('-', "_"))
        .collect();
    crates.sort();
    let entries: String = crates
        .iter()
        .map(|c| format!("    {c}::SERVICE,\n"))
        .collect();
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("services.rs");
    std::fs::write(
        out,
        format!(
            "/// Every service of the bank, from this crate's dependencies under services/.\npub const SERVICES: &[ServiceDefinition] = &[\n{entries}];\n"
        ),
    )?;
    Ok(())
}
