//! Strict configuration: every documented variable is honoured, and a value it does not
//! accept is an error naming the variable and what it accepts.

use std::collections::HashMap;
use std::time::Duration;

use sterling_storage::embedded::Durability;
use sterling_template::platform::config::{VARIABLES, misspelt_variables};
use sterling_template::platform::{
    BusSpec, DiscoverySpec, LogFormat, PlatformConfig, StorageBackend,
};

fn parse(
    vars: &[(&str, &str)],
) -> Result<PlatformConfig, sterling_template::platform::ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    PlatformConfig::from_lookup(&|name| map.get(name).cloned())
}

/// A value each variable must refuse (a typo or nonsense).
const MISSPELT: &[(&str, &str)] = &[
    ("STERLING_DURABILITY", "ful"),
    ("STERLING_CALL_TIMEOUT_MS", "2s"),
    ("STERLING_REGISTRATION_TTL_MS", "ten"),
    ("STERLING_DRAIN_TIMEOUT_MS", "-1"),
    ("STERLING_SHUTDOWN_GRACE_MS", "1.5"),
    ("STERLING_HEALTH_INTERVAL_MS", "5000ms"),
    ("STERLING_MAX_IN_FLIGHT", "0"),
    ("STERLING_CONSUMER_NICE", "20"),
    ("STERLING_NAMESPACE", "Sterling-Prod"),
    ("STERLING_STORAGE", "cassndra"),
    ("STERLING_CASSANDRA_NODES", "localhost"),
    ("STERLING_CASSANDRA_REPLICATION", "SimpleStrategy"),
    ("STERLING_CASSANDRA_CONSISTENCY", "quorom"),
    ("STERLING_NATS_URL", "127.0.0.1:4222"),
    ("STERLING_NATS_REPLICAS", "2"),
    ("STERLING_DISCOVERY", "natss"),
    ("STERLING_BUS", "nat"),
    ("STERLING_LISTEN", "localhost"),
    ("STERLING_METRICS_ADDR", ":9464"),
    ("STERLING_ADVERTISE_HOST", "cards:7000"),
    ("STERLING_LOG", "info,[bad"),
    ("STERLING_LOG_FORMAT", "jsn"),
    ("STERLING_IDENTITY_PUBLIC_KEY", "not-a-key"),
    // A token without the public key that checks it.
    ("STERLING_IDENTITY_TOKEN", "sst1.fx.0.00"),
];

#[test]
fn a_misspelt_value_of_each_variable_is_refused_by_name() {
    for (variable, value) in MISSPELT {
        let error = parse(&[(variable, value)]).expect_err(variable);
        assert_eq!(error.variable, *variable);
        let message = error.to_string();
        assert!(message.starts_with(&format!("{variable}=")), "{message}");
        assert!(message.contains("expected"), "{message}");
    }
    // Every variable that takes a constrained value is covered.
    for (variable, _, _) in VARIABLES {
        let free_text = [
            "STERLING_DATA_DIR",
            "STERLING_ZONE",
            "STERLING_IDENTITY_KEY_FILE",
            "STERLING_SERVICE",
        ];
        assert!(
            free_text.contains(variable) || MISSPELT.iter().any(|(v, _)| v == variable),
            "{variable} has no misspelt case"
        );
    }
}

#[test]
fn choices_name_what_they_accept() {
    let error = parse(&[("STERLING_STORAGE", "cassndra")]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "STERLING_STORAGE=\"cassndra\" is not valid: expected one of embedded, cassandra"
    );
}

#[test]
fn every_variable_is_honoured() {
    let config = parse(&[
        ("STERLING_DATA_DIR", "/tmp/x"),
        ("STERLING_DURABILITY", "normal"),
        ("STERLING_CALL_TIMEOUT_MS", "1234"),
        ("STERLING_REGISTRATION_TTL_MS", "4000"),
        ("STERLING_DRAIN_TIMEOUT_MS", "300"),
        ("STERLING_SHUTDOWN_GRACE_MS", "0"),
        ("STERLING_ZONE", "eu-west-2a"),
        ("STERLING_HEALTH_INTERVAL_MS", "250"),
        ("STERLING_MAX_IN_FLIGHT", "7"),
        ("STERLING_CONSUMER_NICE", "7"),
        ("STERLING_NAMESPACE", "acceptance_1"),
        ("STERLING_STORAGE", "cassandra"),
        ("STERLING_CASSANDRA_NODES", "10.0.0.1:9042, 10.0.0.2:9042"),
        (
            "STERLING_CASSANDRA_REPLICATION",
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3}",
        ),
        ("STERLING_CASSANDRA_CONSISTENCY", "quorum"),
        ("STERLING_NATS_URL", "nats://user:secret@10.0.0.3:4222"),
        ("STERLING_NATS_REPLICAS", "3"),
        ("STERLING_DISCOVERY", "static:cards=127.0.0.1:1"),
        ("STERLING_BUS", "embedded:/tmp/bus.sqlite"),
        ("STERLING_LISTEN", "0.0.0.0:8080"),
        ("STERLING_METRICS_ADDR", "127.0.0.1:9464"),
        ("STERLING_LOG", "debug"),
        ("STERLING_LOG_FORMAT", "pretty"),
    ])
    .unwrap();
    assert_eq!(config.data_dir, std::path::PathBuf::from("/tmp/x"));
    assert_eq!(config.durability, Durability::Normal);
    assert_eq!(config.call_timeout, Duration::from_millis(1234));
    assert_eq!(config.registration_ttl, Duration::from_millis(4000));
    assert_eq!(config.drain_timeout, Duration::from_millis(300));
    assert_eq!(config.shutdown_grace, Duration::ZERO);
    assert_eq!(config.zone, "eu-west-2a");
    assert_eq!(config.health_interval, Duration::from_millis(250));
    assert_eq!(config.max_in_flight, 7);
    assert_eq!(config.consumer_nice, 7);
    assert_eq!(config.namespace, "acceptance_1");
    let StorageBackend::Cassandra(cassandra) = &config.storage else {
        panic!("cassandra storage")
    };
    assert_eq!(cassandra.nodes, ["10.0.0.1:9042", "10.0.0.2:9042"]);
    assert!(cassandra.replication.contains("dc1"));
    assert_eq!(format!("{:?}", cassandra.consistency), "Quorum");
    assert_eq!(config.nats_replicas, 3);
    assert_eq!(
        config.discovery,
        DiscoverySpec::Static("cards=127.0.0.1:1".into())
    );
    assert_eq!(config.bus, BusSpec::Embedded("/tmp/bus.sqlite".into()));
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.metrics_addr.unwrap().to_string(), "127.0.0.1:9464");
    assert_eq!(config.log_filter, "debug");
    assert_eq!(config.log_format, LogFormat::Pretty);
    // Printed with the secret in the NATS URL hidden.
    let described = config.describe();
    assert_eq!(described["STERLING_NATS_URL"], "nats://***@10.0.0.3:4222");
}

#[test]
fn the_defaults_work_on_a_fresh_machine() {
    let config = parse(&[]).unwrap();
    assert!(matches!(config.storage, StorageBackend::Embedded));
    assert_eq!(
        config.discovery,
        DiscoverySpec::File("data/endpoints.json".into())
    );
    assert_eq!(config.bus, BusSpec::Embedded("data/bus.sqlite".into()));
    assert_eq!(config.health_interval, Duration::from_secs(5));
}

#[test]
fn a_variable_name_one_typo_away_is_caught() {
    let names = vec![
        "STERLING_STORGE".to_string(),
        "STERLING_CARD_API_BUGDET_MS".to_string(),
        "STERLING_TEST_ENGINES".to_string(),
        "PATH".to_string(),
    ];
    let known = vec!["STERLING_CARD_API_BUDGET_MS".to_string()];
    let found = misspelt_variables(&names, &known);
    assert_eq!(
        found,
        vec![
            (
                "STERLING_STORGE".to_string(),
                "STERLING_STORAGE".to_string()
            ),
            (
                "STERLING_CARD_API_BUGDET_MS".to_string(),
                "STERLING_CARD_API_BUDGET_MS".to_string()
            ),
        ]
    );
}

#[test]
fn an_advertised_host_is_a_name_or_an_address_without_a_port() {
    for host in [
        "cards",
        "10.0.3.7",
        "fd00::7",
        "sterling-cards.sterling.svc",
    ] {
        let config = parse(&[("STERLING_ADVERTISE_HOST", host)]).expect(host);
        assert_eq!(config.advertise_host.as_deref(), Some(host));
    }
    assert_eq!(parse(&[]).unwrap().advertise_host, None);
    for bad in ["cards:7000", "http://cards", "two words"] {
        let error = parse(&[("STERLING_ADVERTISE_HOST", bad)]).expect_err(bad);
        assert_eq!(error.variable, "STERLING_ADVERTISE_HOST");
    }
}
