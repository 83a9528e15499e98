//! The gateway's web page in headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm): sign up and in, open an account, top up, pay at the
//! development terminal, see the feed item arrive live and the balance change, freeze the
//! card and be declined. The browser script is `cli/tests/web/journey.mjs`.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_uses_the_web_page_in_chromium() {
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    if !web.join("node_modules/playwright-core").exists() {
        let installed = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&web)
            .status()
            .expect("npm runs (apt-get install npm)");
        assert!(installed.success(), "npm ci in {}", web.display());
    }
    let dir = tempfile::tempdir().unwrap();
    let bank = common::start(
        dir.path(),
        &[
            ("STERLING_ACCOUNTS_DEVELOPMENT_TOP_UPS", "true"),
            ("STERLING_ACCOUNTS_DEVELOPMENT_TERMINAL", "true"),
        ],
    )
    .await;
    let url = format!("http://{}", bank.bank.address("gateway").unwrap());
    let chromium = std::env::var("STERLING_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    let script = web.join("journey.mjs");
    let outcome = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(url)
            .arg(chromium)
            .output()
            .expect("node runs (apt-get install nodejs chromium)")
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&outcome.stdout),
        String::from_utf8_lossy(&outcome.stderr)
    );
    assert!(outcome.status.success(), "{said}");
    assert!(said.contains("web page journey: ok"), "{said}");
    bank.bank.stop().await;
}
