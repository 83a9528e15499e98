//! The engines a process's services share: discovery and the event bus, opened from the
//! configuration, and each service's store.

use std::sync::Arc;

use sterling_bus::Bus;
use sterling_bus::embedded::{BusOptions, SqliteBus};
use sterling_bus::nats::{NatsBus, NatsConfig};
use sterling_storage::cassandra::{CassandraStore, keyspace_of};
use sterling_storage::embedded::{Durability, SqliteStore};
use sterling_storage::{Migration, SharedStore};

use super::config::{BusSpec, DiscoverySpec, PlatformConfig, StorageBackend};
use crate::discovery::nats::NatsDiscovery;
use crate::discovery::{EmbeddedDiscovery, SharedDiscovery, StaticDiscovery};
use crate::error::{Error, Result};
use crate::identity::Identity;

/// What every service in a process shares: configuration, discovery and the event bus.
#[derive(Clone)]
pub struct Platform {
    /// Settings.
    pub config: PlatformConfig,
    /// The discovery backend.
    pub discovery: SharedDiscovery,
    /// The event bus.
    pub bus: Arc<dyn Bus>,
    /// Who this process's services are, and how they check who calls them.
    pub identity: Identity,
}

impl Platform {
    /// The platform the configuration names (`STERLING_DISCOVERY`, `STERLING_BUS`): what a
    /// service run on its own uses.
    pub async fn from_config(config: PlatformConfig) -> Result<Platform> {
        let discovery = open_discovery(&config.discovery, &config).await?;
        let bus: Arc<dyn Bus> = match &config.bus {
            BusSpec::Nats => Arc::new(nats_bus(&config).await?),
            BusSpec::Embedded(path) => Arc::new(embedded_bus(&config, path)?),
        };
        Ok(Platform {
            identity: config.open_identity()?,
            config,
            discovery,
            bus,
        })
    }

    /// A platform whose bus and discovery are on NATS (JetStream, KV), so that services in
    /// several processes find each other; storage is whatever the configuration names.
    pub async fn nats(config: PlatformConfig) -> Result<Platform> {
        let discovery = open_discovery(&DiscoverySpec::Nats, &config).await?;
        let bus = nats_bus(&config).await?;
        Ok(Platform {
            identity: config.open_identity()?,
            config,
            discovery,
            bus: Arc::new(bus),
        })
    }

    /// A platform for services in one process: in-process discovery and the embedded bus under
    /// the data directory.
    pub fn embedded(config: PlatformConfig) -> Result<Platform> {
        let bus = embedded_bus(&config, &config.data_dir.join("bus.sqlite"))?;
        Ok(Platform {
            identity: config.open_identity()?,
            config,
            discovery: Arc::new(EmbeddedDiscovery::new()),
            bus: Arc::new(bus),
        })
    }
}

/// Opens the discovery a spec names.
pub async fn open_discovery(
    spec: &DiscoverySpec,
    config: &PlatformConfig,
) -> Result<SharedDiscovery> {
    Ok(match spec {
        DiscoverySpec::Nats => Arc::new(
            NatsDiscovery::connect(&config.nats_url, &config.namespace, config.registration_ttl)
                .await?,
        ),
        DiscoverySpec::Embedded => Arc::new(EmbeddedDiscovery::new()),
        DiscoverySpec::Static(list) => Arc::new(StaticDiscovery::parse(list)?),
        DiscoverySpec::File(path) => Arc::new(StaticDiscovery::File(path.clone())),
    })
}

fn embedded_bus(config: &PlatformConfig, path: &std::path::Path) -> Result<SqliteBus> {
    let options = BusOptions {
        fsync_publishes: config.durability == Durability::Full,
        ..BusOptions::default()
    };
    SqliteBus::open_with(path, options).map_err(|e| Error::unavailable("bus", e.to_string()))
}

async fn nats_bus(config: &PlatformConfig) -> Result<NatsBus> {
    let mut nats = NatsConfig::for_namespace(&config.nats_url, &config.namespace);
    nats.replicas = config.nats_replicas;
    NatsBus::connect(nats)
        .await
        .map_err(|e| Error::unavailable("bus", e.to_string()))
}

/// Opens a service's store on the configured backend and applies its migrations: a SQLite
/// file under the data directory, or keyspace `<namespace>_<service>` on Cassandra.
pub async fn open_store(
    config: &PlatformConfig,
    name: &str,
    migrations: &[Migration],
) -> Result<SharedStore> {
    Ok(match &config.storage {
        StorageBackend::Embedded => {
            let path = config.data_dir.join(format!("{name}.sqlite"));
            Arc::new(SqliteStore::open(&path, migrations, config.durability)?)
        }
        StorageBackend::Cassandra(cassandra) => {
            let keyspace = keyspace_of(&config.namespace, name);
            Arc::new(CassandraStore::open(cassandra, &keyspace, migrations).await?)
        }
    })
}
