//! Parsers of the variables that hold more than a number or a choice: namespace, limits, log
//! filter, Cassandra, NATS, discovery and bus.

use std::path::{Path, PathBuf};

use sterling_storage::cassandra::CassandraConfig;

use super::variables::{CONSISTENCIES, Vars, error};
use super::{BusSpec, ConfigError, DiscoverySpec, IdentitySpec};

/// `STERLING_NAMESPACE`: it names keyspaces, so 1 to 32 of a-z, 0-9 and `_`.
pub(super) fn namespace(vars: &Vars) -> Result<String, ConfigError> {
    let namespace = vars.text("STERLING_NAMESPACE", "sterling");
    let valid = !namespace.is_empty()
        && namespace.len() <= 32
        && namespace.starts_with(|c: char| c.is_ascii_lowercase())
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(namespace)
    } else {
        Err(error(
            "STERLING_NAMESPACE",
            &namespace,
            "1 to 32 of a-z, 0-9 and _, starting with a letter",
        ))
    }
}

/// `STERLING_MAX_IN_FLIGHT`, above 0.
pub(super) fn max_in_flight(vars: &Vars) -> Result<usize, ConfigError> {
    let expected = "a whole number above 0";
    match vars.parsed("STERLING_MAX_IN_FLIGHT", 512usize, expected)? {
        0 => Err(error("STERLING_MAX_IN_FLIGHT", "0", expected)),
        n => Ok(n),
    }
}

/// `STERLING_CONSUMER_NICE`, 0 to 19 (a thread may lower its own priority, never raise it).
pub(super) fn consumer_nice(vars: &Vars) -> Result<i32, ConfigError> {
    let expected = "a whole number from 0 to 19";
    match vars.parsed("STERLING_CONSUMER_NICE", 0i32, expected)? {
        n @ 0..=19 => Ok(n),
        n => Err(error("STERLING_CONSUMER_NICE", &n.to_string(), expected)),
    }
}

/// `STERLING_NATS_REPLICAS`: JetStream accepts an odd number up to 5.
pub(super) fn nats_replicas(vars: &Vars) -> Result<usize, ConfigError> {
    let replicas = vars.parsed("STERLING_NATS_REPLICAS", 1usize, "1, 3 or 5")?;
    if [1, 3, 5].contains(&replicas) {
        Ok(replicas)
    } else {
        Err(error(
            "STERLING_NATS_REPLICAS",
            &replicas.to_string(),
            "1, 3 or 5",
        ))
    }
}

/// `STERLING_LOG`, checked as a `tracing` filter.
pub(super) fn log_filter(vars: &Vars) -> Result<String, ConfigError> {
    let filter = vars.text("STERLING_LOG", crate::telemetry::DEFAULT_FILTER);
    match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(_) => Ok(filter),
        Err(_) => Err(error(
            "STERLING_LOG",
            &filter,
            "a log filter such as info or cards=debug,info",
        )),
    }
}

pub(super) fn cassandra(vars: &Vars) -> Result<CassandraConfig, ConfigError> {
    let mut config = CassandraConfig::default();
    if let Some(nodes) = vars.get("STERLING_CASSANDRA_NODES") {
        let list: Vec<String> = nodes.split(',').map(|n| n.trim().to_string()).collect();
        if list.iter().any(|n| {
            n.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err(error(
                "STERLING_CASSANDRA_NODES",
                &nodes,
                "host:port[,host:port...]",
            ));
        }
        config.nodes = list;
    }
    if let Some(replication) = vars.get("STERLING_CASSANDRA_REPLICATION") {
        if !(replication.trim_start().starts_with('{') && replication.trim_end().ends_with('}')) {
            return Err(error(
                "STERLING_CASSANDRA_REPLICATION",
                &replication,
                "a CQL map such as {'class': 'NetworkTopologyStrategy', 'dc1': 3}",
            ));
        }
        config.replication = replication;
    }
    if let Some(level) = vars.get("STERLING_CASSANDRA_CONSISTENCY") {
        config.consistency =
            sterling_storage::cassandra::parse_consistency(&level).ok_or_else(|| {
                error(
                    "STERLING_CASSANDRA_CONSISTENCY",
                    &level,
                    &format!("one of {}", CONSISTENCIES.join(", ")),
                )
            })?;
    }
    Ok(config)
}

pub(super) fn nats_url(vars: &Vars) -> Result<String, ConfigError> {
    let url = vars.text("STERLING_NATS_URL", "nats://127.0.0.1:4222");
    let ok = ["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|s| url.starts_with(s))
        && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
    if ok {
        Ok(url)
    } else {
        Err(error(
            "STERLING_NATS_URL",
            &url,
            "a URL such as nats://127.0.0.1:4222",
        ))
    }
}

/// File in the data directory where a bank started by `sterling up` records whether its bus
/// and discovery are on NATS (`nats`) or in the process (`file`), so that a service or a tool
/// started later with the same data directory joins it without being told.
pub const DISCOVERY_FILE: &str = "discovery";

/// Whether the bank under `data_dir` runs its bus and discovery on NATS.
pub(super) fn bank_on_nats(data_dir: &Path) -> bool {
    std::fs::read_to_string(data_dir.join(DISCOVERY_FILE)).is_ok_and(|s| s.trim() == "nats")
}

/// `STERLING_DISCOVERY`; unset, the discovery of the bank under the data directory.
pub(super) fn discovery(vars: &Vars, data_dir: &Path) -> Result<DiscoverySpec, ConfigError> {
    let Some(spec) = vars.get("STERLING_DISCOVERY") else {
        if bank_on_nats(data_dir) {
            return Ok(DiscoverySpec::Nats);
        }
        return Ok(DiscoverySpec::File(data_dir.join("endpoints.json")));
    };
    let expected = "nats, embedded, static:name=host:port,... or file:PATH";
    match spec.as_str() {
        "nats" => Ok(DiscoverySpec::Nats),
        "embedded" => Ok(DiscoverySpec::Embedded),
        _ => {
            if let Some(list) = spec.strip_prefix("static:") {
                crate::discovery::StaticDiscovery::parse(list)
                    .map_err(|_| error("STERLING_DISCOVERY", &spec, expected))?;
                Ok(DiscoverySpec::Static(list.to_string()))
            } else if let Some(path) = spec.strip_prefix("file:").filter(|p| !p.is_empty()) {
                Ok(DiscoverySpec::File(PathBuf::from(path)))
            } else {
                Err(error("STERLING_DISCOVERY", &spec, expected))
            }
        }
    }
}

/// `STERLING_BUS`; unset, the bus of the bank under the data directory.
pub(super) fn bus(vars: &Vars, data_dir: &Path) -> Result<BusSpec, ConfigError> {
    let default = if bank_on_nats(data_dir) {
        "nats"
    } else {
        "embedded"
    };
    let spec = vars.text("STERLING_BUS", default);
    match spec.as_str() {
        "nats" => Ok(BusSpec::Nats),
        "embedded" => Ok(BusSpec::Embedded(data_dir.join("bus.sqlite"))),
        _ => match spec.strip_prefix("embedded:").filter(|p| !p.is_empty()) {
            Some(path) => Ok(BusSpec::Embedded(PathBuf::from(path))),
            None => Err(error(
                "STERLING_BUS",
                &spec,
                "nats, embedded or embedded:PATH",
            )),
        },
    }
}

/// `STERLING_IDENTITY_*`: the authority's key file, or its public key and this process's token.
pub(super) fn identity(vars: &Vars) -> Result<IdentitySpec, ConfigError> {
    let token = vars
        .get("STERLING_IDENTITY_TOKEN")
        .filter(|t| !t.is_empty());
    match vars
        .get("STERLING_IDENTITY_PUBLIC_KEY")
        .filter(|k| !k.is_empty())
    {
        Some(public_key) => {
            crate::identity::Identity::given(&public_key, token.as_deref()).map_err(|why| {
                error(
                    "STERLING_IDENTITY_PUBLIC_KEY",
                    &public_key,
                    &format!("the hex of a 32-byte Ed25519 public key ({why})"),
                )
            })?;
            Ok(IdentitySpec::Given { public_key, token })
        }
        None if token.is_some() => Err(error(
            "STERLING_IDENTITY_TOKEN",
            "***",
            "STERLING_IDENTITY_PUBLIC_KEY set beside it",
        )),
        None => Ok(vars
            .get("STERLING_IDENTITY_KEY_FILE")
            .filter(|p| !p.is_empty())
            .map_or(IdentitySpec::InDataDir, |p| {
                IdentitySpec::KeyFile(PathBuf::from(p))
            })),
    }
}

/// `STERLING_ADVERTISE_HOST`: a host name or IP address others reach this instance at.
pub(super) fn advertise_host(vars: &Vars) -> Result<Option<String>, ConfigError> {
    let Some(host) = vars
        .get("STERLING_ADVERTISE_HOST")
        .filter(|h| !h.is_empty())
    else {
        return Ok(None);
    };
    // One colon is a port; IPv6 addresses have at least two.
    let colons = host.matches(':').count();
    let valid = host.len() <= 253
        && colons != 1
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'));
    if valid {
        Ok(Some(host))
    } else {
        Err(error(
            "STERLING_ADVERTISE_HOST",
            &host,
            "a host name or IP address, without a port",
        ))
    }
}
