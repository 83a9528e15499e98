//! `sterling`: run the bank, seed a customer, swipe a card.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sterling::bank::{self, Bank, BankOptions, Engines, SERVICES};
use sterling::bench;
use sterling::load;
use sterling::operate::{self, Reach, show_money};
use sterling::processor::{self, Kind, MessageArgs};
use sterling::reconcile::{self, Heard, Reconciler};
use sterling::tools::{self, Clients};
use sterling_money::{Currency, Money};
use sterling_storage::embedded::Durability;
use sterling_template::ServiceDefinition;
use sterling_template::discovery::{Protocol, SharedDiscovery};
use sterling_template::platform::config::redact_setting;
use sterling_template::platform::process::{EXIT_CONFIG, checked_config, serve};
use sterling_template::platform::{PlatformConfig, open_discovery, shutdown_signal};
use sterling_template::telemetry;

#[derive(Parser)]
#[command(name = "sterling", about = "Run and use the Sterling bank", version)]
struct Cli {
    /// Data directory (embedded stores, endpoints.json).
    #[arg(long, global = true, env = "STERLING_DATA_DIR", default_value = "data")]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum New {
    /// A new service: its contract, its crate (handlers, store, migrations, a test) and its
    /// registration; it builds, starts with the bank and passes its test as made.
    Service {
        /// Service name: a-z, 0-9 and hyphens, e.g. loyalty-points.
        name: String,
        /// Root of the Sterling checkout.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole bank in this process.
    Up {
        /// First gRPC port; services take consecutive ports.
        #[arg(long, default_value_t = 7101)]
        grpc_base_port: u16,
        /// card-api's HTTP port.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// The gateway's HTTP port: the public API.
        #[arg(long, default_value_t = 8000)]
        gateway_port: u16,
        /// Services not to start, comma separated (run them yourself, with the bus and
        /// discovery on NATS: `--engines nats` or `real`).
        #[arg(long, value_delimiter = ',')]
        except: Vec<String>,
        /// embedded (nothing to install), nats (bus and discovery on NATS) or real
        /// (Cassandra + NATS; start them with deploy/local/*.sh up).
        #[arg(long, default_value = "embedded")]
        engines: String,
        /// Start, check every service is ready, print where each listens, stop; fail if one
        /// is not ready.
        #[arg(long)]
        check: bool,
    },
    /// Make something new in this checkout.
    New {
        #[command(subcommand)]
        what: New,
    },
    /// Print the effective configuration (every `STERLING_*` variable and each service's
    /// settings, secrets redacted); a value that is not accepted is an error naming it.
    Config,
    /// Run one service of the bank as its own process (as a container or a unit would), on
    /// the discovery and bus the configuration names.
    Serve {
        /// The service, e.g. `cards` (default: `STERLING_SERVICE`, set in each image).
        #[arg(env = "STERLING_SERVICE")]
        service: String,
    },
    /// Exit 0 if the service on this machine at `STERLING_LISTEN`'s port says it is serving
    /// (gRPC health, or `GET /healthz`): the containers' healthcheck.
    Probe,
    /// Print, as JSON, every service with the callers its access rules allow (what the
    /// Kubernetes NetworkPolicies admit; `deploy/k8s/generate.py` reads it).
    Access,
    /// Open a funded test customer account with a card.
    Seed {
        /// Account currency.
        #[arg(long, default_value = "GBP")]
        currency: String,
        /// Opening balance in major units.
        #[arg(long, default_value = "100.00")]
        amount: String,
        /// Idempotency key (default: a fresh one).
        #[arg(long)]
        key: Option<String>,
    },
    /// Play the card processor: sign an authorisation and send it to card-api.
    Pay {
        /// Card token.
        #[arg(long)]
        card: String,
        /// Amount in major units, e.g. 3.50.
        #[arg(long)]
        amount: String,
        /// Currency the merchant charges in.
        #[arg(long, default_value = "GBP")]
        currency: String,
        /// Merchant descriptor.
        #[arg(long, default_value = "STERLING TEST SHOP LONDON GB")]
        merchant: String,
        /// Merchant category code.
        #[arg(long, default_value = "5812")]
        mcc: String,
        /// Processor authorisation id (default: a fresh one). Send one twice to see idempotence.
        #[arg(long)]
        id: Option<String>,
        /// Shared webhook secret.
        #[arg(long, env = "STERLING_CARD_API_SECRET", default_value = card_api::DEVELOPMENT_SECRET)]
        secret: String,
        /// Append the answer, as heard, to this JSON-lines file (for `sterling reconcile`).
        #[arg(long)]
        answers: Option<PathBuf>,
    },
    /// Play the card processor: clear an authorisation (post the held amount or another).
    Clear {
        #[command(flatten)]
        message: MessageArgs,
        /// The last clearing: release whatever is still held.
        #[arg(long = "final")]
        last: bool,
    },
    /// Play the card processor: reverse an authorisation, fully or in part.
    Reverse {
        #[command(flatten)]
        message: MessageArgs,
    },
    /// Play the card processor: refund money to a card.
    Refund {
        #[command(flatten)]
        message: MessageArgs,
    },
    /// Play the card processor: post a payment approved offline (no authorisation).
    ForcePost {
        #[command(flatten)]
        message: MessageArgs,
    },
    /// Play the card processor: raise the amount held for an authorisation.
    Increment {
        #[command(flatten)]
        message: MessageArgs,
    },
    /// Check the processor's settlement file of a day against the ledger; lists every mismatch
    /// and exits non-zero if there is one.
    Settlement {
        /// CSV: message_id,type,amount,currency (type: clearing, refund or force_post).
        #[arg(long)]
        file: PathBuf,
        /// The UTC day it settles, YYYY-MM-DD (default: today).
        #[arg(long)]
        day: Option<String>,
    },
    /// An account's postings with the running balance, over the last days.
    Statement {
        /// Ledger account id.
        account: String,
        /// How many UTC days back, today included.
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// Check the authorisation rules (one answer per id, money matching the answer, no
    /// over-approval, nothing half-done) against the answers a processor heard; prints every
    /// violation with the ids involved and exits non-zero if there is one.
    Reconcile {
        /// JSON lines, one answer each, as card-api sent them (`sterling pay --answers`).
        #[arg(long)]
        answers: PathBuf,
        /// Wait up to this many seconds for the bank to settle before reporting.
        #[arg(long, default_value_t = 10)]
        settle_secs: u64,
        /// The file holds every authorisation of the accounts involved (then the ledger's
        /// held amount must equal the approvals exactly).
        #[arg(long)]
        complete: bool,
        /// Shared webhook secret (card-api's records are read with a signed GET).
        #[arg(long, env = "STERLING_CARD_API_SECRET", default_value = card_api::DEVELOPMENT_SECRET)]
        secret: String,
    },
    /// Measure authorisation latency and throughput through card-api on a bank started here.
    Bench {
        /// Number of authorisations.
        #[arg(long, default_value_t = 2000)]
        payments: usize,
        /// Authorisations in flight at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Embedded store durability: full (fsync every commit) or normal.
        #[arg(long, default_value = "full")]
        durability: String,
        /// embedded, nats or real (Cassandra + NATS).
        #[arg(long, default_value = "embedded")]
        engines: String,
    },
    /// Offer authorisations at fixed arrival rates (open loop) to a bank started here, and
    /// time each answer and each approval's feed item, push and webhook; a rate is sustained
    /// only if that asynchronous path keeps up.
    Load {
        /// Arrival rates, authorisations per second, in order (stops after the first one
        /// not sustained).
        #[arg(long, value_delimiter = ',', default_values_t = [250, 500, 1000])]
        rates: Vec<u32>,
        /// Seconds each rate is offered.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Customers the payments are spread over.
        #[arg(long, default_value_t = 100)]
        customers: usize,
        /// Every approval's effects must have happened within this many milliseconds of the
        /// last authorisation for the rate to count as sustained.
        #[arg(long, default_value_t = 1000)]
        settle_ms: u64,
        /// Embedded store durability: full (fsync every commit) or normal.
        #[arg(long, default_value = "full")]
        durability: String,
        /// embedded, nats or real (Cassandra + NATS).
        #[arg(long, default_value = "embedded")]
        engines: String,
        /// Write the bank's metrics (Prometheus text) to this file after each rate.
        #[arg(long)]
        metrics: Option<PathBuf>,
    },
    /// Measure one unary call through the template's full client and server stack against
    /// bare tonic, in the same run.
    BenchHop {
        /// Calls each way.
        #[arg(long, default_value_t = 5000)]
        calls: usize,
        /// Also measure the grpc-go peer listening here (bench/grpc-go-probe), in the same
        /// alternating blocks.
        #[arg(long)]
        grpc_go: Option<std::net::SocketAddr>,
    },
    /// Measure clearings from many customers all settling into the one settlement account,
    /// with the bank's own accounts on one compare-and-set and on shards, alternated.
    BenchSettlement {
        /// Customers, one payment and one clearing each.
        #[arg(long, default_value_t = 1000)]
        customers: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// embedded, nats or real (Cassandra + NATS).
        #[arg(long, default_value = "real")]
        engines: String,
        /// Rounds of the two modes.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// Measure swipe-to-push latency: authorisation sent to notification received by the push
    /// gateway, on a bank started here.
    BenchPush {
        /// Swipes, one at a time.
        #[arg(long, default_value_t = 300)]
        swipes: usize,
        /// Embedded store durability: full or normal.
        #[arg(long, default_value = "full")]
        durability: String,
    },
    /// Freeze a card.
    Freeze {
        /// Card token.
        card: String,
    },
    /// Unfreeze a card.
    Unfreeze {
        /// Card token.
        card: String,
    },
    /// Show an account's balance.
    Balance {
        /// Ledger account id.
        account: String,
    },
    /// List an account's transactions, newest first, a page at a time.
    Transactions {
        /// Ledger account id.
        account: String,
        /// How many on this page.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Where the page starts: the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// List an account's feed, newest first, a page at a time.
    Feed {
        /// Ledger account id.
        account: String,
        /// How many on this page.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Devices that receive push notifications.
    Devices {
        #[command(subcommand)]
        command: Devices,
    },
    /// Webhooks: URLs that receive an account's events, signed.
    Webhooks {
        #[command(subcommand)]
        command: Webhooks,
    },
    /// Events consumers gave up on: list them, show one, hand one to its consumer again.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetters,
    },
    /// Service identities: tokens from the bank's identity authority.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Print a token naming a service (or `operator`), for a deployed process
    /// (`STERLING_IDENTITY_TOKEN`) or a tool such as grpcurl (`authorization: Bearer <token>`).
    Mint {
        /// The service, or `operator`.
        caller: String,
        /// How long it is valid, in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Print the authority's public key (`STERLING_IDENTITY_PUBLIC_KEY` of deployed processes).
    PublicKey,
}

#[derive(Subcommand)]
enum Devices {
    /// Register a device for an account's notifications (idempotent on the token).
    Register {
        /// Ledger account id.
        #[arg(long)]
        account: String,
        /// The device's push token.
        #[arg(long)]
        token: String,
        /// ios or android.
        #[arg(long, default_value = "ios")]
        platform: String,
    },
    /// List an account's devices.
    List {
        /// Ledger account id.
        account: String,
    },
}

#[derive(Subcommand)]
enum DeadLetters {
    /// The events consumers gave up on and not replayed since, a line each.
    List {
        /// Only this consumer's (its durable name, e.g. `webhooks`).
        #[arg(long)]
        consumer: Option<String>,
        /// Also those replayed since.
        #[arg(long)]
        all: bool,
    },
    /// One dead-lettered event: every time it was given up on, and every replay.
    Show {
        /// The consumer (durable name).
        consumer: String,
        /// The event's id.
        event_id: String,
    },
    /// Hand a dead-lettered event to its consumer again (that consumer only; idempotent).
    Replay {
        /// The consumer (durable name).
        consumer: String,
        /// The event's id.
        event_id: String,
    },
}

#[derive(Subcommand)]
enum Webhooks {
    /// Register a URL for an account's events; prints the signing secret once.
    Register {
        /// Ledger account id.
        #[arg(long)]
        account: String,
        /// Where events are POSTed.
        #[arg(long)]
        url: String,
        /// Idempotency key (default: a fresh one).
        #[arg(long)]
        key: Option<String>,
    },
    /// List an account's webhooks.
    List {
        /// Ledger account id.
        account: String,
    },
    /// A webhook's latest deliveries and how each went.
    Deliveries {
        /// Webhook id.
        webhook: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// Finds the running bank: `STERLING_DISCOVERY` (e.g. `nats`), else what the bank under the
/// data directory records (NATS, or the `endpoints.json` it writes); the operator's identity
/// from the bank's authority (`STERLING_IDENTITY_*`).
async fn reach() -> anyhow::Result<Reach> {
    let config = PlatformConfig::from_env()?;
    let spec = bank::discovery_of(&config)?;
    Ok(Reach {
        discovery: open_discovery(&spec, &config).await?,
        identity: config.open_identity()?,
    })
}

/// card-api's base URL, found through discovery.
async fn card_api_url(discovery: &SharedDiscovery) -> anyhow::Result<String> {
    let card_api = discovery
        .resolve("card-api")
        .await?
        .into_iter()
        .find(|r| r.protocol == Protocol::Http)
        .ok_or_else(|| anyhow::anyhow!("card-api is not running (no endpoints.json entry)"))?;
    Ok(format!("http://{}", card_api.address))
}

/// Says which services the bank expects from outside and the exact command for each.
fn print_expected(except: &[String], engines: Engines, data: &std::path::Path) {
    if except.is_empty() {
        return;
    }
    if engines == Engines::Embedded {
        println!(
            "Expected from outside: {}. They cannot join an embedded bank: restart with --engines nats (or real).",
            except.join(", ")
        );
        return;
    }
    let storage = if engines == Engines::Real {
        "STERLING_STORAGE=cassandra "
    } else {
        ""
    };
    println!(
        "Expected from outside (they find the bank through {}):",
        data.display()
    );
    for service in except {
        println!(
            "  {service:<16} {storage}STERLING_DATA_DIR={} cargo run -p {service}",
            data.display()
        );
    }
}

/// The checked configuration of a process running `definitions`; a bad value stops the
/// process with a message naming it (exit status 78).
fn configured(definitions: &[ServiceDefinition]) -> PlatformConfig {
    match checked_config(definitions) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("sterling: configuration: {message}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

fn parse_engines(name: &str) -> anyhow::Result<Engines> {
    Ok(match name {
        "embedded" => Engines::Embedded,
        "nats" => Engines::Nats,
        "real" => Engines::Real,
        other => anyhow::bail!("unknown engines {other}: embedded, nats or real"),
    })
}

fn parse_durability(name: &str) -> anyhow::Result<Durability> {
    Ok(match name {
        "full" => Durability::Full,
        "normal" => Durability::Normal,
        other => anyhow::bail!("unknown durability {other}: full or normal"),
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `--data` is the data directory of every configuration read below (discovery, bus,
    // stores); set before any thread exists.
    // SAFETY: no other thread runs yet, so nothing reads the environment concurrently.
    unsafe { std::env::set_var("STERLING_DATA_DIR", &cli.data) };
    let outcome = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sterling: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::New {
            what: New::Service { name, root },
        } => new_service(&root, &name),
        Command::Config => {
            print_config();
            Ok(())
        }
        Command::Serve { service } => serve_one(&service).await,
        Command::Probe => sterling::deploy::probe(PlatformConfig::from_env()?.listen).await,
        Command::Access => {
            let all: Vec<ServiceDefinition> = SERVICES
                .iter()
                .chain(bank::DEVELOPMENT_FAKES)
                .copied()
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&sterling::deploy::access(&all))?
            );
            Ok(())
        }
        Command::Up {
            grpc_base_port,
            http_port,
            gateway_port,
            except,
            engines,
            check,
        } => {
            let options = UpOptions {
                grpc_base_port,
                http_port,
                gateway_port,
                except,
                engines: parse_engines(&engines)?,
                check,
            };
            up(options, &cli.data).await
        }
        Command::Seed {
            currency,
            amount,
            key,
        } => seed(&currency, &amount, key).await,
        Command::Pay {
            card,
            amount,
            currency,
            merchant,
            mcc,
            id,
            secret,
            answers,
        } => {
            let currency = Currency::from_code(&currency)?;
            let payment = Payment {
                card,
                amount: Money::parse(&amount, currency)?,
                merchant,
                mcc,
                id: id.unwrap_or_else(|| format!("auth_{}", uuid::Uuid::now_v7().simple())),
            };
            pay(payment, &secret, answers.as_deref()).await
        }
        other => run_tool(other, &cli.data).await,
    }
}

/// The commands that act on a running bank, or measure one.
async fn run_tool(command: Command, data: &std::path::Path) -> anyhow::Result<()> {
    match command {
        Command::Clear { message, last } => send_message(Kind::Clearing { last }, &message).await,
        Command::Reverse { message } => send_message(Kind::Reversal, &message).await,
        Command::Refund { message } => send_message(Kind::Refund, &message).await,
        Command::ForcePost { message } => send_message(Kind::ForcePost, &message).await,
        Command::Increment { message } => send_message(Kind::Increment, &message).await,
        Command::Settlement { file, day } => settlement(&file, day).await,
        Command::Statement { account, days } => {
            operate::statement(&reach().await?, &account, days).await
        }
        Command::Reconcile {
            answers,
            settle_secs,
            complete,
            secret,
        } => reconcile_answers(&answers, settle_secs, complete, secret).await,
        Command::Bench {
            payments,
            concurrency,
            durability,
            engines,
        } => bench_authorisations(payments, concurrency, &durability, &engines, data).await,
        Command::BenchHop { calls, grpc_go } => bench_hop(calls, grpc_go, data).await,
        Command::Load {
            rates,
            seconds,
            customers,
            settle_ms,
            durability,
            engines,
            metrics,
        } => {
            let options = load::LoadOptions {
                rates,
                duration: std::time::Duration::from_secs(seconds),
                customers,
                settle: std::time::Duration::from_millis(settle_ms),
                durability: parse_durability(&durability)?,
                engines: parse_engines(&engines)?,
                data: data.to_path_buf(),
                metrics,
            };
            bench_load(options).await
        }
        Command::BenchPush { swipes, durability } => bench_push(swipes, &durability, data).await,
        Command::BenchSettlement {
            customers,
            concurrency,
            engines,
            rounds,
        } => bench_settlement(customers, concurrency, &engines, rounds, data).await,
        Command::Freeze { card } => freeze(&card, true).await,
        Command::Unfreeze { card } => freeze(&card, false).await,
        Command::Balance { account } => balance(&account).await,
        Command::Transactions {
            account,
            limit,
            cursor,
        } => operate::transactions(&reach().await?, &account, limit, cursor).await,
        Command::Feed { account, limit } => operate::feed(&reach().await?, &account, limit).await,
        Command::Devices { command } => devices(command).await,
        Command::Webhooks { command } => webhooks(command).await,
        Command::DeadLetters { command } => dead_letters(command).await,
        Command::Identity { command } => identity(command),
        // The rest start, set up or pay: `run` takes them.
        _ => anyhow::bail!("not a command on a running bank"),
    }
}

/// `sterling identity`.
fn identity(command: IdentityCommand) -> anyhow::Result<()> {
    let identity = PlatformConfig::from_env()?.open_identity()?;
    match command {
        IdentityCommand::Mint { caller, hours } => {
            let ttl = std::time::Duration::from_secs(hours.saturating_mul(3600));
            println!("{}", identity.mint(&caller, ttl)?);
        }
        IdentityCommand::PublicKey => println!("{}", identity.public_key()),
    }
    Ok(())
}

/// `sterling new service`.
fn new_service(root: &std::path::Path, name: &str) -> anyhow::Result<()> {
    for path in sterling::scaffold::new_service(root, name)? {
        println!("  wrote {}", path.display());
    }
    println!(
        "\nNext:\n  cargo test -p {name}      # its generated test\n  make run                  # the bank, {name} included\n  grpcurl -plaintext -H \"authorization: Bearer $(sterling identity mint operator)\" -d '{{\"id\": \"1\", \"text\": \"hi\"}}' <address> sterling.{}.v1.{}/PutItem",
        name.replace('-', ""),
        sterling::scaffold::ServiceNames::parse(name)?.camel
    );
    Ok(())
}

/// `sterling config`: every variable with its value in effect, secrets redacted.
fn print_config() {
    let config = configured(SERVICES);
    for (name, value) in config.describe() {
        println!("{name}={value}");
    }
    for definition in SERVICES {
        for setting in definition.settings {
            let variable = definition.variable(setting.name);
            let value = std::env::var(&variable).unwrap_or_else(|_| setting.default.to_string());
            println!("{variable}={}", redact_setting(&variable, &value));
        }
    }
}

/// `sterling serve`: one service as this process.
async fn serve_one(service: &str) -> anyhow::Result<()> {
    let Some(definition) = SERVICES
        .iter()
        .chain(bank::DEVELOPMENT_FAKES)
        .find(|d| d.name == service)
    else {
        let names: Vec<&str> = SERVICES.iter().map(|d| d.name).collect();
        anyhow::bail!("no service {service}: one of {}", names.join(", "));
    };
    // Typos are looked for among every service's settings: one environment often
    // configures several.
    let config = configured(SERVICES);
    serve(*definition, config).await?;
    Ok(())
}

/// How `sterling up` runs the bank.
struct UpOptions {
    grpc_base_port: u16,
    http_port: u16,
    gateway_port: u16,
    except: Vec<String>,
    engines: Engines,
    check: bool,
}

/// `sterling up`: the whole bank in this process until Ctrl-C (or, with `--check`, until
/// every service is ready).
async fn up(options: UpOptions, data: &std::path::Path) -> anyhow::Result<()> {
    let UpOptions {
        grpc_base_port,
        http_port,
        gateway_port,
        except,
        engines,
        check,
    } = options;
    let config = configured(SERVICES);
    telemetry::init(config.log_format, &config.log_filter);
    if let Some(address) = config.metrics_addr {
        telemetry::install_metrics(address);
    }
    let bank = Bank::start(BankOptions {
        engines,
        config,
        grpc_base_port,
        http_port,
        gateway_port,
        except: except.clone(),
    })
    .await?;
    println!(
        "Sterling is up. Data in {}.\n{}",
        data.display(),
        bank.describe()
    );
    if check {
        let not_ready = bank.wait_ready(std::time::Duration::from_secs(10)).await;
        bank.stop().await;
        if !not_ready.is_empty() {
            anyhow::bail!("not ready: {}", not_ready.join("; "));
        }
        println!("Every service is ready.");
        return Ok(());
    }
    print_expected(&except, engines, data);
    println!(
        "Next: `sterling seed`, then `sterling pay --card <token> --amount 3.50 --currency EUR`."
    );
    shutdown_signal().await;
    bank.stop().await;
    telemetry::flush();
    Ok(())
}

/// `sterling seed`: checks the services it needs, then opens a funded account with a card and
/// a test device (so the push sink shows the first payment).
async fn seed(currency: &str, amount: &str, key: Option<String>) -> anyhow::Result<()> {
    let currency = Currency::from_code(currency)?;
    let funded = Money::parse(amount, currency)?;
    let bank = reach().await?;
    let needed = [
        sterling_proto::ledger::v1::LEDGER_SERVICE,
        sterling_proto::cards::v1::CARDS_SERVICE,
        sterling_proto::push::v1::PUSH_SERVICE,
    ];
    operate::require(&bank, &needed).await?;
    let clients = Clients::connect(&bank).await?;
    let key = key.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let seeded = tools::seed(&clients, &key, funded).await?;
    println!(
        "account {}  funded with {}",
        seeded.account_id, seeded.funded
    );
    println!(
        "card    {}  (last four {})",
        seeded.card.token, seeded.card.last_four
    );
    operate::register_device(&bank, &seeded.account_id, &format!("seed-{key}"), "ios").await?;
    Ok(())
}

/// An authorisation the processor sends.
struct Payment {
    card: String,
    amount: Money,
    merchant: String,
    mcc: String,
    id: String,
}

/// `sterling pay`: signs an authorisation as the processor would and sends it to card-api.
async fn pay(
    payment: Payment,
    secret: &str,
    answers: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let card_api = card_api_url(&reach().await?.discovery).await?;
    let request = tools::authorisation_json(
        &payment.id,
        &payment.card,
        payment.amount,
        &payment.merchant,
        &payment.mcc,
    );
    let outcome = tools::pay(
        &reqwest::Client::new(),
        &card_api,
        secret.as_bytes(),
        &request,
        None,
    )
    .await?;
    let b = &outcome.body;
    if let (Some(path), 200) = (answers, outcome.status) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(file, "{}", serde_json::to_string(b)?)?;
    }
    if outcome.status == 200 {
        let result = b["result"].as_str().unwrap_or("?");
        let held = operate::show_minor(
            b["held_amount"].as_i64().unwrap_or(0),
            b["held_currency"].as_str().unwrap_or(""),
        );
        println!(
            "{} ({}) {}, held {held}  in {:.1} ms  [authorisation {}]",
            operate::paint(result, result == "APPROVED"),
            b["reason"].as_str().unwrap_or("?"),
            payment.amount,
            outcome.latency.as_secs_f64() * 1000.0,
            payment.id
        );
    } else {
        println!(
            "HTTP {}: {}",
            outcome.status,
            serde_json::to_string_pretty(b)?
        );
        std::process::exit(1);
    }
    Ok(())
}

/// `sterling clear`, `reverse`, `refund`, `force-post`, `increment`.
async fn send_message(kind: Kind, message: &MessageArgs) -> anyhow::Result<()> {
    let card_api = card_api_url(&reach().await?.discovery).await?;
    processor::send(kind, message, &card_api).await
}

/// `sterling settlement`.
async fn settlement(file: &std::path::Path, day: Option<String>) -> anyhow::Result<()> {
    let clients = Clients::connect(&reach().await?).await?;
    let day = day.unwrap_or_else(|| sterling_storage::utc_date(sterling_storage::now_millis()));
    let text = std::fs::read_to_string(file)?;
    let (lines, mismatches) = sterling::settlement::reconcile(&clients, &text, &day, &[]).await?;
    for mismatch in &mismatches {
        println!("{mismatch}");
    }
    if mismatches.is_empty() {
        println!("settlement of {day}: {lines} lines, all in the ledger, nothing missing");
        Ok(())
    } else {
        println!("settlement of {day}: {} mismatches", mismatches.len());
        std::process::exit(1);
    }
}

/// `sterling reconcile`.
async fn reconcile_answers(
    answers: &std::path::Path,
    settle_secs: u64,
    complete: bool,
    secret: String,
) -> anyhow::Result<()> {
    let bank = reach().await?;
    let mut heard = Vec::new();
    for (n, line) in std::fs::read_to_string(answers)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", answers.display(), n + 1))?;
        heard.push(Heard::from_json(&value).ok_or_else(|| {
            anyhow::anyhow!(
                "{}:{}: not an authorisation answer",
                answers.display(),
                n + 1
            )
        })?);
    }
    let reconciler = Reconciler {
        clients: Clients::connect(&bank).await?,
        http: reqwest::Client::new(),
        card_api_url: card_api_url(&bank.discovery).await?,
        secret: secret.into_bytes(),
    };
    let report = reconciler
        .reconcile_settled(
            &reconcile::by_id(heard),
            complete,
            std::time::Duration::from_secs(settle_secs),
        )
        .await?;
    print!("{report}");
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// `sterling bench`.
async fn bench_authorisations(
    payments: usize,
    concurrency: usize,
    durability: &str,
    engines: &str,
    data: &std::path::Path,
) -> anyhow::Result<()> {
    let engines = parse_engines(engines)?;
    let durability = parse_durability(durability)?;
    let report = bench::run(bench::BenchOptions {
        payments,
        concurrency: concurrency.max(1),
        durability,
        engines,
        data: data.to_path_buf(),
        progress: progress_bar(),
    })
    .await?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "authorisations {} (approved {}), engines {engines:?}, concurrency {concurrency}, durability {durability:?}: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  throughput {:.0}/s",
        report.payments,
        report.approved,
        ms(report.p50),
        ms(report.p99),
        ms(report.max),
        report.throughput
    );
    let lag = report
        .balance_lag
        .map_or("not recorded".to_string(), |(p50, p99)| {
            format!("p50 {:.2} ms  p99 {:.2} ms", ms(p50), ms(p99))
        });
    println!(
        "balance read model: lag behind the ledger {lag}; every account caught up {:.1} ms after the last answer",
        ms(report.balance_caught_up)
    );
    Ok(())
}

/// `sterling load`.
async fn bench_load(options: load::LoadOptions) -> anyhow::Result<()> {
    let consumer_nice = PlatformConfig::from_env()?.consumer_nice;
    println!(
        "open-loop load, engines {:?}, durability {:?}, consumers {consumer_nice} steps of nice below callers, {} customers, {} s per rate, sustained when every effect is done within {} ms of the last authorisation",
        options.engines,
        options.durability,
        options.customers,
        options.duration.as_secs(),
        options.settle.as_millis()
    );
    let settle = options.settle;
    let reports = load::run(options, |report| {
        println!("{report}");
        println!(
            "  => {}",
            if report.sustained(settle) {
                "sustained"
            } else {
                "NOT sustained"
            }
        );
    })
    .await?;
    let best = reports
        .iter()
        .filter(|r| r.sustained(settle))
        .map(|r| r.rate)
        .max();
    match best {
        Some(rate) => println!("highest rate sustained: {rate}/s"),
        None => println!("no rate sustained"),
    }
    Ok(())
}

/// A progress bar on standard error (drawn only on a terminal).
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// `sterling bench-hop`.
async fn bench_hop(
    calls: usize,
    grpc_go: Option<std::net::SocketAddr>,
    data: &std::path::Path,
) -> anyhow::Result<()> {
    let r = bench::hop_overhead(calls, grpc_go, data).await?;
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    println!(
        "unary call, {calls} each: bare tonic p50 {:.0} us p99 {:.0} us; full stack p50 {:.0} us p99 {:.0} us; median ratio {:.2}x",
        us(r.bare_p50),
        us(r.bare_p99),
        us(r.full_p50),
        us(r.full_p99),
        r.full_p50.as_secs_f64() / r.bare_p50.as_secs_f64()
    );
    if let Some((p50, p99)) = r.grpc_go {
        println!(
            "grpc-go peer, same blocks: p50 {:.0} us p99 {:.0} us; median ratio to bare tonic {:.2}x",
            us(p50),
            us(p99),
            p50.as_secs_f64() / r.bare_p50.as_secs_f64()
        );
    }
    Ok(())
}

/// `sterling bench-push`.
async fn bench_push(swipes: usize, durability: &str, data: &std::path::Path) -> anyhow::Result<()> {
    let durability = parse_durability(durability)?;
    let r = bench::swipe_to_push(swipes, durability, data).await?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "swipe to push, {} swipes, durability {durability:?}: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.swipes,
        ms(r.p50),
        ms(r.p99),
        ms(r.max)
    );
    Ok(())
}

/// `sterling bench-settlement`.
async fn bench_settlement(
    customers: usize,
    concurrency: usize,
    engines: &str,
    rounds: usize,
    data: &std::path::Path,
) -> anyhow::Result<()> {
    let engines = parse_engines(engines)?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    for round in 1..=rounds {
        for sharded in [false, true] {
            let r = bench::settlement(customers, concurrency, engines, sharded, data).await?;
            println!(
                "round {round}, {}: {} clearings of {} customers at concurrency {concurrency}: {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  (posted {}, settlement balance matches: {})",
                if r.sharded {
                    "sharded"
                } else {
                    "one compare-and-set"
                },
                r.clearings,
                customers,
                r.throughput,
                ms(r.p50),
                ms(r.p99),
                r.posted,
                r.settled_matches,
            );
        }
    }
    Ok(())
}

/// `sterling freeze` and `sterling unfreeze`.
async fn freeze(card: &str, frozen: bool) -> anyhow::Result<()> {
    let clients = Clients::connect(&reach().await?).await?;
    let c = tools::set_frozen(&clients, card, frozen).await?;
    let state = if frozen { "frozen" } else { "active" };
    println!("card {} is {state}", c.token);
    Ok(())
}

/// `sterling balance`.
async fn balance(account: &str) -> anyhow::Result<()> {
    let clients = Clients::connect(&reach().await?).await?;
    let b = tools::balance(&clients, account).await?;
    println!(
        "balance {}  held {}  available {}",
        show_money(b.balance),
        show_money(b.held),
        show_money(b.available)
    );
    Ok(())
}

/// `sterling devices ...`.
async fn devices(command: Devices) -> anyhow::Result<()> {
    let bank = reach().await?;
    match command {
        Devices::Register {
            account,
            token,
            platform,
        } => operate::register_device(&bank, &account, &token, &platform).await,
        Devices::List { account } => operate::list_devices(&bank, &account).await,
    }
}

/// `sterling dead-letters ...`.
async fn dead_letters(command: DeadLetters) -> anyhow::Result<()> {
    let bank = reach().await?;
    match command {
        DeadLetters::List { consumer, all } => {
            sterling::dead_letters::list(&bank, consumer.as_deref(), all).await
        }
        DeadLetters::Show { consumer, event_id } => {
            sterling::dead_letters::show(&bank, &consumer, &event_id).await
        }
        DeadLetters::Replay { consumer, event_id } => {
            sterling::dead_letters::replay(&bank, &consumer, &event_id).await
        }
    }
}

/// `sterling webhooks ...`.
async fn webhooks(command: Webhooks) -> anyhow::Result<()> {
    let bank = reach().await?;
    match command {
        Webhooks::Register { account, url, key } => {
            let key = key.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
            operate::register_webhook(&bank, &account, &url, &key).await
        }
        Webhooks::List { account } => operate::list_webhooks(&bank, &account).await,
        Webhooks::Deliveries { webhook, limit } => {
            operate::deliveries(&bank, &webhook, limit).await
        }
    }
}
