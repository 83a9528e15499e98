//! Discovery on a NATS JetStream key-value bucket.
//!
//! Each instance is one key, `<service>.<instance>`, whose value is its registration as JSON
//! with an expiry time. The bucket's `max_age` is the registration TTL: a heartbeat rewrites the
//! key, a crashed instance's key ages out, a graceful shutdown deletes it. Watchers follow the
//! bucket's change feed (one consumer each) and drop registrations past their expiry every
//! second.

use std::collections::HashMap;
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

    /// Every stored registration of `service`, by key, expired or not.
    async fn stored(store: &kv::Store, service: &str) -> Result<HashMap<String, Stored>> {
        let prefix = format!("{}.", key_part(service));
        let mut keys = store.keys().await.map_err(unavailable)?;
        let mut stored = HashMap::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(unavailable)?;
            if !key.starts_with(&prefix) {
                continue;
            }
            if let Some(value) = store.get(key.as_str()).await.map_err(unavailable)?
                && let Ok(registration) = serde_json::from_slice::<Stored>(&value)
            {
                stored.insert(key, registration);
            }
        }
        Ok(stored)
    }
}

/// The registrations of `stored` not yet expired, in instance order.
fn live(stored: &HashMap<String, Stored>) -> Vec<Registration> {
    let now = sterling_storage::now_millis();
    let mut live: Vec<Registration> = stored
        .values()
        .filter(|s| s.expires_at_ms > now)
        .map(|s| s.registration.clone())
        .collect();
    live.sort_by(|a, b| a.instance.cmp(&b.instance));
    live
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
        Ok(live(&Self::stored(&self.store, service).await?))
    }

    async fn watch(&self, service: &str) -> Result<BoxStream<'static, Vec<Registration>>> {
        let filter = format!("{}.>", key_part(service));
        let changes = self
            .store
            .watch_with_history(&filter)
            .await
            .map_err(unavailable)?;
        // What is there now, then every change after it.
        let state = Following {
            store: self.store.clone(),
            filter,
            changes: Some(changes),
            known: Self::stored(&self.store, service).await?,
            last: None,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut state| async move {
                let live = state.next_change().await;
                Some((live, state))
            },
        )))
    }
}

/// One service's registrations, followed on one KV watch (one consumer, whatever the number
/// of changes): puts and deletes are applied as they come, and every second the live set is
/// recomputed, so a registration whose heartbeats stopped drops out at its expiry. A watch
/// that ended (the server restarted) is opened again.
struct Following {
    store: kv::Store,
    filter: String,
    changes: Option<kv::Watch>,
    known: HashMap<String, Stored>,
    last: Option<Vec<Registration>>,
}

impl Following {
    /// The live set first, then each one that differs from the last one given.
    async fn next_change(&mut self) -> Vec<Registration> {
        loop {
            let live = live(&self.known);
            if self.last.as_ref() != Some(&live) {
                self.last = Some(live.clone());
                return live;
            }
            let Some(changes) = self.changes.as_mut() else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match self.store.watch_with_history(&self.filter).await {
                    Ok(changes) => self.changes = Some(changes),
                    Err(e) => tracing::warn!(error = %e, "discovery watch cannot reopen yet"),
                }
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(1), changes.next()).await {
                Ok(Some(Ok(entry))) => self.apply(entry),
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "discovery watch failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(None) => self.changes = None,
                Err(_) => {} // a second without changes: expiries are checked above
            }
        }
    }

    fn apply(&mut self, entry: kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Stored>(&entry.value) {
                Ok(stored) => {
                    self.known.insert(entry.key, stored);
                }
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "unreadable registration"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                self.known.remove(&entry.key);
            }
        }
    }
}
