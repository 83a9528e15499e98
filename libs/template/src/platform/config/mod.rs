//! The process configuration: every `STERLING_*` variable parsed once into typed settings. A
//! value that is not one of those accepted, or a variable name one typo away from a known one,
//! stops the process at start with a message naming the variable and what it accepts.

mod describe;
mod specs;
mod variables;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sterling_storage::cassandra::CassandraConfig;
use sterling_storage::embedded::Durability;

pub use self::describe::redact_setting;
pub use self::specs::DISCOVERY_FILE;
pub use self::variables::{VARIABLES, misspelt_variables};
use self::variables::{Vars, error};

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

/// Where the identity authority is (see [`crate::identity`]).
#[derive(Clone, PartialEq, Eq)]
pub enum IdentitySpec {
    /// The authority's key in `identity.key` under the data directory (development).
    InDataDir,
    /// The authority's key, in a file.
    KeyFile(PathBuf),
    /// Only the authority's public key, and this process's token if it calls others.
    Given {
        /// Hex of the Ed25519 public key.
        public_key: String,
        /// This process's token.
        token: Option<String>,
    },
}

impl fmt::Debug for IdentitySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentitySpec::InDataDir => f.write_str("InDataDir"),
            IdentitySpec::KeyFile(path) => f.debug_tuple("KeyFile").field(path).finish(),
            IdentitySpec::Given { public_key, .. } => f
                .debug_struct("Given")
                .field("public_key", public_key)
                .finish_non_exhaustive(),
        }
    }
}

impl PlatformConfig {
    /// The identity authority as this process knows it: reads (or, in development, creates)
    /// the key file.
    pub fn open_identity(&self) -> crate::error::Result<crate::identity::Identity> {
        use crate::identity::Identity;
        let from_file = |path: &std::path::Path| {
            Identity::load_or_create(path).map_err(|e| {
                crate::error::Error::unavailable("identity", format!("identity key: {e}"))
            })
        };
        match &self.identity {
            IdentitySpec::InDataDir => from_file(&self.data_dir.join(IDENTITY_KEY_FILE)),
            IdentitySpec::KeyFile(path) => from_file(path),
            IdentitySpec::Given { public_key, token } => {
                Identity::given(public_key, token.as_deref())
                    .map_err(|why| crate::error::Error::internal(format!("identity: {why}")))
            }
        }
    }
}

/// The authority's key file in the data directory, by default.
pub const IDENTITY_KEY_FILE: &str = "identity.key";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (what log pipelines read).
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

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
    /// Steps of nice the threads event consumers run on are below the serving threads
    /// ([`crate::platform::background`]); 0 runs consumers on the serving runtime.
    pub consumer_nice: i32,
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
    /// The host registered in discovery with the bound port, when the listen address is not
    /// one others can reach (`0.0.0.0` in a container).
    pub advertise_host: Option<String>,
    /// Where Prometheus `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the identity authority is.
    pub identity: IdentitySpec,
    /// Log filter (`tracing` env-filter syntax).
    pub log_filter: String,
    /// Log format.
    pub log_format: LogFormat,
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
        let namespace = specs::namespace(&vars)?;
        let cassandra = specs::cassandra(&vars)?;
        let storage = match vars.choice(
            "STERLING_STORAGE",
            false,
            &[("embedded", false), ("cassandra", true)],
        )? {
            true => StorageBackend::Cassandra(cassandra.clone()),
            false => StorageBackend::Embedded,
        };
        let max_in_flight = specs::max_in_flight(&vars)?;
        let nats_replicas = specs::nats_replicas(&vars)?;
        let log_filter = specs::log_filter(&vars)?;
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
            consumer_nice: specs::consumer_nice(&vars)?,
            settings: HashMap::new(),
            storage,
            cassandra,
            nats_url: specs::nats_url(&vars)?,
            nats_replicas,
            discovery: specs::discovery(&vars, &data_dir)?,
            bus: specs::bus(&vars, &data_dir)?,
            listen: vars.parsed(
                "STERLING_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 0)),
                "an address such as 127.0.0.1:8080",
            )?,
            advertise_host: specs::advertise_host(&vars)?,
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
            identity: specs::identity(&vars)?,
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
}
