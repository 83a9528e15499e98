fn main() -> anyhow::Result<()> {
    sterling_template::platform::main(card_api::SERVICE)
}
