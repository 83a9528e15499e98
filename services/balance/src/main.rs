fn main() -> anyhow::Result<()> {
    sterling_template::platform::main(balance::SERVICE)
}
