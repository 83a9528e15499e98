//! The route table: every instance of the public API's services, by the path prefixes each
//! registered in discovery. Kept up to date by watching discovery, so a new API service is
//! live as soon as it registers, with no change here.

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use sterling_template::Result;
use sterling_template::discovery::{Registration, SharedDiscovery};
use sterling_template::platform::PUBLIC_API;

/// The public API's instances, as discovery last reported them.
#[derive(Clone, Default)]
pub struct RouteTable {
    instances: Arc<RwLock<Vec<Registration>>>,
}

/// Whether `path` is under `prefix`: the prefix itself, or it followed by `/`.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl RouteTable {
    /// A table following discovery's `public-api` registrations.
    pub async fn follow(discovery: SharedDiscovery) -> Result<RouteTable> {
        let table = RouteTable::default();
        table.replace(discovery.resolve(PUBLIC_API).await?);
        let mut updates = discovery.watch(PUBLIC_API).await?;
        let following = table.clone();
        tokio::spawn(async move {
            while let Some(snapshot) = updates.next().await {
                following.replace(snapshot);
            }
        });
        Ok(table)
    }

    fn replace(&self, instances: Vec<Registration>) {
        *self.instances.write().unwrap_or_else(|p| p.into_inner()) = instances;
    }

    /// The address of an instance serving `path` under the longest matching prefix (spread
    /// over instances by `pick`).
    pub fn route(&self, path: &str, pick: usize) -> Option<String> {
        let instances = self.instances.read().unwrap_or_else(|p| p.into_inner());
        let best = instances
            .iter()
            .flat_map(|r| r.routes.iter().filter(|p| under(path, p)).map(|p| p.len()))
            .max()?;
        let serving: Vec<&Registration> = instances
            .iter()
            .filter(|r| r.routes.iter().any(|p| p.len() == best && under(path, p)))
            .collect();
        let chosen = serving.get(pick % serving.len().max(1))?;
        Some(chosen.address.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sterling_template::discovery::Protocol;

    fn instance(name: &str, address: &str, routes: &[&str]) -> Registration {
        Registration {
            service: PUBLIC_API.into(),
            instance: name.into(),
            address: address.into(),
            protocol: Protocol::Http,
            zone: String::new(),
            version: String::new(),
            routes: routes.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn the_longest_whole_segment_prefix_wins() {
        let table = RouteTable::default();
        table.replace(vec![
            instance("accounts-1", "a:1", &["/v1/accounts"]),
            instance("cards-1", "c:1", &["/v1/accounts/cards", "/v1/cards"]),
        ]);
        assert_eq!(table.route("/v1/accounts", 0).unwrap(), "a:1");
        assert_eq!(table.route("/v1/accounts/acc_1/balance", 0).unwrap(), "a:1");
        assert_eq!(table.route("/v1/accounts/cards/x", 0).unwrap(), "c:1");
        assert_eq!(table.route("/v1/cards", 0).unwrap(), "c:1");
        assert!(table.route("/v1/accountsfoo", 0).is_none());
        assert!(table.route("/v2/accounts", 0).is_none());
    }
}
