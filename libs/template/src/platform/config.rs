//! The process configuration: every `STERLING_*` variable parsed once into typed settings. A
//! value that is not one of those accepted, or a variable name one typo away from a known one,
//! stops the process at start with a message naming the variable and what it accepts.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sterling_storage::cassandra::CassandraConfig;
use sterling_storage::embedded::Durability;

/// A variable with a value the platform does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable, e.g. `STERLING_STORAGE`.
    pub variable: String,
    /// What it was set to.
    pub value: String,
    /// What it accepts, e.g. `one of embedded, cassandra`.
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?} is not valid: expected {}",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// Where services keep their data.
#[derive(Debug, Clone)]
pub enum StorageBackend {
    /// One SQLite file per service under the data directory.
    Embedded,
    /// One keyspace per service on Cassandra or ScyllaDB.
    Cassandra(CassandraConfig),
}

/// Where services find each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySpec {
    /// NATS KV, shared by every process of the deployment.
    Nats,
    /// In this process only.
    Embedded,
    /// A fixed list, `name=host:port,...`.
    Static(String),
    /// A JSON file the all-in-one bank writes (`file:PATH`).
    File(PathBuf),
}

/// The event bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusSpec {
    /// NATS JetStream.
    Nats,
    /// A SQLite file, shareable by processes on one machine.
    Embedded(PathBuf),
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (what log pipelines read).
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

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
        "deadline of a call made outside any request",
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
        "STERLING_METRICS_ADDR",
        "",
        "serve Prometheus /metrics here",
    ),
    ("STERLING_LOG", "info", "log filter"),
    ("STERLING_LOG_FORMAT", "json", "json or pretty"),
];

/// Consistency levels `STERLING_CASSANDRA_CONSISTENCY` accepts.
const CONSISTENCIES: &[&str] = &[
    "one",
    "local_one",
    "quorum",
    "local_quorum",
    "all",
    "each_quorum",
];

/// Platform-wide settings, parsed from `STERLING_*` variables (see [`VARIABLES`]).
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Where embedded stores keep their files.
    pub data_dir: PathBuf,
    /// fsync policy of embedded stores.
    pub durability: Durability,
    /// Timeout of a call made outside any request.
    pub call_timeout: Duration,
    /// How long a registration lives without a heartbeat.
    pub registration_ttl: Duration,
    /// Bound on draining in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// How long NOT_SERVING is announced before the listener closes at a signal.
    pub shutdown_grace: Duration,
    /// This instance's zone.
    pub zone: String,
    /// How often health checks run.
    pub health_interval: Duration,
    /// Requests a service handles at once before shedding load.
    pub max_in_flight: usize,
    /// Per-service settings, `STERLING_<SERVICE>_<NAME>`; entries here win over the environment.
    pub settings: HashMap<String, String>,
    /// Names keyspaces (`<namespace>_<service>`), the event stream and the discovery bucket.
    pub namespace: String,
    /// Where services keep their data.
    pub storage: StorageBackend,
    /// Cassandra settings, used when `storage` or the engines ask for Cassandra.
    pub cassandra: CassandraConfig,
    /// NATS server of the `nats` bus and discovery.
    pub nats_url: String,
    /// JetStream stream replicas.
    pub nats_replicas: usize,
    /// Discovery for a service run on its own.
    pub discovery: DiscoverySpec,
    /// The bus for a service run on its own.
    pub bus: BusSpec,
    /// Where a service run on its own listens.
    pub listen: SocketAddr,
    /// Where Prometheus `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Log filter (`tracing` env-filter syntax).
    pub log_filter: String,
    /// Log format.
    pub log_format: LogFormat,
}

/// Reads variables by name; the environment in production, a map in tests.
struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }

    fn text(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_string())
    }

    fn parsed<T: FromStr>(&self, name: &str, default: T, expected: &str) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse()
                .map_err(|_| error(name, &value, expected)),
        }
    }

    fn millis(&self, name: &str, default: u64) -> Result<Duration, ConfigError> {
        self.parsed(name, default, "a whole number of milliseconds")
            .map(Duration::from_millis)
    }

    fn choice<T: Copy>(
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

fn error(variable: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError {
        variable: variable.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

impl PlatformConfig {
    /// Parses the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Parses variables read through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(lookup);
        let data_dir = PathBuf::from(vars.text("STERLING_DATA_DIR", "data"));
        let namespace = vars.text("STERLING_NAMESPACE", "sterling");
        if namespace.is_empty()
            || namespace.len() > 32
            || !namespace.starts_with(|c: char| c.is_ascii_lowercase())
            || !namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(error(
                "STERLING_NAMESPACE",
                &namespace,
                "1 to 32 of a-z, 0-9 and _, starting with a letter",
            ));
        }
        let cassandra = cassandra(&vars)?;
        let storage = match vars.choice(
            "STERLING_STORAGE",
            false,
            &[("embedded", false), ("cassandra", true)],
        )? {
            true => StorageBackend::Cassandra(cassandra.clone()),
            false => StorageBackend::Embedded,
        };
        let max_in_flight =
            vars.parsed("STERLING_MAX_IN_FLIGHT", 512usize, "a whole number above 0")?;
        if max_in_flight == 0 {
            return Err(error(
                "STERLING_MAX_IN_FLIGHT",
                "0",
                "a whole number above 0",
            ));
        }
        let nats_replicas = vars.parsed("STERLING_NATS_REPLICAS", 1usize, "1, 3 or 5")?;
        if ![1, 3, 5].contains(&nats_replicas) {
            return Err(error(
                "STERLING_NATS_REPLICAS",
                &nats_replicas.to_string(),
                "1, 3 or 5",
            ));
        }
        let log_filter = vars.text("STERLING_LOG", "info,h2=warn,hyper=warn,tower=warn");
        if tracing_subscriber::EnvFilter::try_new(&log_filter).is_err() {
            return Err(error(
                "STERLING_LOG",
                &log_filter,
                "a log filter such as info or cards=debug,info",
            ));
        }
        Ok(PlatformConfig {
            durability: vars.choice(
                "STERLING_DURABILITY",
                Durability::Full,
                &[("full", Durability::Full), ("normal", Durability::Normal)],
            )?,
            call_timeout: vars.millis("STERLING_CALL_TIMEOUT_MS", 2000)?,
            registration_ttl: vars.millis("STERLING_REGISTRATION_TTL_MS", 10_000)?,
            drain_timeout: vars.millis("STERLING_DRAIN_TIMEOUT_MS", 10_000)?,
            shutdown_grace: vars.millis("STERLING_SHUTDOWN_GRACE_MS", 2000)?,
            zone: vars.text("STERLING_ZONE", ""),
            health_interval: vars.millis("STERLING_HEALTH_INTERVAL_MS", 5000)?,
            max_in_flight,
            settings: HashMap::new(),
            storage,
            cassandra,
            nats_url: nats_url(&vars)?,
            nats_replicas,
            discovery: discovery(&vars, &data_dir)?,
            bus: bus(&vars, &data_dir)?,
            listen: vars.parsed(
                "STERLING_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 0)),
                "an address such as 127.0.0.1:8080",
            )?,
            metrics_addr: match vars.get("STERLING_METRICS_ADDR") {
                None => None,
                Some(v) if v.is_empty() => None,
                Some(v) => Some(v.parse().map_err(|_| {
                    error(
                        "STERLING_METRICS_ADDR",
                        &v,
                        "an address such as 127.0.0.1:9464",
                    )
                })?),
            },
            log_filter,
            log_format: vars.choice(
                "STERLING_LOG_FORMAT",
                LogFormat::Json,
                &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
            )?,
            namespace,
            data_dir,
        })
    }

    /// The effective configuration, one `NAME=value` per variable, secrets redacted.
    pub fn describe(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            out.insert(k.to_string(), v);
        };
        put("STERLING_DATA_DIR", self.data_dir.display().to_string());
        put(
            "STERLING_DURABILITY",
            format!("{:?}", self.durability).to_ascii_lowercase(),
        );
        put(
            "STERLING_CALL_TIMEOUT_MS",
            self.call_timeout.as_millis().to_string(),
        );
        put(
            "STERLING_REGISTRATION_TTL_MS",
            self.registration_ttl.as_millis().to_string(),
        );
        put(
            "STERLING_DRAIN_TIMEOUT_MS",
            self.drain_timeout.as_millis().to_string(),
        );
        put(
            "STERLING_SHUTDOWN_GRACE_MS",
            self.shutdown_grace.as_millis().to_string(),
        );
        put("STERLING_ZONE", self.zone.clone());
        put(
            "STERLING_HEALTH_INTERVAL_MS",
            self.health_interval.as_millis().to_string(),
        );
        put("STERLING_MAX_IN_FLIGHT", self.max_in_flight.to_string());
        put("STERLING_NAMESPACE", self.namespace.clone());
        let storage = match self.storage {
            StorageBackend::Embedded => "embedded",
            StorageBackend::Cassandra(_) => "cassandra",
        };
        put("STERLING_STORAGE", storage.into());
        put("STERLING_CASSANDRA_NODES", self.cassandra.nodes.join(","));
        put(
            "STERLING_CASSANDRA_REPLICATION",
            self.cassandra.replication.clone(),
        );
        put(
            "STERLING_CASSANDRA_CONSISTENCY",
            format!("{:?}", self.cassandra.consistency),
        );
        put("STERLING_NATS_URL", redact_url(&self.nats_url));
        put("STERLING_NATS_REPLICAS", self.nats_replicas.to_string());
        put(
            "STERLING_DISCOVERY",
            match &self.discovery {
                DiscoverySpec::Nats => "nats".into(),
                DiscoverySpec::Embedded => "embedded".into(),
                DiscoverySpec::Static(list) => format!("static:{list}"),
                DiscoverySpec::File(path) => format!("file:{}", path.display()),
            },
        );
        put(
            "STERLING_BUS",
            match &self.bus {
                BusSpec::Nats => "nats".into(),
                BusSpec::Embedded(path) => format!("embedded:{}", path.display()),
            },
        );
        put("STERLING_LISTEN", self.listen.to_string());
        put(
            "STERLING_METRICS_ADDR",
            self.metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        );
        put("STERLING_LOG", self.log_filter.clone());
        put(
            "STERLING_LOG_FORMAT",
            format!("{:?}", self.log_format).to_ascii_lowercase(),
        );
        for (key, value) in &self.settings {
            put(key, redact_setting(key, value));
        }
        out
    }
}

/// `***` in place of a value whose name says it is a secret.
pub fn redact_setting(key: &str, value: &str) -> String {
    let key = key.to_ascii_uppercase();
    if ["SECRET", "PASSWORD", "TOKEN", "KEY"]
        .iter()
        .any(|s| key.contains(s))
    {
        "***".into()
    } else {
        value.to_string()
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn cassandra(vars: &Vars) -> Result<CassandraConfig, ConfigError> {
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

fn nats_url(vars: &Vars) -> Result<String, ConfigError> {
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

fn discovery(vars: &Vars, data_dir: &std::path::Path) -> Result<DiscoverySpec, ConfigError> {
    let Some(spec) = vars.get("STERLING_DISCOVERY") else {
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

fn bus(vars: &Vars, data_dir: &std::path::Path) -> Result<BusSpec, ConfigError> {
    let spec = vars.text("STERLING_BUS", "embedded");
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
