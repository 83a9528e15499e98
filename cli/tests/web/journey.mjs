// The web page as a customer uses it, in headless Chromium: create an account and sign in,
// open a bank account, top up, pay at the development terminal, see the feed item arrive live
// and the balance change, freeze the card and be declined. Exits non-zero on the first
// failed expectation.
//
//   node journey.mjs <gateway URL> [chromium path]
import { chromium } from "playwright-core";

const [base, executablePath = "/usr/bin/chromium"] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
const failures = [];
const page = await browser.newPage();
page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
page.on("console", (m) => m.type() === "error" && failures.push(`console: ${m.text()}`));

async function expectText(selector, expected, what) {
  try {
    await page.waitForFunction(
      ([s, e]) => (document.querySelector(s)?.textContent || "").includes(e),
      [selector, expected],
      { timeout: 10000 },
    );
  } catch {
    const actual = await page.textContent(selector).catch(() => "(missing)");
    throw new Error(`${what}: expected "${expected}" in ${selector}, found "${actual}"`);
  }
}

try {
  await page.goto(base);
  await page.fill("#email", `web-${Date.now()}@example.com`);
  await page.fill("#password", "a long enough password");
  await page.click("#sign-up");
  await page.click("#open-account");
  await expectText("#balance", "0.00 GBP", "a new account is empty");
  await page.click("#top-up");
  await expectText("#available", "50.00 GBP", "the top-up arrives");
  await expectText("#live", "(live)", "the feed is followed");

  await page.fill("#terminal-amount", "12.50");
  await page.click("#pay");
  await expectText("#terminal-answer", "APPROVED", "the terminal approves");
  await expectText("#feed", "12.50 GBP", "the feed item arrives live");
  await expectText("#available", "37.50 GBP", "the hold is off the available balance");

  await page.click("#freeze");
  await expectText("#card-status", "frozen", "the card freezes");
  await page.fill("#terminal-amount", "1.00");
  await page.click("#pay");
  await expectText("#terminal-answer", "DECLINED", "a frozen card is declined");
  await page.click("#unfreeze");
  await expectText("#card-status", "active", "the card unfreezes");
  if (failures.length) throw new Error(failures.join("\n"));
  console.log("web page journey: ok");
} catch (e) {
  console.error(`web page journey failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
