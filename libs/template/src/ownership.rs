//! Which instance of a service owns a piece of background work: rendezvous hashing over the
//! live instances discovery knows (each key goes to the instance whose hash of instance and
//! key is highest), so the instances of a service share work that every one of them can see
//! (a queue in their common store) without taking it twice, and with no lock.
//!
//! An instance owns everything until it sees its own registration among the live ones (so
//! where discovery is a static list that never shows it, nothing waits for an instance that
//! may not share its store). While views differ (an instance starting, or stopped and not yet
//! expired), a key may have two owners for a moment (the work is done twice, which is allowed:
//! it is idempotent) or none (it waits until the dead instance's registration expires); it is
//! never lost.

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::discovery::SharedDiscovery;

/// This instance's view of who owns what.
#[derive(Clone)]
pub struct Owners {
    me: Arc<str>,
    /// The other live instances, once this one is seen among them (`None`: owns everything).
    others: Arc<RwLock<Option<Vec<String>>>>,
}

impl Owners {
    /// An instance that owns everything (the only one).
    pub fn alone(me: &str) -> Self {
        Owners {
            me: me.into(),
            others: Arc::default(),
        }
    }

    /// An instance `me` among the instances `live`, as they stand (owning everything if it is
    /// not one of them).
    pub fn fixed(me: &str, live: Vec<String>) -> Self {
        let owners = Owners::alone(me);
        owners.set_live(live);
        owners
    }

    /// An instance `me` of `service` that follows the service's live instances in discovery
    /// until `stopping` fires. Whenever it cannot follow them (the watch cannot start, or
    /// ends), it owns everything until it follows them again.
    pub fn follow(
        me: &str,
        service: &str,
        discovery: SharedDiscovery,
        stopping: tokio_util::sync::CancellationToken,
    ) -> Self {
        let owners = Owners::alone(me);
        let view = owners.clone();
        let service = service.to_string();
        tokio::spawn(async move {
            while !stopping.is_cancelled() {
                match discovery.watch(&service).await {
                    Ok(mut changes) => loop {
                        tokio::select! {
                            _ = stopping.cancelled() => return,
                            change = changes.next() => match change {
                                Some(live) => view.set_live(live.into_iter().map(|r| r.instance).collect()),
                                None => break,
                            },
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot follow this service's instances"),
                }
                view.set_live(Vec::new());
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        });
        owners
    }

    /// Whether this instance owns `key`.
    pub fn owns(&self, key: &str) -> bool {
        let others = self.others.read().unwrap_or_else(|p| p.into_inner());
        let Some(others) = others.as_ref() else {
            return true;
        };
        let mine = score(&self.me, key);
        others.iter().all(|other| score(other, key) < mine)
    }

    fn set_live(&self, live: Vec<String>) {
        let seen = live.iter().any(|i| **i == *self.me);
        let others = seen.then(|| live.into_iter().filter(|i| **i != *self.me).collect());
        *self.others.write().unwrap_or_else(|p| p.into_inner()) = others;
    }
}

/// The rendezvous score of `instance` for `key` (the same in every build and process).
fn score(instance: &str, key: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(instance.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(instances: &[&str]) -> Vec<Owners> {
        let live: Vec<String> = instances.iter().map(|i| i.to_string()).collect();
        instances
            .iter()
            .map(|me| Owners::fixed(me, live.clone()))
            .collect()
    }

    #[test]
    fn every_key_has_exactly_one_owner_and_the_work_is_shared() {
        let owners = views(&["a", "b", "c"]);
        let mut counts = [0usize; 3];
        for n in 0..3_000 {
            let key = format!("webhook-{n}");
            let which: Vec<usize> = (0..3).filter(|i| owners[*i].owns(&key)).collect();
            assert_eq!(which.len(), 1, "{key} owned by {which:?}");
            counts[which[0]] += 1;
        }
        assert!(
            counts.iter().all(|c| (800..1_200).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn an_instance_gone_hands_on_only_its_own_keys() {
        let before = views(&["a", "b", "c"]);
        let after = views(&["a", "b"]);
        for n in 0..1_000 {
            let key = format!("k{n}");
            for i in 0..2 {
                if before[i].owns(&key) {
                    assert!(after[i].owns(&key), "{key} moved away from a live owner");
                }
            }
            if before[2].owns(&key) {
                assert!(after[0].owns(&key) != after[1].owns(&key));
            }
        }
        assert!(Owners::alone("a").owns("anything"));
    }

    #[test]
    fn an_instance_not_yet_seen_among_the_live_owns_everything() {
        let unseen = Owners::fixed("d", vec!["a".into(), "b".into()]);
        assert!((0..100).all(|n| unseen.owns(&format!("k{n}"))));
    }
}
