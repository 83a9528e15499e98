//! The whole bank in one process: every service a real gRPC (or HTTP) server on loopback,
//! sharing in-process discovery, each with its own store under the data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use sterling_template::ServiceDefinition;
use sterling_template::discovery::{Protocol, Registration};
use sterling_template::platform::{
    self, DiscoverySpec, Platform, PlatformConfig, RunningService, StorageBackend, config,
};

// `SERVICES`: every service of the bank, one per crate under services/ this crate depends on
// (see build.rs). A service's place there does not matter: the bank starts each after the
// services it declares in `depends_on` ([`start_order`]).
include!(concat!(env!("OUT_DIR"), "/services.rs"));

/// Development stand-ins for the outside world, started with the bank on a laptop: the push
/// sink plays APNs. Not services of the bank.
pub const DEVELOPMENT_FAKES: &[ServiceDefinition] = &[push::sink::SINK];

/// `definitions` ordered so that each comes after every service it depends on (then by name,
/// so the order is stable). A dependency outside the list is someone else's to start; a cycle
/// is an error naming it.
pub fn start_order(definitions: &[ServiceDefinition]) -> anyhow::Result<Vec<ServiceDefinition>> {
    let mut left: Vec<ServiceDefinition> = definitions.to_vec();
    left.sort_by_key(|d| d.name);
    let mut ordered: Vec<ServiceDefinition> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let ready = left.iter().position(|d| {
            d.depends_on.iter().all(|dep| {
                ordered.iter().any(|o| o.name == *dep) || !left.iter().any(|l| l.name == *dep)
            })
        });
        match ready {
            Some(i) => ordered.push(left.remove(i)),
            None => {
                let names: Vec<&str> = left.iter().map(|d| d.name).collect();
                anyhow::bail!(
                    "services depend on each other in a cycle: {}",
                    names.join(", ")
                );
            }
        }
    }
    Ok(ordered)
}

/// The discovery tools use to find the bank under `data`: what the configuration names
/// (`STERLING_DISCOVERY`, else the bank's own record in its data directory); a hint when no
/// bank is there.
pub fn discovery_of(config: &PlatformConfig) -> anyhow::Result<DiscoverySpec> {
    if let DiscoverySpec::File(endpoints) = &config.discovery
        && !endpoints.exists()
    {
        anyhow::bail!(
            "no bank found: {} does not exist. Start one with `sterling up`, point at its data \
             directory with --data (or STERLING_DATA_DIR), or set STERLING_DISCOVERY",
            endpoints.display()
        );
    }
    Ok(config.discovery.clone())
}

/// Which engines the bank runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engines {
    /// SQLite stores, in-process discovery, SQLite bus: nothing to install.
    #[default]
    Embedded,
    /// Bus and discovery on NATS (so services in other processes join), stores embedded.
    Nats,
    /// Cassandra stores, NATS JetStream bus, NATS KV discovery.
    Real,
}

/// How to run the bank.
#[derive(Debug, Clone)]
pub struct BankOptions {
    /// Engines behind the seams.
    pub engines: Engines,
    /// Platform settings (data directory, durability, per-service settings).
    pub config: PlatformConfig,
    /// First gRPC port; services take consecutive ports. 0 for ephemeral ports.
    pub grpc_base_port: u16,
    /// card-api's HTTP port. 0 for an ephemeral port.
    pub http_port: u16,
    /// The gateway's HTTP port (the public API). 0 for an ephemeral port.
    pub gateway_port: u16,
    /// Services not to start (they run elsewhere, e.g. from an IDE).
    pub except: Vec<String>,
}

impl BankOptions {
    /// Ephemeral ports, everything started, data under `data_dir`.
    pub fn ephemeral(data_dir: &Path) -> Self {
        let mut config = PlatformConfig::from_env().expect("the environment's STERLING_* settings");
        config.data_dir = data_dir.to_path_buf();
        BankOptions {
            engines: Engines::Embedded,
            config,
            grpc_base_port: 0,
            http_port: 0,
            gateway_port: 0,
            except: Vec::new(),
        }
    }
}

/// A running bank.
pub struct Bank {
    /// The platform its services share.
    pub platform: Platform,
    /// The running services.
    pub services: Vec<RunningService>,
    /// The engines it runs on.
    pub engines: Engines,
}

impl Bank {
    /// Starts every service not excepted.
    pub async fn start(options: BankOptions) -> anyhow::Result<Bank> {
        let platform = Self::platform(&options).await?;
        Self::start_on(options, platform).await
    }

    /// The platform the options describe.
    pub async fn platform(options: &BankOptions) -> anyhow::Result<Platform> {
        Ok(match options.engines {
            Engines::Embedded => Platform::embedded(options.config.clone())?,
            Engines::Nats => Platform::nats(options.config.clone()).await?,
            Engines::Real => {
                let mut config = options.config.clone();
                if matches!(config.storage, StorageBackend::Embedded) {
                    config.storage = StorageBackend::Cassandra(config.cassandra.clone());
                }
                Platform::nats(config).await?
            }
        })
    }

    /// Starts every service not excepted on a given platform (tests wrap its bus this way).
    pub async fn start_on(options: BankOptions, platform: Platform) -> anyhow::Result<Bank> {
        let mut services = Vec::new();
        let mut grpc_index = 0u16;
        let order: Vec<ServiceDefinition> = DEVELOPMENT_FAKES
            .iter()
            .copied()
            .chain(start_order(SERVICES)?)
            .collect();
        for definition in &order {
            if options.except.iter().any(|e| e == definition.name) {
                continue;
            }
            let port = if definition.name == "card-api" {
                options.http_port
            } else if definition.name == sterling_template::identity::GATEWAY {
                options.gateway_port
            } else if options.grpc_base_port == 0 {
                0
            } else {
                grpc_index += 1;
                options.grpc_base_port + grpc_index - 1
            };
            let listen = SocketAddr::from(([127, 0, 0, 1], port));
            services.push(platform::start(definition, &platform, listen).await?);
        }
        let bank = Bank {
            platform,
            services,
            engines: options.engines,
        };
        bank.write_endpoints()?;
        Ok(bank)
    }

    /// Stops a service gracefully and starts it again on a new port, on the same store (as a
    /// rolling restart would).
    pub async fn restart(&mut self, service: &str) -> anyhow::Result<()> {
        let index = self
            .services
            .iter()
            .position(|s| s.name == service)
            .ok_or_else(|| anyhow::anyhow!("{service} is not running"))?;
        let definition = SERVICES
            .iter()
            .chain(DEVELOPMENT_FAKES)
            .find(|d| d.name == service)
            .ok_or_else(|| anyhow::anyhow!("{service} is not a service of the bank"))?;
        let running = self.services.remove(index);
        running.stop().await;
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let started = platform::start(definition, &self.platform, listen).await?;
        self.services.insert(index, started);
        Ok(())
    }

    /// Where a service listens.
    pub fn address(&self, service: &str) -> Option<SocketAddr> {
        self.services
            .iter()
            .find(|s| s.name == service)
            .map(|s| s.address)
    }

    /// card-api's base URL.
    pub fn card_api_url(&self) -> Option<String> {
        self.address("card-api").map(|a| format!("http://{a}"))
    }

    /// The file tools read to find the services: `<data dir>/endpoints.json`.
    pub fn endpoints_file(&self) -> PathBuf {
        self.platform.config.data_dir.join("endpoints.json")
    }

    fn write_endpoints(&self) -> anyhow::Result<()> {
        let registrations: Vec<Registration> = self
            .services
            .iter()
            .flat_map(RunningService::registrations)
            .cloned()
            .collect();
        std::fs::create_dir_all(&self.platform.config.data_dir)?;
        let on_nats = self.engines != Engines::Embedded;
        std::fs::write(
            self.platform.config.data_dir.join(config::DISCOVERY_FILE),
            if on_nats { "nats\n" } else { "file\n" },
        )?;
        let path = self.endpoints_file();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&registrations)?)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// A printable table of what listens where.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in &self.services {
            let scheme = match s.protocol {
                Protocol::Grpc => "grpc",
                Protocol::Http => "http",
            };
            out.push_str(&format!("  {:<16} {scheme}://{}\n", s.name, s.address));
        }
        out
    }

    /// Waits up to `bound` for every service to pass its health checks; returns why those
    /// still failing are not ready (empty when all are).
    pub async fn wait_ready(&self, bound: std::time::Duration) -> Vec<String> {
        let until = tokio::time::Instant::now() + bound;
        loop {
            let failing: Vec<String> = self
                .services
                .iter()
                .filter(|s| !s.ready())
                .map(|s| format!("{}: {}", s.name, s.not_ready_reasons().join(", ")))
                .collect();
            if failing.is_empty() || tokio::time::Instant::now() >= until {
                return failing;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Stops every service gracefully, last started first.
    pub async fn stop(mut self) {
        while let Some(service) = self.services.pop() {
            service.stop().await;
        }
        let _ = std::fs::remove_file(self.endpoints_file());
        let _ = std::fs::remove_file(self.platform.config.data_dir.join(config::DISCOVERY_FILE));
    }
}
