//! Service discovery: instances register with a TTL renewed by heartbeat; clients resolve and
//! watch a service name.
//!
//! Backends: [`EmbeddedDiscovery`] (in-process, for `sterling up`), [`StaticDiscovery`] (a fixed
//! list or a JSON file, for tools and fixed deployments). The NATS KV backend implements the same
//! trait.

pub mod conformance;
pub mod nats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a registered instance is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A gRPC server.
    Grpc,
    /// An HTTP/JSON server.
    Http,
}

/// One live instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Service name, e.g. "cards".
    pub service: String,
    /// Unique per process, e.g. a UUID.
    pub instance: String,
    /// `host:port`.
    pub address: String,
    /// Protocol spoken at the address.
    pub protocol: Protocol,
    /// Availability zone, for zone-aware routing.
    #[serde(default)]
    pub zone: String,
    /// Build version.
    #[serde(default)]
    pub version: String,
    /// HTTP path prefixes an API service serves through the gateway.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// A discovery backend.
#[async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// Registers or renews an instance; it expires after `ttl` unless renewed.
    async fn register(&self, registration: &Registration, ttl: Duration) -> Result<()>;
    /// Removes an instance at once (graceful shutdown).
    async fn deregister(&self, service: &str, instance: &str) -> Result<()>;
    /// The live instances of a service.
    async fn resolve(&self, service: &str) -> Result<Vec<Registration>>;
    /// The live instances of a service now and after every change.
    async fn watch(&self, service: &str) -> Result<BoxStream<'static, Vec<Registration>>>;
}

/// A shared discovery handle.
pub type SharedDiscovery = Arc<dyn Discovery>;

struct Entry {
    registration: Registration,
    expires_at: Instant,
}

#[derive(Default)]
struct Registry {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl Registry {
    fn snapshot(&self, service: &str) -> Vec<Registration> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<Registration> = entries
            .values()
            .filter(|e| e.registration.service == service && e.expires_at > now)
            .map(|e| e.registration.clone())
            .collect();
        live.sort_by(|a, b| a.instance.cmp(&b.instance));
        live
    }
}

/// In-process discovery for services that run in one process.
pub struct EmbeddedDiscovery {
    registry: Arc<Registry>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for EmbeddedDiscovery {
    fn default() -> Self {
        EmbeddedDiscovery {
            registry: Arc::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl EmbeddedDiscovery {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
}

/// How often a watcher re-checks for expired registrations when nothing else changes.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

#[async_trait]
impl Discovery for EmbeddedDiscovery {
    async fn register(&self, registration: &Registration, ttl: Duration) -> Result<()> {
        let key = (registration.service.clone(), registration.instance.clone());
        let entry = Entry {
            registration: registration.clone(),
            expires_at: Instant::now() + ttl,
        };
        let changed = {
            let mut entries = self
                .registry
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let previous = entries.insert(key, entry);
            previous
                .is_none_or(|p| p.registration != *registration || p.expires_at < Instant::now())
        };
        if changed {
            self.changes.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    async fn deregister(&self, service: &str, instance: &str) -> Result<()> {
        let removed = self
            .registry
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(service.to_string(), instance.to_string()));
        if removed.is_some() {
            self.changes.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    async fn resolve(&self, service: &str) -> Result<Vec<Registration>> {
        Ok(self.registry.snapshot(service))
    }

    async fn watch(&self, service: &str) -> Result<BoxStream<'static, Vec<Registration>>> {
        let state = (
            self.changes.subscribe(),
            None::<Vec<Registration>>,
            self.registry.clone(),
            service.to_string(),
        );
        let stream =
            futures::stream::unfold(state, |(mut changes, last, registry, service)| async move {
                loop {
                    let current = registry.snapshot(&service);
                    if last.as_ref() != Some(&current) {
                        return Some((
                            current.clone(),
                            (changes, Some(current), registry, service),
                        ));
                    }
                    if let Ok(Err(_)) = tokio::time::timeout(EXPIRY_CHECK, changes.changed()).await
                    {
                        // Discovery itself is gone: keep re-checking expiry only.
                        tokio::time::sleep(EXPIRY_CHECK).await;
                    }
                }
            });
        Ok(Box::pin(stream))
    }
}

/// A fixed set of instances, given directly or read from a JSON file of registrations each
/// time it is asked (so a restarted `sterling up` is seen). Registering is a no-op.
pub enum StaticDiscovery {
    /// A fixed list.
    List(Vec<Registration>),
    /// A JSON array of [`Registration`]s in a file.
    File(PathBuf),
}

impl StaticDiscovery {
    /// Parses `name=host:port,name=host:port` (all gRPC).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut list = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (service, address) = item.split_once('=').ok_or_else(|| {
                Error::bad_request("discovery", format!("expected name=host:port, got {item}"))
            })?;
            list.push(Registration {
                service: service.to_string(),
                instance: format!("static-{service}-{address}"),
                address: address.to_string(),
                protocol: Protocol::Grpc,
                zone: String::new(),
                version: String::new(),
                routes: Vec::new(),
            });
        }
        Ok(StaticDiscovery::List(list))
    }

    fn all(&self) -> Result<Vec<Registration>> {
        match self {
            StaticDiscovery::List(list) => Ok(list.clone()),
            StaticDiscovery::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::unavailable("discovery", format!("{}: {e}", path.display()))
                })?;
                serde_json::from_str(&text).map_err(|e| {
                    Error::internal(format!(
                        "{} is not a registration list: {e}",
                        path.display()
                    ))
                })
            }
        }
    }
}

#[async_trait]
impl Discovery for StaticDiscovery {
    async fn register(&self, _registration: &Registration, _ttl: Duration) -> Result<()> {
        Ok(())
    }

    async fn deregister(&self, _service: &str, _instance: &str) -> Result<()> {
        Ok(())
    }

    async fn resolve(&self, service: &str) -> Result<Vec<Registration>> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|r| r.service == service)
            .collect())
    }

    async fn watch(&self, service: &str) -> Result<BoxStream<'static, Vec<Registration>>> {
        let now = self.resolve(service).await?;
        Ok(Box::pin(
            futures::stream::once(async move { now }).chain(futures::stream::pending()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn reg(instance: &str) -> Registration {
        Registration {
            service: "cards".into(),
            instance: instance.into(),
            address: "127.0.0.1:1".into(),
            protocol: Protocol::Grpc,
            zone: String::new(),
            version: String::new(),
            routes: vec![],
        }
    }

    #[tokio::test]
    async fn registrations_expire_without_heartbeat_and_watchers_see_it() {
        let d = EmbeddedDiscovery::new();
        let mut watch = d.watch("cards").await.unwrap();
        assert!(watch.next().await.unwrap().is_empty());
        d.register(&reg("a"), Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(watch.next().await.unwrap().len(), 1);
        // No renewal: it vanishes after its TTL.
        let gone = tokio::time::timeout(Duration::from_secs(2), watch.next())
            .await
            .unwrap();
        assert!(gone.unwrap().is_empty());
        assert!(d.resolve("cards").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn deregister_removes_at_once() {
        let d = EmbeddedDiscovery::new();
        d.register(&reg("a"), Duration::from_secs(30))
            .await
            .unwrap();
        d.register(&reg("b"), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(d.resolve("cards").await.unwrap().len(), 2);
        d.deregister("cards", "a").await.unwrap();
        let live = d.resolve("cards").await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].instance, "b");
    }

    #[tokio::test]
    async fn static_lists_parse() {
        let d = StaticDiscovery::parse("cards=127.0.0.1:7001, ledger=127.0.0.1:7002").unwrap();
        assert_eq!(
            d.resolve("ledger").await.unwrap()[0].address,
            "127.0.0.1:7002"
        );
        assert!(StaticDiscovery::parse("nonsense").is_err());
    }
}
