//! The variables the platform reads, and the reader that turns each into a typed value or an
//! error naming it.

use std::str::FromStr;
use std::time::Duration;

use super::ConfigError;

/// Every platform variable: name, default, what it does. `sterling config` prints this table
/// with the values in effect.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "STERLING_DATA_DIR",
        "data",
        "where embedded stores and endpoints.json live",
    ),
    (
        "STERLING_DURABILITY",
        "full",
        "full fsyncs every commit; normal survives a process crash only",
    ),
    (
        "STERLING_CALL_TIMEOUT_MS",
        "2000",
        "deadline of a call made outside any request; the most one call may take within one",
    ),
    (
        "STERLING_REGISTRATION_TTL_MS",
        "10000",
        "discovery TTL, renewed every third of it",
    ),
    (
        "STERLING_DRAIN_TIMEOUT_MS",
        "10000",
        "bound on draining in-flight requests at shutdown",
    ),
    (
        "STERLING_SHUTDOWN_GRACE_MS",
        "2000",
        "NOT_SERVING is held this long before the listener closes",
    ),
    ("STERLING_ZONE", "", "this instance's zone"),
    (
        "STERLING_HEALTH_INTERVAL_MS",
        "5000",
        "how often in-band health checks run",
    ),
    (
        "STERLING_MAX_IN_FLIGHT",
        "512",
        "requests a service serves at once before shedding load",
    ),
    (
        "STERLING_CONSUMER_NICE",
        "0",
        "steps of nice (0 to 19) the threads event consumers run on are below those serving calls; 0 runs them alongside",
    ),
    (
        "STERLING_NAMESPACE",
        "sterling",
        "names keyspaces, the event stream and the discovery bucket",
    ),
    ("STERLING_STORAGE", "embedded", "embedded or cassandra"),
    (
        "STERLING_CASSANDRA_NODES",
        "127.0.0.1:9042",
        "contact points, comma separated",
    ),
    (
        "STERLING_CASSANDRA_REPLICATION",
        "SimpleStrategy, RF 1",
        "keyspace replication as CQL",
    ),
    (
        "STERLING_CASSANDRA_CONSISTENCY",
        "local_quorum",
        "consistency of reads and writes",
    ),
    (
        "STERLING_NATS_URL",
        "nats://127.0.0.1:4222",
        "NATS server of the bus and discovery",
    ),
    (
        "STERLING_NATS_REPLICAS",
        "1",
        "JetStream stream replicas (3 in production)",
    ),
    (
        "STERLING_DISCOVERY",
        "file:<data>/endpoints.json",
        "nats, embedded, static:name=host:port,... or file:PATH",
    ),
    ("STERLING_BUS", "embedded", "nats, or embedded[:PATH]"),
    (
        "STERLING_LISTEN",
        "127.0.0.1:0",
        "address a service run on its own listens on",
    ),
    (
        "STERLING_ADVERTISE_HOST",
        "",
        "host registered in discovery with the bound port (a container's name, a pod's IP); unset, the listen address",
    ),
    (
        "STERLING_SERVICE",
        "",
        "the service `sterling serve` runs when none is named (set in each service's image)",
    ),
    (
        "STERLING_METRICS_ADDR",
        "",
        "serve Prometheus /metrics here",
    ),
    (
        "STERLING_IDENTITY_KEY_FILE",
        "<data>/identity.key",
        "the identity authority's key (development: created on first start)",
    ),
    (
        "STERLING_IDENTITY_PUBLIC_KEY",
        "",
        "the authority's public key (hex); set, this process cannot sign identities",
    ),
    (
        "STERLING_IDENTITY_TOKEN",
        "",
        "this process's identity token, from `sterling identity mint`",
    ),
    ("STERLING_LOG", "info", "log filter"),
    ("STERLING_LOG_FORMAT", "json", "json or pretty"),
];

/// Consistency levels `STERLING_CASSANDRA_CONSISTENCY` accepts.
pub(super) const CONSISTENCIES: &[&str] = &[
    "one",
    "local_one",
    "quorum",
    "local_quorum",
    "all",
    "each_quorum",
];

/// Reads variables by name; the environment in production, a map in tests.
pub(super) struct Vars<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }

    pub(super) fn text(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_string())
    }

    pub(super) fn parsed<T: FromStr>(
        &self,
        name: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse()
                .map_err(|_| error(name, &value, expected)),
        }
    }

    pub(super) fn millis(&self, name: &str, default: u64) -> Result<Duration, ConfigError> {
        self.parsed(name, default, "a whole number of milliseconds")
            .map(Duration::from_millis)
    }

    pub(super) fn choice<T: Copy>(
        &self,
        name: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(value) = self.get(name) else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|(text, _)| *text == value)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                error(name, &value, &format!("one of {}", names.join(", ")))
            })
    }
}

pub(super) fn error(variable: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError {
        variable: variable.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// Variables named like Sterling's that no one reads, with the known name each is one or two
/// typos away from (`STERLING_STORGE` → `STERLING_STORAGE`). `known` adds the settings of the
/// services in this process.
pub fn misspelt_variables(names: &[String], known: &[String]) -> Vec<(String, String)> {
    let mut all: Vec<&str> = VARIABLES.iter().map(|(n, _, _)| *n).collect();
    all.extend(known.iter().map(String::as_str));
    names
        .iter()
        .filter(|n| n.starts_with("STERLING_") && !all.contains(&n.as_str()))
        .filter_map(|n| {
            all.iter()
                .find(|k| strsim::damerau_levenshtein(n, k) <= 2)
                .map(|k| (n.clone(), k.to_string()))
        })
        .collect()
}
