#!/usr/bin/env bash
# make compose-test: the whole bank in containers, checked from outside.
#
# Builds the images (deploy/container/images.sh), starts docker-compose.yml with podman-compose
# and the local engine images, waits for every healthcheck, then:
#   1. seeds a customer and pays: the decision, the feed item and the push at the sink;
#   2. kills one service's process with SIGKILL: the container restarts, payments recover;
#   3. stops and starts NATS's container: every payment's feed item and push arrive, none lost;
#   4. runs every acceptance journey once against the containers (sterling-acceptance on this
#      machine; its webhook receiver reached from the containers through the network's gateway);
# and takes it all down with its volumes.
#
# COMPOSE            the compose command (default: podman-compose from a virtualenv in the cache)
# COMPOSE_TEST_KEEP  1 leaves the stack running at the end, to look at
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/container/containers.conf}"
PROJECT=sterling-compose-test
TOOLS="$HOME/.cache/sterling/tools"
if [ -z "${COMPOSE:-}" ]; then
  if [ ! -x "$TOOLS/compose/bin/podman-compose" ]; then
    python3 -m venv "$TOOLS/compose"
    "$TOOLS/compose/bin/pip" install -q podman-compose==1.6.0
  fi
  COMPOSE="$TOOLS/compose/bin/podman-compose"
fi
# Published ports away from the engines a developer may run on loopback; a processor budget
# that 19 containers sharing two cores can keep (a decline after it is still an answer).
export STERLING_CARD_API_PORT=18080 STERLING_GATEWAY_PORT=18000 STERLING_PUSH_SINK_PORT=18090 \
  STERLING_DATABASE_PORT=19042 STERLING_NATS_PORT=14222 STERLING_NATS_MONITOR_PORT=18222 \
  STERLING_PROMETHEUS_PORT=19090 STERLING_OTLP_ENDPOINT= \
  STERLING_CARD_API_BUDGET_MS="${STERLING_CARD_API_BUDGET_MS:-1000}" \
  STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS=true
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
# Everything but Grafana and Jaeger, which have no image on a machine with no registry.
SERVICES=(database nats prometheus push-sink auth customers cards fx ledger transactions
  merchant feed balance push webhooks card-processing card-api accounts gateway)
compose() { "$COMPOSE" --env-file deploy/compose/local-images.env -p "$PROJECT" "$@"; }
log() { echo "compose-test: $*" >&2; LAST_LOG="$*"; }

# podman runs healthchecks from systemd timers; with no systemd (a container, a CI machine)
# nothing runs them, so this does, every 3 s, for every container of the project.
run_healthchecks() {
  while true; do
    for c in $(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
      podman healthcheck run "$c" > /dev/null 2>&1 || true
    done
    sleep 3
  done
}

cleanup() {
  local status=$?
  [ -n "${HEALTHCHECKS:-}" ] && kill "$HEALTHCHECKS" 2>/dev/null || true
  if [ $status -ne 0 ]; then
    log "failed; the last logs of each container:"
    for c in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
      echo "--- $c ($(podman inspect --format '{{.State.Status}} {{.State.Health.Status}}' "$c" 2>/dev/null))"
      podman logs --tail 15 "$c" 2>&1 | cut -c1-400
    done
    # Last, so that the end of the output says where it stopped.
    log "failed (exit $status) after: ${LAST_LOG:-nothing logged}; states: $(podman ps -a \
      --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}={{.Status}}' | tr '\n' ' ')"
  fi
  # COMPOSE_TEST_KEEP=1 leaves the stack up to look at.
  [ "${COMPOSE_TEST_KEEP:-}" = 1 ] || compose down -v > /dev/null 2>&1 || true
  exit $status
}
trap cleanup EXIT

container() { echo "${PROJECT}_$1_1"; }

# Waits until every container of SERVICES reports healthy (those with a healthcheck) or runs.
wait_healthy() {
  local deadline=$((SECONDS + ${1:-300}))
  while [ $SECONDS -lt $deadline ]; do
    local waiting=()
    for s in "${SERVICES[@]}"; do
      local state
      state="$(podman inspect --format '{{.State.Status}}/{{.State.Health.Status}}' "$(container "$s")" 2>/dev/null || echo missing)"
      case "$state" in
        running/healthy | running/) ;;
        *) waiting+=("$s=$state") ;;
      esac
    done
    if [ ${#waiting[@]} -eq 0 ]; then return 0; fi
    sleep 3
  done
  log "not healthy in time: ${waiting[*]}"
  return 1
}

# The sterling CLI in a container on the compose network, as the operator.
sterling() {
  podman run --rm --network "${PROJECT}_default" -v "${PROJECT}_identity:/identity" \
    -e STERLING_BUS=nats -e STERLING_DISCOVERY=nats -e STERLING_NATS_URL=nats://nats:4222 \
    -e STERLING_IDENTITY_KEY_FILE=/identity/identity.key -e STERLING_LOG=warn \
    -e STERLING_CALL_TIMEOUT_MS=10000 \
    -e STERLING_CARD_API_SECRET=development-processor-secret \
    --entrypoint /sterling "localhost/sterling-card-api:${STERLING_TAG:-dev}" "$@"
}

# Sends one authorisation: `$2` with card `$1` under id `$3`; prints the decision line. As a
# processor does, an attempt that got no answer (a name the network's DNS has not published
# yet, a container restarting) is sent again with the same id.
authorise() {
  local out
  for attempt in 1 2 3 4 5; do
    out="$(sterling pay --card "$1" --amount "$2" --id "$3" 2>&1)" || true
    if echo "$out" | grep -q "APPROVED\|DECLINED"; then break; fi
    log "authorisation $3, attempt $attempt, no answer: $out"
    sleep 2
  done
  echo "$out"
}

# Pays `$2` with card `$1` until the bank approves it (ids `$3`, `$3-r1`, ...), within 60 s:
# just after a start or a restart a call between services may still fail (the decision is
# then a decline, and final for its id), so recovering means a fresh payment is approved.
pay() {
  local deadline=$((SECONDS + 60)) id="$3" n=0 out
  while true; do
    out="$(authorise "$1" "$2" "$id")"
    if echo "$out" | grep -q APPROVED; then return 0; fi
    [ $SECONDS -lt $deadline ] || { log "payment $3 never approved: $out"; return 1; }
    n=$((n + 1)); id="$3-r$n"
    log "payment $3: $out; again as $id"
    sleep 2
  done
}

# Waits until `$1` (a command) prints `$3` at least `$2` times.
eventually_count() {
  local deadline=$((SECONDS + 60)) n=0
  while [ $SECONDS -lt $deadline ]; do
    n="$(eval "$1" 2>/dev/null | grep -o -- "$3" | wc -l || true)"
    if [ "$n" -ge "$2" ]; then return 0; fi
    sleep 2
  done
  log "expected $2 of '$3' from '$1', found $n"
  return 1
}

deploy/container/images.sh all
"${CARGO:-cargo}" build -q -p sterling-acceptance
compose down -v > /dev/null 2>&1 || true
run_healthchecks &
HEALTHCHECKS=$!
# The engines first: podman before 4.6 does not wait for `service_healthy` conditions.
log "starting the engines"
compose up -d --no-build database nats prometheus > /dev/null
SERVICES_ALL=("${SERVICES[@]}")
SERVICES=(database nats)
wait_healthy 300
SERVICES=("${SERVICES_ALL[@]}")
log "starting ${#SERVICES[@]} containers"
compose up -d --no-build "${SERVICES[@]}" > /dev/null
wait_healthy 420
log "every container is healthy"

# The first writes warm a freshly started database up; seeding is idempotent on its key, and
# only a seeding that finished counts (one cut short may have left the phone unregistered).
seeded=""
for attempt in $(seq 1 20); do
  if out="$(sterling seed --amount 100.00 --key compose-test 2>&1)"; then seeded="$out"; break; fi
  log "seed attempt $attempt: $out"
  sleep 5
done
[ -n "$seeded" ] || { log "seeding never finished"; exit 1; }
account="$(echo "$seeded" | awk '/^account/ {print $2}')"
card="$(echo "$seeded" | awk '/^card/ {print $2}')"
[ -n "$account" ] && [ -n "$card" ] || { log "seed printed: $seeded"; exit 1; }
log "seeded account $account, card $card"

feed() { sterling feed "$account"; }
pushes() { curl -fsS "http://127.0.0.1:$STERLING_PUSH_SINK_PORT/deliveries"; }

# 1. A first payment: decision, feed item, push.
pay "$card" 3.50 compose-1
eventually_count feed 1 "pending *GBP 3.50"
eventually_count pushes 1 '"title":"GBP 3.50"'
log "payment 1 approved, in the feed and pushed"

# 2. SIGKILL a service's process: the container restarts and payments recover.
victim="$(container card-processing)"
restarts="$(podman inspect --format '{{.RestartCount}}' "$victim")"
kill -9 "$(podman inspect --format '{{.State.Pid}}' "$victim")"
log "killed card-processing's process (SIGKILL)"
deadline=$((SECONDS + 120))
until [ "$(podman inspect --format '{{.RestartCount}}' "$victim")" -gt "$restarts" ]; do
  [ $SECONDS -lt $deadline ] || { log "card-processing was not restarted"; exit 1; }
  sleep 1
done
wait_healthy 180
for i in 2 3; do pay "$card" 1.2$i "compose-$i"; done
log "card-processing restarted; payments 2 and 3 approved"

# 3. NATS stopped and started: nothing lost.
podman stop -t 10 "$(container nats)" > /dev/null
podman start "$(container nats)" > /dev/null
wait_healthy 180
for i in 4 5; do pay "$card" 2.0$i "compose-$i"; done
for amount in 3.50 1.22 1.23 2.04 2.05; do
  eventually_count feed 1 "pending *GBP $amount"
  eventually_count pushes 1 "\"title\":\"GBP $amount\""
done
log "NATS restarted; all 5 payments in the feed and pushed"

# The public API serves a new customer's live feed: the gateway, accounts and feed have found
# one another again (discovery rides on NATS, restarted above). A customer's first try after
# such a restart may meet a service not yet back in discovery; acceptance judges the bank
# once it has recovered.
public_feed_served() {
  local base="http://127.0.0.1:$STERLING_GATEWAY_PORT" email="compose-$RANDOM$RANDOM@example.com"
  local body="{\"email\":\"$email\",\"password\":\"a long enough password\"}" token account code
  curl -fsS -X POST "$base/v1/sign-up" -H 'content-type: application/json' \
    -H "idempotency-key: $email" -d "$body" > /dev/null || return 1
  token="$(curl -fsS -X POST "$base/v1/sign-in" -H 'content-type: application/json' -d "$body" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')" || return 1
  account="$(curl -fsS -X POST "$base/v1/accounts" -H 'content-type: application/json' \
    -H "authorization: Bearer $token" -H "idempotency-key: account-$email" -d '{"currency":"GBP"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["account_id"])')" || return 1
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "authorization: Bearer $token" \
    -H 'accept: text/event-stream' "$base/v1/accounts/$account/feed/stream" || true)"
  [ "$code" = 200 ]
}
deadline=$((SECONDS + 120))
until public_feed_served; do
  [ $SECONDS -lt $deadline ] || { log "the public API did not serve the feed stream again"; exit 1; }
  log "the public API does not serve the feed stream yet; again in 2 s"
  sleep 2
done
log "the public API serves the feed stream"

# 4. Acceptance against the containers: its receiver listens on this machine, where the
#    containers reach it through their network's gateway.
host="$(podman network inspect "${PROJECT}_default" --format '{{range .Subnets}}{{.Gateway}}{{end}}')"
[ -n "$host" ] || { log "no gateway address for ${PROJECT}_default"; exit 1; }
"$TARGET/debug/sterling-acceptance" --once \
  --gateway "http://127.0.0.1:$STERLING_GATEWAY_PORT" \
  --card-api "http://127.0.0.1:$STERLING_CARD_API_PORT" \
  --push-sink "http://127.0.0.1:$STERLING_PUSH_SINK_PORT" \
  --processor-secret development-processor-secret \
  --receiver-listen 0.0.0.0:18300 --receiver-url "http://$host:18300/webhooks" \
  --decision-budget-ms 3000 --async-timeout-s 60 \
  --junit "$TARGET/acceptance-compose.xml"
log "every acceptance journey passed against the containers"
log "passed"
