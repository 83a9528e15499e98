//! `sterling new service NAME`: a new service that compiles, starts with the bank and passes
//! its generated test. It writes the contract under `proto/`, the crate under `services/`
//! (the same file names as every service: `lib.rs`, `main.rs`, `handlers.rs`, `store.rs`,
//! `migrations/`, `tests/`) and its one registration, a line in `cli/Cargo.toml`.

use std::path::{Path, PathBuf};

/// The names a service goes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNames {
    /// Service and crate name, e.g. `loyalty-points`.
    pub name: String,
    /// Rust identifier, e.g. `loyalty_points`.
    pub ident: String,
    /// Protobuf package segment, e.g. `loyaltypoints` (`sterling.loyaltypoints.v1`).
    pub package: String,
    /// gRPC service name, e.g. `LoyaltyPoints`.
    pub camel: String,
}

impl ServiceNames {
    /// The names of `name`: lower-case letters, digits and single hyphens, starting with a
    /// letter, 2 to 32 characters.
    pub fn parse(name: &str) -> anyhow::Result<ServiceNames> {
        let valid = (2..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && !name.contains("--")
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            anyhow::bail!(
                "{name:?} is not a service name: use 2 to 32 of a-z, 0-9 and single hyphens, \
                 starting with a letter (e.g. loyalty-points)"
            );
        }
        let camel = name
            .split('-')
            .map(|part| {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect();
        Ok(ServiceNames {
            name: name.to_string(),
            ident: name.replace('-', "_"),
            package: name.replace('-', ""),
            camel,
        })
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("__NAME__", &self.name)
            .replace("__UPPER__", &self.ident.to_ascii_uppercase())
            .replace("__IDENT__", &self.ident)
            .replace("__SNAKE__", &self.ident)
            .replace("__PKG__", &self.package)
            .replace("__CAMEL__", &self.camel)
    }
}

/// The files of a new service, relative to the repository root, with their text.
pub fn files(names: &ServiceNames) -> Vec<(PathBuf, String)> {
    let crate_dir = PathBuf::from("services").join(&names.name);
    let templates: [(PathBuf, &str); 8] = [
        (
            PathBuf::from(format!("proto/sterling/{0}/v1/{0}.proto", names.package)),
            include_str!("scaffold/proto.txt"),
        ),
        (
            crate_dir.join("Cargo.toml"),
            include_str!("scaffold/cargo.txt"),
        ),
        (
            crate_dir.join("src/main.rs"),
            include_str!("scaffold/main.txt"),
        ),
        (
            crate_dir.join("src/lib.rs"),
            include_str!("scaffold/lib.txt"),
        ),
        (
            crate_dir.join("src/handlers.rs"),
            include_str!("scaffold/handlers.txt"),
        ),
        (
            crate_dir.join("src/store.rs"),
            include_str!("scaffold/store.txt"),
        ),
        (
            crate_dir.join("migrations/0001_items.cql"),
            include_str!("scaffold/cql.txt"),
        ),
        (
            crate_dir.join(format!("tests/{}.rs", names.ident)),
            include_str!("scaffold/test.txt"),
        ),
    ];
    templates
        .into_iter()
        .map(|(path, text)| (path, names.fill(text)))
        .collect()
}

/// Writes a new service into the repository at `root` and registers it; returns the paths
/// written. Refuses a name already taken, changing nothing.
pub fn new_service(root: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    let names = ServiceNames::parse(name)?;
    let manifest = root.join("cli/Cargo.toml");
    let registry = std::fs::read_to_string(&manifest).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (run this at the root of a Sterling checkout, or pass --root)",
            manifest.display()
        )
    })?;
    let files = files(&names);
    for (path, _) in &files {
        if root.join(path).exists() {
            anyhow::bail!(
                "{} already exists: the name {name} is taken",
                path.display()
            );
        }
    }
    let mut written = Vec::new();
    for (path, text) in files {
        let full = root.join(&path);
        if let Some(dir) = full.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&full, text)?;
        written.push(path);
    }
    // Laid out as `cargo fmt` would, whatever the name's length (skipped without rustfmt).
    let sources: Vec<PathBuf> = written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| root.join(p))
        .collect();
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .args(&sources)
        .status();
    let line = format!("{0} = {{ path = \"../services/{0}\" }}\n", names.name);
    let registered = registry.replacen(
        "\n[dev-dependencies]",
        &format!("\n{line}\n[dev-dependencies]"),
        1,
    );
    let registered = registered.replacen(&format!("\n\n{line}"), &format!("\n{line}"), 1);
    // Used by generated code only: the unused-dependency lint is told.
    let registered = registered.replacen(
        "ignored = [",
        &format!("ignored = [\"{}\", ", names.name),
        1,
    );
    std::fs::write(&manifest, registered)?;
    written.push(PathBuf::from("cli/Cargo.toml"));
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let names = ServiceNames::parse("loyalty-points").unwrap();
        assert_eq!(names.ident, "loyalty_points");
        assert_eq!(names.package, "loyaltypoints");
        assert_eq!(names.camel, "LoyaltyPoints");
        for bad in [
            "", "x", "Loyalty", "1st", "a_b", "a--b", "a-", "a b", "émoji",
        ] {
            assert!(ServiceNames::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_placeholder_is_left() {
        let names = ServiceNames::parse("loyalty-points").unwrap();
        for (path, text) in files(&names) {
            assert!(
                !text.contains("__"),
                "{} keeps a placeholder",
                path.display()
            );
        }
    }
}
