//! The configuration as `sterling config` prints it: every variable with the value in
//! effect, secrets redacted.

use std::collections::BTreeMap;

use super::{BusSpec, DiscoverySpec, IdentitySpec, PlatformConfig, StorageBackend};

impl PlatformConfig {
    /// The effective configuration, one `NAME=value` per variable, secrets redacted.
    pub fn describe(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            out.insert(k.to_string(), v);
        };
        put("STERLING_DATA_DIR", self.data_dir.display().to_string());
        put(
            "STERLING_DURABILITY",
            format!("{:?}", self.durability).to_ascii_lowercase(),
        );
        put(
            "STERLING_CALL_TIMEOUT_MS",
            self.call_timeout.as_millis().to_string(),
        );
        put(
            "STERLING_REGISTRATION_TTL_MS",
            self.registration_ttl.as_millis().to_string(),
        );
        put(
            "STERLING_DRAIN_TIMEOUT_MS",
            self.drain_timeout.as_millis().to_string(),
        );
        put(
            "STERLING_SHUTDOWN_GRACE_MS",
            self.shutdown_grace.as_millis().to_string(),
        );
        put("STERLING_ZONE", self.zone.clone());
        put(
            "STERLING_HEALTH_INTERVAL_MS",
            self.health_interval.as_millis().to_string(),
        );
        put("STERLING_MAX_IN_FLIGHT", self.max_in_flight.to_string());
        put("STERLING_CONSUMER_NICE", self.consumer_nice.to_string());
        put("STERLING_NAMESPACE", self.namespace.clone());
        let storage = match self.storage {
            StorageBackend::Embedded => "embedded",
            StorageBackend::Cassandra(_) => "cassandra",
        };
        put("STERLING_STORAGE", storage.into());
        put("STERLING_CASSANDRA_NODES", self.cassandra.nodes.join(","));
        put(
            "STERLING_CASSANDRA_REPLICATION",
            self.cassandra.replication.clone(),
        );
        put(
            "STERLING_CASSANDRA_CONSISTENCY",
            format!("{:?}", self.cassandra.consistency),
        );
        put("STERLING_NATS_URL", redact_url(&self.nats_url));
        put("STERLING_NATS_REPLICAS", self.nats_replicas.to_string());
        put("STERLING_DISCOVERY", self.describe_discovery());
        put("STERLING_BUS", self.describe_bus());
        put("STERLING_LISTEN", self.listen.to_string());
        put(
            "STERLING_ADVERTISE_HOST",
            self.advertise_host.clone().unwrap_or_default(),
        );
        put(
            "STERLING_METRICS_ADDR",
            self.metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        );
        for (key, value) in self.describe_identity() {
            put(key, value);
        }
        put("STERLING_LOG", self.log_filter.clone());
        put(
            "STERLING_LOG_FORMAT",
            format!("{:?}", self.log_format).to_ascii_lowercase(),
        );
        for (key, value) in &self.settings {
            put(key, redact_setting(key, value));
        }
        out
    }

    fn describe_discovery(&self) -> String {
        match &self.discovery {
            DiscoverySpec::Nats => "nats".into(),
            DiscoverySpec::Embedded => "embedded".into(),
            DiscoverySpec::Static(list) => format!("static:{list}"),
            DiscoverySpec::File(path) => format!("file:{}", path.display()),
        }
    }

    fn describe_bus(&self) -> String {
        match &self.bus {
            BusSpec::Nats => "nats".into(),
            BusSpec::Embedded(path) => format!("embedded:{}", path.display()),
        }
    }

    /// The identity variables in effect: the key file, or the public key and whether a token
    /// was given (never the token).
    fn describe_identity(&self) -> [(&'static str, String); 3] {
        match &self.identity {
            IdentitySpec::InDataDir | IdentitySpec::KeyFile(_) => {
                let path = match &self.identity {
                    IdentitySpec::KeyFile(path) => path.display().to_string(),
                    _ => format!("<data>/{}", super::IDENTITY_KEY_FILE),
                };
                [
                    ("STERLING_IDENTITY_KEY_FILE", path),
                    ("STERLING_IDENTITY_PUBLIC_KEY", String::new()),
                    ("STERLING_IDENTITY_TOKEN", String::new()),
                ]
            }
            IdentitySpec::Given { public_key, token } => [
                ("STERLING_IDENTITY_KEY_FILE", String::new()),
                ("STERLING_IDENTITY_PUBLIC_KEY", public_key.clone()),
                (
                    "STERLING_IDENTITY_TOKEN",
                    if token.is_some() { "***" } else { "" }.into(),
                ),
            ],
        }
    }
}

/// `***` in place of a value whose name says it is a secret.
pub fn redact_setting(key: &str, value: &str) -> String {
    let key = key.to_ascii_uppercase();
    if ["SECRET", "PASSWORD", "TOKEN", "KEY"]
        .iter()
        .any(|s| key.contains(s))
    {
        "***".into()
    } else {
        value.to_string()
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
