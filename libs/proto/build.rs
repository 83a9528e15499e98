//! Compiles proto/ with protox (pure Rust, no system protoc) and generates prost + tonic code.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    // Every contract under proto/: a new service's proto is found, not registered.
    let mut paths = Vec::new();
    collect_protos(&root, &mut paths)?;
    paths.sort();
    println!("cargo:rerun-if-changed={}", root.display());
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let descriptors = protox::compile(&paths, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sterling_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    std::fs::write(out_dir.join("packages.rs"), modules(&descriptors))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

fn collect_protos(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

/// `pub mod cards { pub mod v1 { include_proto!("sterling.cards.v1"); } }` for every package
/// `sterling.<name>.<version>`, so a new contract needs no registration here.
fn modules(descriptors: &prost_types::FileDescriptorSet) -> String {
    // Package -> version -> the gRPC services declared in it.
    let mut packages: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, Vec<String>>,
    > = Default::default();
    for file in &descriptors.file {
        let package = file.package();
        let parts: Vec<&str> = package.split('.').collect();
        if let ["sterling", name, version] = parts.as_slice() {
            let services = packages
                .entry(name.to_string())
                .or_default()
                .entry(version.to_string())
                .or_default();
            services.extend(file.service.iter().map(|s| s.name().to_string()));
        }
    }
    let mut out = String::new();
    for (name, versions) in packages {
        out.push_str(&format!(
            "/// Package `sterling.{name}`.\npub mod {name} {{\n"
        ));
        for (version, services) in versions {
            out.push_str(&format!(
                "    /// Version `{version}`.\n    pub mod {version} {{\n        tonic::include_proto!(\"sterling.{name}.{version}\");\n"
            ));
            for service in services {
                out.push_str(&format!(
                    "        /// The discovery name of `sterling.{name}.{version}.{service}`: its name in kebab case.\n        pub const {}_SERVICE: &str = \"{}\";\n",
                    snake(&service).to_ascii_uppercase(),
                    snake(&service).replace('_', "-"),
                ));
            }
            out.push_str("    }\n");
        }
        out.push_str("}\n");
    }
    out
}

/// `CardProcessing` -> `card_processing`.
fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
