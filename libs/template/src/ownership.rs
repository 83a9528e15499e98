//! Which instance of a service owns a piece of background work: rendezvous hashing over the
//! live instances discovery knows (each key goes to the instance whose hash of instance and
//! key is highest), so the instances of a service share work that every one of them can see
//! (a queue in their common store) without taking it twice, and with no lock.
//!
//! What an instance owns follows what it sees of itself in discovery: listed, its share;
//! listed before and no longer (stopping, deregistered, or its registration expired), nothing,
//! as the others no longer count it; never listed yet, nothing for [`UNSEEN_GRACE`] and
//! everything after it (discovery that never lists it, such as a static list); unable to follow
//! discovery, everything. While views differ for a moment, a key may have two owners (the work
//! is done twice, which is allowed: it is idempotent) or none (it waits until the dead
//! instance's registration expires); it is never lost.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::discovery::SharedDiscovery;

/// How long an instance that has never seen itself in discovery owns nothing: time for its
/// registration to appear; past it, discovery is taken not to list it and it owns everything.
pub const UNSEEN_GRACE: Duration = Duration::from_secs(10);

/// This instance's view of who owns what.
#[derive(Clone)]
pub struct Owners {
    me: Arc<str>,
    view: Arc<RwLock<View>>,
}

/// Where this instance stands in what it sees of discovery.
#[derive(Debug, Clone)]
enum View {
    /// Owns everything: the only instance, or discovery cannot be followed.
    Everything,
    /// Never listed yet, since this moment.
    Unseen(Instant),
    /// Listed, with these other live instances.
    Among(Vec<String>),
    /// Listed before and no longer: the others own everything.
    Gone,
}

impl Owners {
    /// An instance that owns everything (the only one, or one whose store no other shares).
    pub fn alone(me: &str) -> Self {
        Owners::with_view(me, View::Everything)
    }

    /// An instance `me` among the instances `live`, as they stand.
    pub fn fixed(me: &str, live: Vec<String>) -> Self {
        let owners = Owners::with_view(me, View::Unseen(Instant::now()));
        owners.see(live);
        owners
    }

    fn with_view(me: &str, view: View) -> Self {
        Owners {
            me: me.into(),
            view: Arc::new(RwLock::new(view)),
        }
    }

    /// An instance `me` of `service` that follows the service's live instances in discovery
    /// until `stopping` fires (owning everything whenever it cannot follow them).
    pub fn follow(
        me: &str,
        service: &str,
        discovery: SharedDiscovery,
        stopping: tokio_util::sync::CancellationToken,
    ) -> Self {
        let owners = Owners::with_view(me, View::Unseen(Instant::now()));
        let view = owners.clone();
        let service = service.to_string();
        tokio::spawn(async move {
            while !stopping.is_cancelled() {
                match discovery.watch(&service).await {
                    Ok(mut changes) => loop {
                        tokio::select! {
                            _ = stopping.cancelled() => return,
                            change = changes.next() => match change {
                                Some(live) => view.see(live.into_iter().map(|r| r.instance).collect()),
                                None => break,
                            },
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot follow this service's instances"),
                }
                view.set(View::Everything);
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        owners
    }

    /// Whether this instance owns `key`.
    pub fn owns(&self, key: &str) -> bool {
        match &*self.view.read().unwrap_or_else(|p| p.into_inner()) {
            View::Everything => true,
            View::Unseen(since) => since.elapsed() >= UNSEEN_GRACE,
            View::Gone => false,
            View::Among(others) => {
                let mine = score(&self.me, key);
                others.iter().all(|other| score(other, key) < mine)
            }
        }
    }

    /// Takes in the live instances as discovery lists them now.
    fn see(&self, live: Vec<String>) {
        let listed = live.iter().any(|i| **i == *self.me);
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        *view = match (&*view, listed) {
            (_, true) => View::Among(live.into_iter().filter(|i| **i != *self.me).collect()),
            (View::Unseen(since), false) => View::Unseen(*since),
            (View::Everything, false) => View::Unseen(Instant::now()),
            (View::Among(_) | View::Gone, false) => View::Gone,
        };
    }

    fn set(&self, view: View) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
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
    fn an_instance_never_listed_owns_nothing_for_a_while_then_everything() {
        let keys: Vec<String> = (0..100).map(|n| format!("k{n}")).collect();
        let unseen = Owners::fixed("d", vec!["a".into(), "b".into()]);
        assert!(keys.iter().all(|k| !unseen.owns(k)));
        unseen.set(View::Unseen(Instant::now() - UNSEEN_GRACE));
        unseen.see(vec!["a".into(), "b".into()]);
        assert!(keys.iter().all(|k| unseen.owns(k)));
    }

    #[test]
    fn an_instance_no_longer_listed_owns_nothing_and_one_listed_again_its_share() {
        let keys: Vec<String> = (0..100).map(|n| format!("k{n}")).collect();
        let owners = Owners::fixed("a", vec!["a".into(), "b".into()]);
        let share = keys.iter().filter(|k| owners.owns(k)).count();
        assert!(share > 0 && share < keys.len());
        // Stopping: deregistered, or its registration expired.
        owners.see(vec!["b".into()]);
        assert!(keys.iter().all(|k| !owners.owns(k)));
        owners.see(vec!["a".into(), "b".into()]);
        assert_eq!(keys.iter().filter(|k| owners.owns(k)).count(), share);
    }
}
