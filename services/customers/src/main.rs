fn main() -> anyhow::Result<()> {
    sterling_template::platform::main(customers::SERVICE)
}
