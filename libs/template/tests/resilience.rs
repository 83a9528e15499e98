//! The client and server stack against the failures it guards against, with in-process probe
//! instances that can be slowed down or broken.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sterling_proto::testing::v1::ProbeRequest;
use sterling_proto::testing::v1::probe_client::ProbeClient;
use sterling_template::Error;
use sterling_template::client::GrpcChannel;
use sterling_template::client::policy::ClientPolicy;
use sterling_template::context::RequestContext;
use sterling_template::discovery::{Protocol, Registration};
use sterling_template::platform::{Platform, PlatformConfig};
use sterling_template::testing::{Behaviour, ProbeInstance, start_probe, start_probe_at};

/// The tests measure latency and share two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn platform(dir: &std::path::Path) -> Platform {
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.to_path_buf();
    config.durability = sterling_storage::embedded::Durability::Normal;
    Platform::embedded(config).unwrap()
}

fn request() -> ProbeRequest {
    ProbeRequest {
        payload: "x".into(),
        downstream: String::new(),
    }
}

async fn client(
    platform: &Platform,
    service: &str,
    policy: ClientPolicy,
) -> ProbeClient<GrpcChannel> {
    ProbeClient::new(
        GrpcChannel::connect_with(platform.discovery.clone(), service, policy)
            .await
            .unwrap()
            .calling_as(&platform.identity, sterling_template::OPERATOR),
    )
}

async fn three(
    platform: &Platform,
    service: &'static str,
    behaviours: [Behaviour; 3],
) -> Vec<ProbeInstance> {
    let mut instances = Vec::new();
    for (i, b) in behaviours.into_iter().enumerate() {
        instances.push(
            start_probe(platform, service, &format!("{service}-{i}"), b, None)
                .await
                .unwrap(),
        );
    }
    instances
}

fn fast() -> Behaviour {
    Behaviour {
        delay: Duration::from_millis(1),
        ..Behaviour::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answering_errors_is_ejected() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let broken = Behaviour {
        fail: Some(tonic::Code::Internal),
        ..fast()
    };
    let instances = three(&platform, "probe-eject", [fast(), fast(), broken]).await;
    // Plain writes: never retried, so every failure the broken instance causes is seen.
    let mut probe = client(&platform, "probe-eject", ClientPolicy::default()).await;
    let mut failures_after_warm_up = 0;
    for i in 0..1000 {
        if probe.write(request()).await.is_err() && i >= 100 {
            failures_after_warm_up += 1;
        }
    }
    assert!(
        failures_after_warm_up < 9,
        "{failures_after_warm_up} of 900 calls failed after ejection"
    );
    let broken_calls = instances[2].counters.received.load(Ordering::SeqCst);
    assert!(
        broken_calls < 50,
        "the broken instance still got {broken_calls} calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_moves_away_from_a_slow_instance() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let slow = Behaviour {
        delay: Duration::from_millis(51),
        ..Behaviour::default()
    };
    let instances = three(&platform, "probe-slow", [fast(), fast(), slow]).await;
    let probe = client(&platform, "probe-slow", ClientPolicy::default()).await;
    // Four callers at once, so the balancer sees load and latency.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut probe = probe.clone();
        tasks.push(tokio::spawn(async move {
            let mut by_instance: HashMap<String, u32> = HashMap::new();
            for _ in 0..150 {
                let reply = probe.write(request()).await.unwrap().into_inner();
                *by_instance.entry(reply.instance).or_default() += 1;
            }
            by_instance
        }));
    }
    let mut total: HashMap<String, u32> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    let slow_share = *total.get(&instances[2].name).unwrap_or(&0) as f64 / 600.0;
    assert!(
        slow_share < 0.05,
        "the slow instance got {:.1}% of calls: {total:?}",
        slow_share * 100.0
    );
    // Fewer than 1% of calls landed on it, so the 99th percentile is a fast instance's.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_cuts_the_tail() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let tail = Behaviour {
        delay: Duration::from_millis(1),
        tail: Some((0.04, Duration::from_millis(120))),
        ..Behaviour::default()
    };
    three(&platform, "probe-tail", [tail.clone(), tail.clone(), tail]).await;
    let policy = ClientPolicy {
        hedge_percentile: 0.9,
        hedge_min_samples: 10,
        ..ClientPolicy::default()
    };
    let mut probe = client(&platform, "probe-tail", policy).await;
    // The client learns the usual latency of reads before it hedges them.
    for _ in 0..20 {
        probe.read(request()).await.unwrap();
    }
    // Writes are never hedged; reads are. Same instances, same tail: about 32 of 800 writes
    // take the 120 ms tail; a read does only if its hedge does too (about 1 of 800). Enough
    // calls that chance alone does not decide the comparison below.
    let slow = Duration::from_millis(100);
    let (mut slow_writes, mut slow_reads) = (0, 0);
    for _ in 0..800 {
        let started = Instant::now();
        probe.write(request()).await.unwrap();
        slow_writes += usize::from(started.elapsed() >= slow);
        let started = Instant::now();
        probe.read(request()).await.unwrap();
        slow_reads += usize::from(started.elapsed() >= slow);
    }
    assert!(
        slow_writes >= 12,
        "the tail shows on writes: {slow_writes} of 800"
    );
    // Judged against the writes of the same run (a loaded machine slows both): hedging must
    // cut the tail at least threefold (it cuts it about twentyfold).
    assert!(
        slow_reads * 3 <= slow_writes,
        "hedged reads still took the tail {slow_reads} times (writes: {slow_writes})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_travels_and_giving_up_cancels_downstream() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let leaf = start_probe(
        &platform,
        "probe-leaf",
        "leaf",
        Behaviour {
            delay: Duration::from_millis(500),
            ..Behaviour::default()
        },
        None,
    )
    .await
    .unwrap();
    let middle = start_probe(
        &platform,
        "probe-middle",
        "middle",
        Behaviour::default(),
        Some(("probe-leaf", ClientPolicy::default())),
    )
    .await
    .unwrap();
    let mut probe = client(&platform, "probe-middle", ClientPolicy::default()).await;
    let caller = RequestContext::new_root(None, Some(Duration::from_millis(30)));
    let started = Instant::now();
    let outcome = caller
        .scope(probe.write(ProbeRequest {
            payload: "x".into(),
            downstream: "probe-leaf".into(),
        }))
        .await;
    let error = Error::from(outcome.unwrap_err());
    assert_eq!(error.code(), "timeout");
    assert!(started.elapsed() < Duration::from_millis(500));
    // Each hop saw at most the caller's 30 ms.
    for hop in [&middle, &leaf] {
        let seen = hop.counters.min_deadline_us.load(Ordering::SeqCst);
        assert!(seen <= 30_000, "{} saw a deadline of {seen} us", hop.name);
    }
    // The leaf's handler was dropped, not run to completion.
    let deadline = Instant::now() + Duration::from_secs(2);
    while leaf.counters.cancelled.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(leaf.counters.received.load(Ordering::SeqCst), 1);
    assert_eq!(leaf.counters.cancelled.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        leaf.counters.finished.load(Ordering::SeqCst),
        0,
        "the leaf never finished"
    );
    assert_eq!(middle.counters.cancelled.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_do_not_amplify_across_three_hops() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    // A tight budget so that it shows within a short test: retries add at most 10% of calls
    // plus 1 per second.
    let policy = ClientPolicy {
        retry_ratio: 0.1,
        retry_min_per_second: 1,
        ..ClientPolicy::default()
    };
    let c = start_probe(
        &platform,
        "probe-c",
        "c",
        Behaviour {
            fail: Some(tonic::Code::Unavailable),
            ..Behaviour::default()
        },
        None,
    )
    .await
    .unwrap();
    let b = start_probe(
        &platform,
        "probe-b",
        "b",
        Behaviour::default(),
        Some(("probe-c", policy.clone())),
    )
    .await
    .unwrap();
    let mut a = client(&platform, "probe-b", policy).await;
    let calls = 200u64;
    for _ in 0..calls {
        let outcome = a
            .read(ProbeRequest {
                payload: "x".into(),
                downstream: "probe-c".into(),
            })
            .await;
        assert!(outcome.is_err());
    }
    let at_b = b.counters.received.load(Ordering::SeqCst);
    let at_c = c.counters.received.load(Ordering::SeqCst);
    // Unbounded, three attempts per hop would reach c 9 times per call (1,800 here).
    assert!(
        at_b <= calls + calls / 10 + 12,
        "b got {at_b} calls for {calls}"
    );
    assert!(at_c <= calls * 3 / 2, "c got {at_c} calls for {calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_server_sheds_at_once_and_recovers() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::from_env().unwrap();
    config.data_dir = dir.path().to_path_buf();
    config.max_in_flight = 4;
    let platform = Platform::embedded(config).unwrap();
    let slow = start_probe(
        &platform,
        "probe-busy",
        "busy",
        Behaviour {
            delay: Duration::from_millis(300),
            ..Behaviour::default()
        },
        None,
    )
    .await
    .unwrap();
    let probe = client(&platform, "probe-busy", ClientPolicy::default()).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut probe = probe.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let outcome = probe.write(request()).await;
            (outcome.map_err(Error::from), started.elapsed())
        }));
    }
    let (mut served, mut shed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (Ok(_), _) => served += 1,
            (Err(e), elapsed) => {
                assert_eq!(e.code(), "unavailable.overloaded");
                assert!(e.retryable());
                assert!(
                    elapsed < Duration::from_millis(300),
                    "shed only after {elapsed:?}"
                );
                shed += 1;
            }
        }
    }
    assert_eq!(served, 4);
    assert_eq!(shed, 16);
    assert_eq!(
        slow.counters.received.load(Ordering::SeqCst),
        4,
        "shed requests never reached the handler"
    );
    // Load gone: served again.
    let mut probe = probe.clone();
    probe.write(request()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passed_is_refused_at_once() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let probe = start_probe(&platform, "probe-late", "late", fast(), None)
        .await
        .unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", probe.running.address))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raw = ProbeClient::new(channel);
    let mut late = tonic::Request::new(request());
    late.metadata_mut()
        .insert("grpc-timeout", "0m".parse().unwrap());
    let token = platform
        .identity
        .header_for(sterling_template::OPERATOR)
        .unwrap();
    late.metadata_mut()
        .insert("authorization", token.to_str().unwrap().parse().unwrap());
    let status = raw.read(late).await.unwrap_err();
    assert_eq!(Error::from(status).code(), "timeout");
    assert_eq!(probe.counters.received.load(Ordering::SeqCst), 0);
    let _ = Arc::new(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_listing_nobody_does_not_empty_a_channel() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let instance = start_probe(&platform, "probe-kept", "probe-kept-0", fast(), None)
        .await
        .unwrap();
    let registered = instance.running.registrations()[0].instance.clone();
    let mut probe = client(&platform, "probe-kept", ClientPolicy::default()).await;
    probe.write(request()).await.unwrap();
    // Every registration gone at once, as when the registry restarts past the TTL: the
    // channel keeps the instance it knew rather than failing every call until heartbeats
    // return.
    platform
        .discovery
        .deregister("probe-kept", &registered)
        .await
        .unwrap();
    assert!(
        platform
            .discovery
            .resolve("probe-kept")
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    probe
        .write(request())
        .await
        .expect("the last known instance still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_could_not_connect_is_sent_once_the_peer_is_up() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    // An instance listed at an address where nothing listens yet, as when a peer restarts
    // (or its name does not resolve for a moment).
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let listed = Registration {
        service: "probe-late".into(),
        instance: "probe-late-listed".into(),
        address: address.to_string(),
        protocol: Protocol::Grpc,
        zone: String::new(),
        version: String::new(),
        routes: Vec::new(),
    };
    platform
        .discovery
        .register(&listed, Duration::from_secs(60))
        .await
        .unwrap();
    let mut probe = client(&platform, "probe-late", ClientPolicy::default()).await;
    let late = {
        let platform = platform.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            start_probe_at(
                &platform,
                "probe-late",
                "probe-late-0",
                fast(),
                None,
                address,
            )
            .await
            .unwrap()
        })
    };
    // A plain write: never sent twice, but one that reached nobody may be sent again.
    probe
        .write(request())
        .await
        .expect("sent once the peer listens");
    let instance = late.await.unwrap();
    assert_eq!(instance.counters.received.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_reached_its_peer_is_not_sent_again() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let refusing = Behaviour {
        fail: Some(tonic::Code::Unavailable),
        ..fast()
    };
    let instance = start_probe(&platform, "probe-once", "probe-once-0", refusing, None)
        .await
        .unwrap();
    let mut probe = client(&platform, "probe-once", ClientPolicy::default()).await;
    let status = probe.write(request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(instance.counters.received.load(Ordering::SeqCst), 1);
}
