//! fx: converts amounts between currencies at the rates in `data/rates.csv` (or the file named
//! by `STERLING_FX_RATES_FILE`), rounding half away from zero to the target's exponent.

pub mod handlers;
pub mod rates;

use sterling_proto::fx::v1::fx_server::FxServer;
use sterling_template::{Api, OPERATOR, Rule, ServiceContext, ServiceDefinition, Setting};

use crate::handlers::FxHandlers;
use crate::rates::{BUILTIN_RATES, RateTable};

/// The fx service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::fx::v1::FX_SERVICE,
    migrations: &[],
    settings: &[Setting {
        name: "rates_file",
        default: "",
        help: "FX reference rates (CSV); built-in rates when empty",
    }],
    depends_on: &[],
    access: &[
        // Conversions for card-processing and the operator.
        Rule::new(
            "Convert",
            &[
                sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
                OPERATOR,
            ],
        ),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let file = ctx.setting("rates_file");
    let text = if file.is_empty() {
        BUILTIN_RATES.to_string()
    } else {
        std::fs::read_to_string(&file).map_err(|e| {
            ctx.invalid_setting("rates_file", format!("a readable CSV file of rates ({e})"))
        })?
    };
    let rates = RateTable::parse(&text)
        .map_err(|e| ctx.invalid_setting("rates_file", format!("a CSV file of rates ({e})")))?;
    Ok(Api::grpc(FxServer::new(FxHandlers { rates })))
}
