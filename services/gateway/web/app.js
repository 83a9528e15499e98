// Sterling's web page: sign in, the first account with its balance, its card (freeze,
// unfreeze), a development card terminal, and the feed live from the account's event stream.
// Talks only to the public API of the gateway that serves it.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("sterling-token");
let account = null;
let card = null;
let feedStream = null;
let balanceVersion = 0;

/** Minor units as text with two decimals: 1250 -> "12.50", never through floats. */
function money(m) {
  const sign = m.minor_units < 0 ? "-" : "";
  const units = String(Math.abs(m.minor_units)).padStart(3, "0");
  return `${sign}${units.slice(0, -2)}.${units.slice(-2)} ${m.currency}`;
}

/** "12.50" -> 1250, or null: decimal text to minor units, never through floats. */
function minorUnits(text) {
  const match = /^(\d{1,7})(?:\.(\d{1,2}))?$/.exec(text.trim());
  if (!match) return null;
  return Number(match[1]) * 100 + Number((match[2] || "0").padEnd(2, "0"));
}

function key() {
  return crypto.randomUUID();
}

/** Calls the API; resolves to the JSON answer, or throws the problem's detail. */
async function api(method, path, { body, idempotencyKey } = {}) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (idempotencyKey) headers["idempotency-key"] = idempotencyKey;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && token) {
    signOut();
  }
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error(json && json.detail ? json.detail : response.statusText);
  return json;
}

function show(error) {
  $("error").textContent = error ? String(error.message || error) : "";
}

async function signIn(event, create) {
  event.preventDefault();
  const credentials = { email: $("email").value, password: $("password").value };
  try {
    if (create) await api("POST", "/v1/sign-up", { body: credentials, idempotencyKey: key() });
    const session = await api("POST", "/v1/sign-in", { body: credentials });
    token = session.access_token;
    sessionStorage.setItem("sterling-token", token);
    $("sign-in-error").textContent = "";
    await load();
  } catch (e) {
    $("sign-in-error").textContent = e.message;
  }
}

function signOut() {
  if (token) fetch("/v1/sign-out", { method: "POST", headers: { authorization: `Bearer ${token}` } });
  token = null;
  account = null;
  sessionStorage.removeItem("sterling-token");
  if (feedStream) feedStream.abort();
  render();
}

function render() {
  $("signed-out").hidden = Boolean(token);
  $("signed-in").hidden = !token;
  $("sign-out").hidden = !token;
  $("no-account").hidden = !token || Boolean(account);
  $("account").hidden = !account;
}

async function load() {
  const listed = await api("GET", "/v1/accounts");
  account = listed.accounts[0] || null;
  balanceVersion = 0;
  render();
  if (!account) return;
  $("account-id").textContent = account.account_id;
  // The same key every time: the account's one card, issued once.
  card = await api("POST", `/v1/accounts/${account.account_id}/cards`, {
    idempotencyKey: `web-card-${account.account_id}`,
  });
  renderCard();
  await refreshBalance();
  await loadFeed();
  follow();
}

function renderCard() {
  $("card-last-four").textContent = card.last_four;
  $("card-status").textContent = card.status;
}

async function refreshBalance() {
  const read = await api("GET", `/v1/accounts/${account.account_id}`);
  balanceVersion = Math.max(balanceVersion, Number(read.version || 0));
  $("balance").textContent = money(read.balance);
  $("available").textContent = money(read.available);
  return balanceVersion;
}

/**
 * The balance is a read model a moment behind the ledger: after moving money, reads it
 * again (every 250 ms, for up to 10 s) until it has taken in a change newer than `before`.
 */
async function refreshBalanceAfter(before) {
  for (let attempt = 0; attempt < 40; attempt++) {
    if ((await refreshBalance()) > before) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function renderItem(item) {
  const id = `item-${item.item_id}`;
  let li = document.getElementById(id);
  if (!li) {
    li = document.createElement("li");
    li.id = id;
    $("feed").prepend(li);
  }
  li.className = item.status === "declined" ? "declined" : "";
  li.textContent = `${item.title} ${money(item.amount)} ${item.status}`;
}

async function loadFeed() {
  const page = await api("GET", `/v1/accounts/${account.account_id}/feed?limit=20`);
  $("feed").replaceChildren();
  page.items.reverse().forEach(renderItem);
}

/** Follows the account's Server-Sent Events (fetch, so the token goes in a header). */
async function follow() {
  if (feedStream) feedStream.abort();
  feedStream = new AbortController();
  try {
    const response = await fetch(`/v1/accounts/${account.account_id}/feed/stream`, {
      headers: { authorization: `Bearer ${token}`, accept: "text/event-stream" },
      signal: feedStream.signal,
    });
    if (!response.ok) throw new Error(`feed stream: ${response.status}`);
    $("live").textContent = "(live)";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").find((line) => line.startsWith("data:"));
        if (event.includes("event: feed_item") && data) {
          renderItem(JSON.parse(data.slice(5)));
          refreshBalance().catch(show);
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  }
  $("live").textContent = "(reconnecting)";
  setTimeout(() => token && account && loadFeed().then(follow).catch(show), 2000);
}

async function setFrozen(frozen) {
  try {
    const verb = frozen ? "freeze" : "unfreeze";
    card = await api("POST", `/v1/accounts/${account.account_id}/cards/${card.card_token}/${verb}`);
    renderCard();
    show(null);
  } catch (e) {
    show(e);
  }
}

async function pay(event) {
  event.preventDefault();
  const minor = minorUnits($("terminal-amount").value);
  if (minor === null || minor < 1) return show(new Error("an amount like 12.50"));
  const before = balanceVersion;
  try {
    const answer = await api("POST", `/v1/accounts/${account.account_id}/cards/${card.card_token}/terminal`, {
      body: { minor_units: minor },
      idempotencyKey: key(),
    });
    const why = answer.decision === "DECLINED" ? ` (${answer.reason})` : "";
    $("terminal-answer").textContent = `${answer.decision}${why}`;
    if (answer.decision === "APPROVED") await refreshBalanceAfter(before);
    show(null);
  } catch (e) {
    show(e);
  }
}

$("credentials").addEventListener("submit", (e) => signIn(e, false));
$("sign-up").addEventListener("click", (e) => signIn(e, true));
$("sign-out").addEventListener("click", signOut);
$("open-account").addEventListener("click", () =>
  api("POST", "/v1/accounts", { body: { currency: "GBP" }, idempotencyKey: key() }).then(load).catch(show));
$("top-up").addEventListener("click", () => {
  const before = balanceVersion;
  api("POST", `/v1/accounts/${account.account_id}/top-ups`, { body: { minor_units: 5000 }, idempotencyKey: key() })
    .then(() => refreshBalanceAfter(before))
    .catch(show);
});
$("freeze").addEventListener("click", () => setFrozen(true));
$("unfreeze").addEventListener("click", () => setFrozen(false));
$("terminal").addEventListener("submit", pay);

render();
if (token) load().catch(show);
