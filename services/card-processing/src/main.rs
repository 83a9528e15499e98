fn main() -> anyhow::Result<()> {
    sterling_template::platform::main(card_processing::SERVICE)
}
