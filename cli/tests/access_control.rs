//! The locks inside, walked from the contracts: every gRPC method of every service of the bank
//! has an access rule; a call with no service identity, or with one that is tampered, expired
//! or signed by another bank, is `unauthenticated`; every caller the rule does not name (each
//! other service, the operator, a stranger) is `forbidden`; each caller it names gets past
//! the door. A new method without a rule fails here. The template's dead-letter contract is
//! walked on every service that consumes events: the operator alone may call it.

mod common;

use std::time::Duration;

use prost::Message;
use sterling::bank::SERVICES;
use sterling_template::OPERATOR;
use sterling_template::discovery::Protocol;
use sterling_template::identity::Identity;
use sterling_template::platform::dead_letters;
use sterling_template::server::access::Rule;

/// The operator's dead-letter contract, which the template adds to every consuming service.
const DEAD_LETTERS: &str = "sterling.operator.v1.DeadLetters";

/// gRPC's UNIMPLEMENTED: a service that consumes nothing does not serve dead letters.
const UNIMPLEMENTED: u32 = 12;

/// `CardProcessing` -> `card-processing`, the discovery name of a gRPC service.
fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// One raw gRPC call with an empty message; the status code it ends with (0 if the handler
/// answered with a body), and the stable error code.
async fn call(
    http: &reqwest::Client,
    address: &str,
    path: &str,
    token: Option<&str>,
) -> (u32, String) {
    let mut request = http
        .post(format!("http://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "2S")
        .body(vec![0u8; 5]);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.expect("the service answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let code = header("grpc-status").parse().unwrap_or(0);
    (code, header("sterling-error-code"))
}

const UNAUTHENTICATED: u32 = 16;
const PERMISSION_DENIED: u32 = 7;

/// Walks every method of the contract `full` served at `address` by `name`, under `rules`.
struct Door<'a> {
    http: &'a reqwest::Client,
    identity: &'a Identity,
    other_bank: &'a Identity,
    callers: &'a [&'a str],
}

impl Door<'_> {
    async fn walk(&self, name: &str, address: &str, full: &str, methods: &[&str], rules: &[Rule]) {
        let minute = Duration::from_secs(60);
        for method in methods {
            let path = format!("/{full}/{method}");
            let rule = rules
                .iter()
                .find(|r| r.method == *method)
                .unwrap_or_else(|| panic!("{path} has no access rule in {name}'s definition"));

            let good = self.identity.mint(OPERATOR, minute).unwrap();
            let tampered = good.replacen(OPERATOR, name, 1);
            let expired = self.identity.mint(OPERATOR, Duration::ZERO).unwrap();
            let foreign = self.other_bank.mint(OPERATOR, minute).unwrap();
            for token in [None, Some(&tampered), Some(&expired), Some(&foreign)] {
                let (code, error) =
                    call(self.http, address, &path, token.map(|t| t.as_str())).await;
                assert_eq!(code, UNAUTHENTICATED, "{path} with {token:?}");
                assert_eq!(error, "unauthorized.service_identity", "{path}");
            }
            for caller in self.callers {
                let token = self.identity.mint(caller, minute).unwrap();
                let (code, error) = call(self.http, address, &path, Some(&token)).await;
                if rule.allows(caller) {
                    // Past the door: whatever the handler makes of an empty request.
                    assert!(
                        error != "unauthorized.service_identity" && error != "forbidden.caller",
                        "{caller} may call {path} but got {code} {error}"
                    );
                } else {
                    assert_eq!(code, PERMISSION_DENIED, "{caller} on {path}: {error}");
                    assert_eq!(error, "forbidden.caller", "{caller} on {path}");
                }
            }
        }
    }
}

/// The gRPC address `name` is registered at.
async fn grpc_address(platform: &sterling_template::platform::Platform, name: &str) -> String {
    platform
        .discovery
        .resolve(name)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.protocol == Protocol::Grpc)
        .unwrap_or_else(|| panic!("{name} is not serving gRPC"))
        .address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_of_every_service_keeps_its_door() {
    let dir = tempfile::tempdir().unwrap();
    let bank = common::start(dir.path(), &[]).await;
    let platform = &bank.bank.platform;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let other_bank = Identity::load_or_create(&dir.path().join("other-bank.key")).unwrap();
    let callers: Vec<&str> = SERVICES
        .iter()
        .map(|s| s.name)
        .chain([OPERATOR, "stranger"])
        .collect();
    let door = Door {
        http: &http,
        identity: &platform.identity,
        other_bank: &other_bank,
        callers: &callers,
    };

    let descriptors =
        prost_types::FileDescriptorSet::decode(sterling_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut checked = 0;
    for file in &descriptors.file {
        for contract in &file.service {
            let full = format!("{}.{}", file.package(), contract.name());
            if file.package().starts_with("sterling.testing.") {
                continue; // test fixtures, not a service of the bank
            }
            let methods: Vec<&str> = contract.method.iter().map(|m| m.name()).collect();
            if full == DEAD_LETTERS {
                // The template's own contract, served by every service that consumes events.
                let operator = platform
                    .identity
                    .mint(OPERATOR, Duration::from_secs(60))
                    .unwrap();
                let list = format!("/{full}/ListDeadLetters");
                let mut consuming = Vec::new();
                for definition in SERVICES {
                    let registered = platform.discovery.resolve(definition.name).await.unwrap();
                    if !registered.iter().any(|r| r.protocol == Protocol::Grpc) {
                        continue;
                    }
                    let address = grpc_address(platform, definition.name).await;
                    if call(&http, &address, &list, Some(&operator)).await.0 == UNIMPLEMENTED {
                        continue;
                    }
                    door.walk(
                        definition.name,
                        &address,
                        &full,
                        &methods,
                        dead_letters::RULES,
                    )
                    .await;
                    consuming.push(definition.name);
                    checked += methods.len();
                }
                assert!(
                    ["feed", "push", "webhooks"]
                        .iter()
                        .all(|s| consuming.contains(s)),
                    "the consuming services serve dead letters: {consuming:?}"
                );
                continue;
            }
            let name = kebab(contract.name());
            let definition = SERVICES
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{full} is served by no service named {name}"));
            for rule in definition.access {
                assert!(
                    methods.contains(&rule.method),
                    "{name}'s rule for {} names no method of {full}",
                    rule.method
                );
            }
            let address = grpc_address(platform, &name).await;
            door.walk(&name, &address, &full, &methods, definition.access)
                .await;
            checked += methods.len();
        }
    }
    assert!(checked >= 20, "only {checked} methods walked");
    eprintln!("{checked} methods walked, {} callers each", callers.len());
    bank.bank.stop().await;
}
