//! `sterling clear`, `reverse`, `refund`, `force-post`, `increment`: the card processor's
//! messages after an authorisation, signed and sent to card-api as a processor would.

use sterling_money::{Currency, Money};

use crate::operate;
use crate::tools::{self, PayOutcome};

/// What every message command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct MessageArgs {
    /// The authorisation it belongs to (clearings, reversals, increments; optional for refunds).
    #[arg(long)]
    pub authorisation: Option<String>,
    /// Card token (refunds and force posts; a clearing of an authorisation never seen).
    #[arg(long)]
    pub card: Option<String>,
    /// Amount in major units, e.g. 3.50 (a reversal without one releases everything held).
    #[arg(long)]
    pub amount: Option<String>,
    /// Currency the merchant charges in.
    #[arg(long, default_value = "GBP")]
    pub currency: String,
    /// Merchant descriptor (refunds and force posts).
    #[arg(long, default_value = "STERLING TEST SHOP LONDON GB")]
    pub merchant: String,
    /// Message id (default: a fresh one). Send one twice to see idempotence.
    #[arg(long)]
    pub id: Option<String>,
    /// Shared webhook secret.
    #[arg(long, env = "STERLING_CARD_API_SECRET", default_value = card_api::DEVELOPMENT_SECRET)]
    pub secret: String,
}

/// The kinds of message, with their card-api paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/clearings`.
    Clearing {
        /// The last clearing.
        last: bool,
    },
    /// `/v1/reversals`.
    Reversal,
    /// `/v1/refunds`.
    Refund,
    /// `/v1/force_posts`.
    ForcePost,
    /// `/v1/incremental_authorisations`.
    Increment,
}

impl Kind {
    /// card-api's path for it.
    pub fn path(self) -> &'static str {
        match self {
            Kind::Clearing { .. } => "/v1/clearings",
            Kind::Reversal => "/v1/reversals",
            Kind::Refund => "/v1/refunds",
            Kind::ForcePost => "/v1/force_posts",
            Kind::Increment => "/v1/incremental_authorisations",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Kind::Clearing { .. } => "clr",
            Kind::Reversal => "rev",
            Kind::Refund => "rfd",
            Kind::ForcePost => "frc",
            Kind::Increment => "inc",
        }
    }
}

/// The JSON body of a message.
pub fn message_json(kind: Kind, args: &MessageArgs) -> anyhow::Result<serde_json::Value> {
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("{}_{}", kind.prefix(), uuid::Uuid::now_v7().simple()));
    let mut body = serde_json::json!({
        "id": id,
        "authorisation_id": args.authorisation.clone().unwrap_or_default(),
        "card_token": args.card.clone().unwrap_or_default(),
        "final": matches!(kind, Kind::Clearing { last: true }),
        "merchant": { "descriptor": args.merchant, "mcc": "5812", "country": "GB", "city": "London" },
    });
    if let Some(amount) = &args.amount {
        let amount = Money::parse(amount, Currency::from_code(&args.currency)?)?;
        body["amount"] = amount.minor_units().into();
        body["currency"] = amount.currency().code().into();
    }
    Ok(body)
}

/// Prints card-api's answer to a message; exits non-zero on a problem.
pub fn print_outcome(outcome: &PayOutcome) -> anyhow::Result<()> {
    let b = &outcome.body;
    if outcome.status != 200 {
        println!(
            "HTTP {}: {}",
            outcome.status,
            serde_json::to_string_pretty(b)?
        );
        std::process::exit(1);
    }
    let currency = b["currency"].as_str().unwrap_or("");
    let show = |field: &str| operate::show_minor(b[field].as_i64().unwrap_or(0), currency);
    let p = &b["payment"];
    let pay_currency = p["currency"].as_str().unwrap_or("");
    let show_payment =
        |field: &str| operate::show_minor(p[field].as_i64().unwrap_or(0), pay_currency);
    println!(
        "{} {} ({}): posted {}, released {}, held more {}, refunded {}{}  in {:.1} ms  [message {}]",
        b["type"].as_str().unwrap_or("?"),
        operate::paint(
            if b["accepted"].as_bool() == Some(true) {
                "ACCEPTED"
            } else {
                "DECLINED"
            },
            b["accepted"].as_bool() == Some(true)
        ),
        b["reason"].as_str().unwrap_or("?"),
        show("posted"),
        show("released"),
        show("increased"),
        show("refunded"),
        if b["overdrawn"].as_bool() == Some(true) {
            ", account OVERDRAWN"
        } else {
            ""
        },
        outcome.latency.as_secs_f64() * 1000.0,
        b["id"].as_str().unwrap_or("?"),
    );
    println!(
        "payment {}: {}, held {}, settled {}, refunded {}",
        p["id"].as_str().unwrap_or("?"),
        p["status"].as_str().unwrap_or("?"),
        show_payment("held"),
        show_payment("settled"),
        show_payment("refunded"),
    );
    Ok(())
}

/// Sends one message to the card-api at `card_api_url` and prints the answer.
pub async fn send(kind: Kind, args: &MessageArgs, card_api_url: &str) -> anyhow::Result<()> {
    let message = message_json(kind, args)?;
    let outcome = tools::send_message(
        &reqwest::Client::new(),
        card_api_url,
        kind.path(),
        args.secret.as_bytes(),
        &message,
    )
    .await?;
    print_outcome(&outcome)
}
