//! Discovery on a NATS JetStream key-value bucket.
//!
//! Each instance is one key, `<service>.<instance>`, whose value is its registration as JSON
//! with an expiry time. The bucket's `max_age` is the registration TTL: a heartbeat rewrites the
//! key, a crashed instance's key ages out, a graceful shutdown deletes it. Watchers follow the
//! bucket's change feed and re-read at least every second so expiries are seen too.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{Discovery, Registration};
use crate::error::{Error, Result};

/// The bucket of a namespace: `<namespace>_discovery`.
pub fn bucket_of(namespace: &str) -> String {
    format!("{}_discovery", key_part(namespace))
}

#[derive(Serialize, Deserialize)]
struct Stored {
    registration: Registration,
    expires_at_ms: i64,
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::unavailable("discovery", e.to_string())
}

fn key_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn key_of(service: &str, instance: &str) -> String {
    format!("{}.{}", key_part(service), key_part(instance))
}

/// Discovery in a NATS KV bucket shared by every process.
#[derive(Clone)]
pub struct NatsDiscovery {
    store: kv::Store,
}

impl NatsDiscovery {
    /// Connects and opens (or creates) the namespace's bucket, whose `max_age` is `ttl`.
    pub async fn connect(url: &str, namespace: &str, ttl: Duration) -> Result<NatsDiscovery> {
        let client = sterling_bus::nats::connect(url)
            .await
            .map_err(unavailable)?;
        let jetstream = jetstream::new(client);
        let bucket = bucket_of(namespace);
        let store = match jetstream.get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) => jetstream
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    max_age: ttl,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?,
        };
        Ok(NatsDiscovery { store })
    }

    async fn snapshot(store: &kv::Store, service: &str) -> Result<Vec<Registration>> {
        let prefix = format!("{}.", key_part(service));
        let mut keys = store.keys().await.map_err(unavailable)?;
        let now = sterling_storage::now_millis();
        let mut live = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(unavailable)?;
            if !key.starts_with(&prefix) {
                continue;
            }
            if let Some(value) = store.get(key.as_str()).await.map_err(unavailable)?
                && let Ok(stored) = serde_json::from_slice::<Stored>(&value)
                && stored.expires_at_ms > now
            {
                live.push(stored.registration);
            }
        }
        live.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(live)
    }
}

#[async_trait]
impl Discovery for NatsDiscovery {
    async fn register(&self, registration: &Registration, ttl: Duration) -> Result<()> {
        let stored = Stored {
            registration: registration.clone(),
            expires_at_ms: sterling_storage::now_millis() + ttl.as_millis() as i64,
        };
        let value = serde_json::to_vec(&stored).map_err(|e| Error::internal(e.to_string()))?;
        self.store
            .put(
                key_of(&registration.service, &registration.instance),
                value.into(),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn deregister(&self, service: &str, instance: &str) -> Result<()> {
        self.store
            .purge(key_of(service, instance))
            .await
            .map_err(unavailable)
    }

    async fn resolve(&self, service: &str) -> Result<Vec<Registration>> {
        Self::snapshot(&self.store, service).await
    }

    async fn watch(&self, service: &str) -> Result<BoxStream<'static, Vec<Registration>>> {
        let store = self.store.clone();
        let changes = store
            .watch(format!("{}.>", key_part(service)))
            .await
            .map_err(unavailable)?;
        let state = (
            store,
            changes,
            None::<Vec<Registration>>,
            service.to_string(),
        );
        let stream =
            futures::stream::unfold(state, |(store, mut changes, last, service)| async move {
                loop {
                    match Self::snapshot(&store, &service).await {
                        Ok(current) if last.as_ref() != Some(&current) => {
                            return Some((
                                current.clone(),
                                (store, changes, Some(current), service),
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "discovery read failed"),
                    }
                    // A watch that ended (the server restarted) is polled once a second
                    // and opened again, never spun on.
                    if let Ok(None) =
                        tokio::time::timeout(Duration::from_secs(1), changes.next()).await
                    {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Ok(renewed) = store.watch(format!("{}.>", key_part(&service))).await
                        {
                            changes = renewed;
                        }
                    }
                }
            });
        Ok(Box::pin(stream))
    }
}
