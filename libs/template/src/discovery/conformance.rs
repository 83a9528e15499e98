//! The discovery conformance suite: what every [`Discovery`] backend must do.

use std::time::Duration;

use futures::StreamExt;

use super::{Discovery, Protocol, Registration};

fn registration(service: &str, instance: &str, port: u16) -> Registration {
    Registration {
        service: service.to_string(),
        instance: instance.to_string(),
        address: format!("127.0.0.1:{port}"),
        protocol: Protocol::Grpc,
        zone: "z1".into(),
        version: "test".into(),
        routes: vec!["/v1/things".into()],
    }
}

/// Runs every check with service names under `prefix`.
pub async fn run_all(discovery: &dyn Discovery, prefix: &str) {
    registrations_resolve_by_service(discovery, prefix).await;
    deregistering_removes_at_once(discovery, prefix).await;
    an_instance_that_stops_heartbeating_expires_and_watchers_see_it(discovery, prefix).await;
}

/// Registered instances resolve under their service only, with every field.
pub async fn registrations_resolve_by_service(d: &dyn Discovery, p: &str) {
    let cards = format!("{p}cards");
    let ledger = format!("{p}ledger");
    let a = registration(&cards, "a", 1);
    d.register(&a, Duration::from_secs(30)).await.unwrap();
    d.register(&registration(&cards, "b", 2), Duration::from_secs(30))
        .await
        .unwrap();
    d.register(&registration(&ledger, "c", 3), Duration::from_secs(30))
        .await
        .unwrap();
    let found = d.resolve(&cards).await.unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0], a);
    assert_eq!(d.resolve(&ledger).await.unwrap().len(), 1);
    assert!(d.resolve(&format!("{p}nobody")).await.unwrap().is_empty());
}

/// A graceful shutdown's deregistration is seen at once.
pub async fn deregistering_removes_at_once(d: &dyn Discovery, p: &str) {
    let service = format!("{p}fx");
    d.register(&registration(&service, "x", 4), Duration::from_secs(30))
        .await
        .unwrap();
    d.deregister(&service, "x").await.unwrap();
    assert!(d.resolve(&service).await.unwrap().is_empty());
}

/// Without heartbeats a registration vanishes after its TTL; watchers are told.
pub async fn an_instance_that_stops_heartbeating_expires_and_watchers_see_it(
    d: &dyn Discovery,
    p: &str,
) {
    let service = format!("{p}feed");
    let mut watch = d.watch(&service).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_empty());
    d.register(&registration(&service, "dies", 5), Duration::from_secs(2))
        .await
        .unwrap();
    let up = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(up.len(), 1);
    let gone = tokio::time::timeout(Duration::from_secs(8), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(gone.is_empty(), "the dead instance expired");
    assert!(d.resolve(&service).await.unwrap().is_empty());
}
